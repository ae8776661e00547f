//! The library's error type. Every message names what went wrong and where
//! (file, field, expected, found), so the CLI can print it as one line.

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A configuration value is missing, unknown or out of range.
    #[error("{file}: field `{field}`: {message}")]
    Config { file: String, field: String, message: String },
    /// A data or checkpoint file could not be understood.
    #[error("{}: {message}", path.display())]
    Data { path: PathBuf, message: String },
    /// Reading or writing a file failed. (The io error is part of the message,
    /// not a `source`, so a printed error chain does not say it twice.)
    #[error("{}: {error}", path.display())]
    Io { path: PathBuf, error: std::io::Error },
    /// A user-facing argument is invalid.
    #[error("{0}")]
    Invalid(String),
    /// A setting cannot take its value here, named by its config key
    /// (`sampling.sampler`); each front end shows the key in its own spelling
    /// (the CLI's `--sampler`, Python's `sampler=`) through [`Error::setting`].
    #[error("{key}: {message}")]
    Setting { key: &'static str, message: String },
    /// Training produced a non-finite loss or gradient.
    #[error("non-finite {what} at step {step}; last good checkpoint: {checkpoint}")]
    NonFinite { what: String, step: usize, checkpoint: String },
    /// Ctrl-C stopped a command cleanly; the text says what was kept.
    #[error("interrupted: {0}")]
    Interrupted(String),
    /// A tensor operation failed (a shape or device mismatch: a bug or a
    /// malformed file, not a setting). The library's own refusals raised
    /// inside tensor code (`candle_core::bail!`) arrive as [`Error::Invalid`]
    /// instead: see the `From` impl below.
    #[error("tensor error: {0}")]
    Candle(candle_core::Error),
}

pub type Result<T> = std::result::Result<T, Error>;

/// A message the library raised itself inside tensor code
/// (`candle_core::bail!`, so `Msg`, maybe behind a backtrace or context)
/// says what and why already: it becomes [`Error::Invalid`], printed as it
/// is. Every other tensor error stays [`Error::Candle`].
impl From<candle_core::Error> for Error {
    fn from(e: candle_core::Error) -> Self {
        fn own_message(e: &candle_core::Error) -> Option<&str> {
            match e {
                candle_core::Error::Msg(m) => Some(m),
                candle_core::Error::WithBacktrace { inner, .. } => own_message(inner),
                _ => None,
            }
        }
        match own_message(&e) {
            Some(m) => Error::Invalid(m.to_string()),
            None => Error::Candle(e),
        }
    }
}

impl Error {
    /// The config key and message of a [`Error::Setting`], for a front end to
    /// print with its own spelling of the key.
    pub fn setting(&self) -> Option<(&'static str, &str)> {
        match self {
            Error::Setting { key, message } => Some((key, message)),
            _ => None,
        }
    }
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io { path: path.into(), error: source }
    }
    pub fn data(path: impl Into<PathBuf>, message: impl Into<String>) -> Self {
        Error::Data { path: path.into(), message: message.into() }
    }
    pub fn config(file: impl Into<String>, field: impl Into<String>, message: impl Into<String>) -> Self {
        Error::Config { file: file.into(), field: field.into(), message: message.into() }
    }
}
