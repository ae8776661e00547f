//! Bounded requests: a command estimates what it will allocate and refuses,
//! before allocating, when the estimate exceeds the memory the machine has
//! available (`MemAvailable` in `/proc/meminfo`), so an absurd `--n` fails
//! at once with both numbers instead of swapping for hours or being killed.

use crate::error::{Error, Result};

/// The environment variable that caps the memory a request may use (bytes;
/// below `MemAvailable` only), for machines shared with other work.
pub const LIMIT_VAR: &str = "SCOREGEN_MEMORY_LIMIT";

/// Bytes available to a new allocation: `MemAvailable` of `/proc/meminfo`
/// (capped by `SCOREGEN_MEMORY_LIMIT`); `None` where neither is known.
pub fn available() -> Option<f64> {
    let meminfo = std::fs::read_to_string("/proc/meminfo").ok().and_then(|t| mem_available(&t));
    let cap = std::env::var(LIMIT_VAR).ok().and_then(|v| v.trim().parse::<f64>().ok());
    match (meminfo, cap) {
        (Some(a), Some(c)) => Some(a.min(c)),
        (a, c) => a.or(c),
    }
}

/// `MemAvailable` (kB in the file) in bytes.
fn mem_available(meminfo: &str) -> Option<f64> {
    let line = meminfo.lines().find(|l| l.starts_with("MemAvailable:"))?;
    let kb: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024.0)
}

/// Bytes as a person reads them: `1.5 GiB`.
pub fn human(bytes: f64) -> String {
    let units = ["B", "KiB", "MiB", "GiB", "TiB", "PiB", "EiB"];
    let mut v = bytes;
    let mut i = 0;
    while v >= 1024.0 && i + 1 < units.len() {
        v /= 1024.0;
        i += 1;
    }
    if v >= 1e4 {
        return format!("{bytes:.2e} B");
    }
    format!("{v:.1} {}", units[i])
}

/// Refuses `what` when `estimate` bytes exceed [`available`] memory,
/// naming both (and `hint`: how to ask for less).
pub fn check(what: &str, estimate: f64, hint: &str) -> Result<()> {
    check_against(what, estimate, available(), hint)
}

fn check_against(what: &str, estimate: f64, available: Option<f64>, hint: &str) -> Result<()> {
    match available {
        // NaN counts as too much.
        Some(limit) if estimate.is_nan() || estimate > limit => Err(Error::Invalid(format!(
            "{what} needs about {} of memory, {} is available (MemAvailable in /proc/meminfo); {hint}",
            human(estimate),
            human(limit)
        ))),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_mem_available_and_refuses_only_above_it() {
        let text = "MemTotal:       16000000 kB\nMemFree:  100 kB\nMemAvailable:    8000000 kB\n";
        assert_eq!(mem_available(text), Some(8_192_000_000.0));
        assert!(check_against("x", 8e9, Some(8.192e9), "").is_ok());
        let err = check_against("sampling 10 points", 3.3e12, Some(8.192e9), "ask for fewer").unwrap_err();
        assert_eq!(
            err.to_string(),
            "sampling 10 points needs about 3.0 TiB of memory, 7.6 GiB is available (MemAvailable in /proc/meminfo); ask for fewer"
        );
        assert!(check_against("x", f64::INFINITY, Some(1.0), "").is_err());
        assert!(check_against("x", 1e30, None, "").is_ok(), "unknown: no refusal");
        assert!(available().is_some_and(|a| a > 0.0), "Linux has /proc/meminfo");
    }
}
