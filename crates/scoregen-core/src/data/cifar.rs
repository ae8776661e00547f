//! CIFAR-10 and CIFAR-100 readers: the binary batches (`cifar-10-batches-bin`,
//! `cifar-100-binary`) and the Python pickles of `cifar-10-batches-py`.
//!
//! Every reader returns an [`ImageSet`] of shape (3, 32, 32), pixels /255,
//! channels-first, which is already the files' own order (1,024 red bytes, then
//! green, then blue, each plane row-major 32×32).

use super::images::ImageSet;
use crate::error::{Error, Result};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::rc::Rc;

/// Pixels of one CIFAR image: 3 planes of 32×32.
pub const PIXELS: usize = 3 * 32 * 32;
/// The `data.source` prefix of a CIFAR-10 folder (`cifar10:DIR`).
pub const CIFAR10_PREFIX: &str = "cifar10:";
/// The `data.source` prefix of a CIFAR-100 folder (`cifar100:DIR`).
pub const CIFAR100_PREFIX: &str = "cifar100:";

/// The folder named by a `cifar10:DIR` source.
pub fn cifar10_dir(source: &str) -> Option<&Path> {
    source.strip_prefix(CIFAR10_PREFIX).filter(|d| !d.is_empty()).map(Path::new)
}

/// The folder named by a `cifar100:DIR` source.
pub fn cifar100_dir(source: &str) -> Option<&Path> {
    source.strip_prefix(CIFAR100_PREFIX).filter(|d| !d.is_empty()).map(Path::new)
}

fn read_file(path: &Path) -> Result<Vec<u8>> {
    std::fs::read(path).map_err(|e| Error::io(path, e))
}

/// Rows of `label_bytes` label bytes then [`PIXELS`] pixel bytes; the label
/// kept is the last of the label bytes, checked to be below `classes`.
fn parse_rows(bytes: &[u8], path: &Path, label_bytes: usize, classes: u8, what: &str) -> Result<ImageSet> {
    let row = label_bytes + PIXELS;
    if bytes.is_empty() {
        return Err(Error::data(path, format!("empty {what} file")));
    }
    if !bytes.len().is_multiple_of(row) {
        return Err(Error::data(
            path,
            format!(
                "truncated or not a {what} file: {} bytes is not a whole number of {row}-byte rows ({} rows and {} bytes over)",
                bytes.len(),
                bytes.len() / row,
                bytes.len() % row
            ),
        ));
    }
    let n = bytes.len() / row;
    let mut images = Vec::with_capacity(n * PIXELS);
    let mut labels = Vec::with_capacity(n);
    for (i, r) in bytes.chunks_exact(row).enumerate() {
        let label = r[label_bytes - 1];
        if label >= classes {
            return Err(Error::data(
                path,
                format!("not a {what} file: row {i} has label {label}, expected 0..{}", classes - 1),
            ));
        }
        labels.push(label);
        images.extend(r[label_bytes..].iter().map(|&p| p as f32 / 255.0));
    }
    Ok(ImageSet { images, labels, c: 3, h: 32, w: 32 })
}

/// A CIFAR-10 binary batch (`cifar-10-batches-bin/data_batch_1.bin` …): rows
/// of 1 label byte (0..9) and 3,072 pixel bytes.
pub fn read_cifar10_bin(path: &Path) -> Result<ImageSet> {
    parse_rows(&read_file(path)?, path, 1, 10, "CIFAR-10 binary")
}

/// A CIFAR-100 binary file (`cifar-100-binary/train.bin`, `test.bin`): rows of
/// a coarse label byte (0..19), a fine label byte (0..99) and 3,072 pixel
/// bytes. The label kept is the fine one (the 100 classes); the coarse label
/// is checked and dropped.
pub fn read_cifar100_bin(path: &Path) -> Result<ImageSet> {
    let bytes = read_file(path)?;
    let set = parse_rows(&bytes, path, 2, 100, "CIFAR-100 binary")?;
    let row = 2 + PIXELS;
    if let Some((i, c)) = bytes.chunks_exact(row).map(|r| r[0]).enumerate().find(|&(_, c)| c >= 20) {
        return Err(Error::data(
            path,
            format!("not a CIFAR-100 binary file: row {i} has coarse label {c}, expected 0..19"),
        ));
    }
    Ok(set)
}

fn concat(sets: Vec<ImageSet>) -> ImageSet {
    let mut out = ImageSet { images: Vec::new(), labels: Vec::new(), c: 3, h: 32, w: 32 };
    for s in sets {
        out.images.extend(s.images);
        out.labels.extend(s.labels);
    }
    out
}

/// The CIFAR-10 folder's training (the five data batches, 50,000 images) or
/// test (`test_batch`, 10,000) part: the official split. `dir` holds either
/// the binary batches (`data_batch_1.bin` … `data_batch_5.bin`,
/// `test_batch.bin`, as in `cifar-10-batches-bin`) or the Python pickles
/// (`data_batch_1` … `data_batch_5`, `test_batch`, as in `cifar-10-batches-py`),
/// or is the folder above either of those.
pub fn read_cifar10_dir(dir: &Path, train: bool) -> Result<ImageSet> {
    let dir = [dir.join("cifar-10-batches-bin"), dir.join("cifar-10-batches-py")]
        .into_iter()
        .find(|d| d.is_dir())
        .unwrap_or_else(|| dir.to_path_buf());
    let stems: Vec<String> =
        if train { (1..=5).map(|k| format!("data_batch_{k}")).collect() } else { vec!["test_batch".into()] };
    let binary = dir.join("data_batch_1.bin").exists() || dir.join("test_batch.bin").exists();
    let pickled = dir.join("data_batch_1").exists() || dir.join("test_batch").exists();
    if !binary && !pickled {
        return Err(Error::data(
            &dir,
            "no CIFAR-10 batches here: expected data_batch_1.bin … data_batch_5.bin and test_batch.bin \
             (cifar-10-batches-bin) or data_batch_1 … data_batch_5 and test_batch (cifar-10-batches-py)",
        ));
    }
    let files: Vec<PathBuf> =
        stems.iter().map(|s| if binary { dir.join(format!("{s}.bin")) } else { dir.join(s) }).collect();
    if let Some(missing) = files.iter().find(|f| !f.exists()) {
        return Err(Error::data(missing, "missing CIFAR-10 batch (the folder has some batches but not this one)"));
    }
    let sets = files
        .iter()
        .map(|f| if binary { read_cifar10_bin(f) } else { read_cifar10_pickle(f) })
        .collect::<Result<Vec<_>>>()?;
    Ok(concat(sets))
}

/// The CIFAR-100 folder's training (`train.bin`, 50,000) or test (`test.bin`,
/// 10,000) part, with fine labels; `dir` is `cifar-100-binary` or the folder above.
pub fn read_cifar100_dir(dir: &Path, train: bool) -> Result<ImageSet> {
    let sub = dir.join("cifar-100-binary");
    let dir = if sub.is_dir() { sub } else { dir.to_path_buf() };
    let file = dir.join(if train { "train.bin" } else { "test.bin" });
    if !file.exists() {
        return Err(Error::data(
            &file,
            "missing CIFAR-100 binary file (expected train.bin and test.bin, cifar-100-binary)",
        ));
    }
    read_cifar100_bin(&file)
}

// ---------------------------------------------------------------------------
// The pickles of `cifar-10-batches-py`.
//
// Hand-written on purpose: the batches are numpy arrays inside a pickle, and no
// maintained Rust crate reads numpy's pickled arrays without Python (serde-pickle
// parses the opcodes but has no model of `numpy.core.multiarray._reconstruct`
// objects). This is a small pickle machine for exactly this structure: it
// builds plain values, keeps callables applied to their arguments as opaque
// objects, and then checks the one shape it accepts — a dict whose `data` is a
// `_reconstruct(ndarray, (0,), b'b')` object with state
// `(1, (N, 3072), dtype('u1'), False, raw bytes)` and whose `labels` is a list of
// N ints in 0..9. Anything else is refused with an error naming what was found.
// It reads Python 2 cPickle streams (the official archive: protocol 2, keys and
// raw bytes as `str`), Python 3 protocol 2 (bytes as `_codecs.encode(str,
// 'latin1')`) and protocols 3–4 (`bytes` opcodes, frames); protocol 5, where
// numpy pickles arrays by `_frombuffer` with BYTEARRAY8, is refused by opcode.
// ---------------------------------------------------------------------------

/// The deepest nesting of containers accepted (the real structure has 4), so a
/// hostile file of nested tuples cannot overflow the stack when dropped.
const MAX_DEPTH: u8 = 16;

#[derive(Debug, Clone)]
enum Value {
    None,
    Bool(bool),
    Int(i64),
    /// A unicode string (Python 3 `str`, `BINUNICODE`).
    Str(Rc<str>),
    /// A byte string (Python 2 `str`, Python 3 `bytes`).
    Bytes(Rc<[u8]>),
    Tuple(Rc<[Value]>, u8),
    List(Vec<Value>, u8),
    Dict(Vec<(Value, Value)>, u8),
    /// `module.name` from GLOBAL / STACK_GLOBAL.
    Global(Rc<str>),
    /// `callable(*args)`, then BUILD's state.
    Object {
        callable: Box<Value>,
        args: Box<Value>,
        state: Option<Box<Value>>,
        depth: u8,
    },
    Mark,
}

impl Value {
    fn depth(&self) -> u8 {
        match self {
            Value::Tuple(_, d) | Value::List(_, d) | Value::Dict(_, d) => *d,
            Value::Object { depth, .. } => *depth,
            _ => 0,
        }
    }

    /// What it is, for errors.
    fn kind(&self) -> String {
        match self {
            Value::None => "None".into(),
            Value::Bool(b) => format!("bool {b}"),
            Value::Int(i) => format!("int {i}"),
            Value::Str(s) => format!("str {:?}", clip(s)),
            Value::Bytes(b) => format!("bytes of length {}", b.len()),
            Value::Tuple(t, _) => format!("tuple of {}", t.len()),
            Value::List(l, _) => format!("list of {}", l.len()),
            Value::Dict(d, _) => format!("dict of {}", d.len()),
            Value::Global(g) => format!("global {g}"),
            Value::Object { callable, .. } => format!("object built by {}", callable.kind()),
            Value::Mark => "a MARK".into(),
        }
    }

    /// The text of a `str` or ASCII `bytes` (dict keys, dtype names).
    fn text(&self) -> Option<String> {
        match self {
            Value::Str(s) => Some(s.to_string()),
            Value::Bytes(b) => std::str::from_utf8(b).ok().map(str::to_string),
            _ => None,
        }
    }

    fn int(&self) -> Option<i64> {
        match self {
            Value::Int(i) => Some(*i),
            Value::Bool(b) => Some(*b as i64),
            _ => None,
        }
    }
}

fn clip(s: &str) -> String {
    s.chars().take(40).collect()
}

fn nest<'a>(items: impl IntoIterator<Item = &'a Value>, path: &Path) -> Result<u8> {
    let d = items.into_iter().map(Value::depth).max().unwrap_or(0) + 1;
    if d > MAX_DEPTH {
        return Err(Error::data(path, format!("not a CIFAR-10 pickle: containers nested deeper than {MAX_DEPTH}")));
    }
    Ok(d)
}

struct Machine<'a> {
    bytes: &'a [u8],
    pos: usize,
    path: &'a Path,
    stack: Vec<Value>,
    /// Indices of MARKs in `stack`.
    marks: Vec<usize>,
    memo: HashMap<u32, Value>,
}

impl<'a> Machine<'a> {
    fn err(&self, msg: impl std::fmt::Display) -> Error {
        Error::data(self.path, format!("not a CIFAR-10 pickle: {msg}"))
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8]> {
        if self.bytes.len() - self.pos < n {
            return Err(Error::data(
                self.path,
                format!("truncated pickle: needs {n} bytes at byte {}, the file has {}", self.pos, self.bytes.len()),
            ));
        }
        let s = &self.bytes[self.pos..self.pos + n];
        self.pos += n;
        Ok(s)
    }

    fn u8(&mut self) -> Result<u8> {
        Ok(self.take(1)?[0])
    }

    fn u16(&mut self) -> Result<usize> {
        Ok(u16::from_le_bytes(self.take(2)?.try_into().expect("2 bytes")) as usize)
    }

    fn u32(&mut self) -> Result<u32> {
        Ok(u32::from_le_bytes(self.take(4)?.try_into().expect("4 bytes")))
    }

    fn line(&mut self) -> Result<&'a str> {
        let rest = &self.bytes[self.pos..];
        let end = rest.iter().position(|&b| b == b'\n').ok_or_else(|| {
            Error::data(self.path, format!("truncated pickle: unterminated GLOBAL name at byte {}", self.pos))
        })?;
        self.pos += end + 1;
        std::str::from_utf8(&rest[..end]).map_err(|_| self.err("a GLOBAL name that is not UTF-8"))
    }

    fn pop(&mut self) -> Result<Value> {
        if matches!(self.stack.last(), Some(Value::Mark) | None) {
            return Err(self.err(format!("stack underflow at byte {}", self.pos)));
        }
        Ok(self.stack.pop().expect("checked"))
    }

    fn top(&mut self) -> Result<&mut Value> {
        match self.stack.last_mut() {
            Some(Value::Mark) | None => {
                Err(Error::data(self.path, format!("not a CIFAR-10 pickle: stack underflow at byte {}", self.pos)))
            }
            Some(v) => Ok(v),
        }
    }

    /// The values above the last MARK, and the MARK removed.
    fn pop_mark(&mut self) -> Result<Vec<Value>> {
        let m = self.marks.pop().ok_or_else(|| self.err(format!("no MARK for the opcode at byte {}", self.pos)))?;
        let items = self.stack.split_off(m + 1);
        self.stack.pop();
        Ok(items)
    }

    fn string(&mut self, n: usize, unicode: bool) -> Result<Value> {
        let b = self.take(n)?;
        Ok(if unicode {
            Value::Str(std::str::from_utf8(b).map_err(|_| self.err("a BINUNICODE string that is not UTF-8"))?.into())
        } else {
            Value::Bytes(b.into())
        })
    }

    fn tuple(&mut self, items: Vec<Value>) -> Result<()> {
        let d = nest(&items, self.path)?;
        self.stack.push(Value::Tuple(items.into(), d));
        Ok(())
    }

    fn memo_put(&mut self, key: u32) -> Result<()> {
        let v = self.top()?.clone();
        self.memo.insert(key, v);
        Ok(())
    }

    fn memo_get(&mut self, key: u32) -> Result<()> {
        let v = self
            .memo
            .get(&key)
            .cloned()
            .ok_or_else(|| self.err(format!("memo key {key} read before it was written")))?;
        self.stack.push(v);
        Ok(())
    }

    fn set_items(&mut self, items: Vec<Value>) -> Result<()> {
        if !items.len().is_multiple_of(2) {
            return Err(self.err("SETITEMS with an odd number of values"));
        }
        let path = self.path;
        let d = nest(&items, path)?;
        let at = self.pos;
        match self.top()? {
            Value::Dict(entries, depth) => {
                let mut it = items.into_iter();
                while let (Some(k), Some(v)) = (it.next(), it.next()) {
                    entries.push((k, v));
                }
                *depth = (*depth).max(d);
                Ok(())
            }
            other => {
                Err(Error::data(path, format!("not a CIFAR-10 pickle: SETITEM(S) on {} at byte {at}", other.kind())))
            }
        }
    }

    fn append(&mut self, items: Vec<Value>) -> Result<()> {
        let path = self.path;
        let d = nest(&items, path)?;
        let at = self.pos;
        match self.top()? {
            Value::List(list, depth) => {
                list.extend(items);
                *depth = (*depth).max(d);
                Ok(())
            }
            other => {
                Err(Error::data(path, format!("not a CIFAR-10 pickle: APPEND(S) on {} at byte {at}", other.kind())))
            }
        }
    }

    fn reduce(&mut self) -> Result<()> {
        let args = self.pop()?;
        let callable = self.pop()?;
        let Value::Global(name) = &callable else {
            return Err(self.err(format!("REDUCE calls {}, not a global", callable.kind())));
        };
        // Python 3 pickles `bytes` at protocol 2 as `_codecs.encode(str, 'latin1')`.
        if &**name == "_codecs.encode" {
            if let Value::Tuple(t, _) = &args {
                if let [Value::Str(s), Value::Str(enc)] = &t[..] {
                    if matches!(&**enc, "latin1" | "latin-1") {
                        let bytes: Option<Vec<u8>> = s.chars().map(|c| u8::try_from(c as u32).ok()).collect();
                        let bytes = bytes.ok_or_else(|| self.err("a latin1 string with characters above U+00FF"))?;
                        self.stack.push(Value::Bytes(bytes.into()));
                        return Ok(());
                    }
                }
            }
            return Err(self.err(format!("_codecs.encode of {}", args.kind())));
        }
        if !matches!(
            &**name,
            "numpy.core.multiarray._reconstruct" | "numpy._core.multiarray._reconstruct" | "numpy.dtype"
        ) {
            return Err(self.err(format!("REDUCE calls {name}, which this reader does not know")));
        }
        let depth = nest([&args], self.path)?;
        self.stack.push(Value::Object { callable: Box::new(callable), args: Box::new(args), state: None, depth });
        Ok(())
    }

    fn build(&mut self) -> Result<()> {
        let state = self.pop()?;
        let path = self.path;
        let d = nest([&state], path)?;
        let at = self.pos;
        match self.top()? {
            Value::Object { state: s @ None, depth, .. } => {
                *s = Some(Box::new(state));
                *depth = (*depth).max(d);
                Ok(())
            }
            other => Err(Error::data(path, format!("not a CIFAR-10 pickle: BUILD on {} at byte {at}", other.kind()))),
        }
    }

    /// Runs to STOP and returns the value left.
    fn run(mut self) -> Result<Value> {
        loop {
            let at = self.pos;
            let op = self.u8().map_err(|_| {
                Error::data(self.path, format!("truncated pickle: no STOP opcode (the file ends at byte {at})"))
            })?;
            match op {
                0x80 => {
                    let p = self.u8()?;
                    if p > 5 {
                        return Err(self.err(format!("pickle protocol {p}")));
                    }
                }
                0x95 => {
                    self.take(8)?;
                }
                b'.' => {
                    let v = self.pop()?;
                    if !self.stack.is_empty() {
                        return Err(self.err(format!("{} values left on the stack at STOP", self.stack.len())));
                    }
                    return Ok(v);
                }
                b'(' => {
                    self.marks.push(self.stack.len());
                    self.stack.push(Value::Mark);
                }
                b'}' => self.stack.push(Value::Dict(Vec::new(), 1)),
                b']' => self.stack.push(Value::List(Vec::new(), 1)),
                b')' => self.stack.push(Value::Tuple(Rc::new([]), 1)),
                b'N' => self.stack.push(Value::None),
                0x88 => self.stack.push(Value::Bool(true)),
                0x89 => self.stack.push(Value::Bool(false)),
                b'J' => {
                    let v = self.u32()? as i32;
                    self.stack.push(Value::Int(v as i64));
                }
                b'K' => {
                    let v = self.u8()?;
                    self.stack.push(Value::Int(v as i64));
                }
                b'M' => {
                    let v = self.u16()?;
                    self.stack.push(Value::Int(v as i64));
                }
                0x8a => {
                    let n = self.u8()? as usize;
                    let b = self.take(n)?;
                    if n > 8 {
                        return Err(self.err(format!("LONG1 of {n} bytes")));
                    }
                    let mut v: i64 = 0;
                    for (k, &x) in b.iter().enumerate() {
                        v |= (x as i64) << (8 * k);
                    }
                    if n > 0 && n < 8 && b[n - 1] & 0x80 != 0 {
                        v -= 1i64 << (8 * n);
                    }
                    self.stack.push(Value::Int(v));
                }
                b'X' => {
                    let n = self.u32()? as usize;
                    let v = self.string(n, true)?;
                    self.stack.push(v);
                }
                0x8c => {
                    let n = self.u8()? as usize;
                    let v = self.string(n, true)?;
                    self.stack.push(v);
                }
                b'U' | b'C' => {
                    let n = self.u8()? as usize;
                    let v = self.string(n, false)?;
                    self.stack.push(v);
                }
                b'T' => {
                    let n = self.u32()? as i32;
                    if n < 0 {
                        return Err(self.err(format!("BINSTRING of negative length {n}")));
                    }
                    let v = self.string(n as usize, false)?;
                    self.stack.push(v);
                }
                b'B' => {
                    let n = self.u32()? as usize;
                    let v = self.string(n, false)?;
                    self.stack.push(v);
                }
                0x8e => {
                    let n = u64::from_le_bytes(self.take(8)?.try_into().expect("8 bytes"));
                    let n = usize::try_from(n).map_err(|_| self.err("BINBYTES8 longer than memory"))?;
                    let v = self.string(n, false)?;
                    self.stack.push(v);
                }
                b'c' => {
                    let module = self.line()?;
                    let name = self.line()?;
                    self.stack.push(Value::Global(format!("{module}.{name}").into()));
                }
                0x93 => {
                    let name = self.pop()?;
                    let module = self.pop()?;
                    match (module.text(), name.text()) {
                        (Some(m), Some(n)) => self.stack.push(Value::Global(format!("{m}.{n}").into())),
                        _ => return Err(self.err(format!("STACK_GLOBAL of {} and {}", module.kind(), name.kind()))),
                    }
                }
                b't' => {
                    let items = self.pop_mark()?;
                    self.tuple(items)?;
                }
                0x85..=0x87 => {
                    let n = (op - 0x84) as usize;
                    let mut items = Vec::with_capacity(n);
                    for _ in 0..n {
                        items.push(self.pop()?);
                    }
                    items.reverse();
                    self.tuple(items)?;
                }
                b'R' => self.reduce()?,
                b'b' => self.build()?,
                b's' => {
                    let v = self.pop()?;
                    let k = self.pop()?;
                    self.set_items(vec![k, v])?;
                }
                b'u' => {
                    let items = self.pop_mark()?;
                    self.set_items(items)?;
                }
                b'a' => {
                    let v = self.pop()?;
                    self.append(vec![v])?;
                }
                b'e' => {
                    let items = self.pop_mark()?;
                    self.append(items)?;
                }
                b'q' => {
                    let k = self.u8()? as u32;
                    self.memo_put(k)?;
                }
                b'r' => {
                    let k = self.u32()?;
                    self.memo_put(k)?;
                }
                0x94 => {
                    let k = self.memo.len() as u32;
                    self.memo_put(k)?;
                }
                b'h' => {
                    let k = self.u8()? as u32;
                    self.memo_get(k)?;
                }
                b'j' => {
                    let k = self.u32()?;
                    self.memo_get(k)?;
                }
                _ => {
                    let shown = if op.is_ascii_graphic() { format!(" ('{}')", op as char) } else { String::new() };
                    return Err(self.err(format!(
                        "pickle opcode 0x{op:02x}{shown} at byte {at}, which this reader does not handle"
                    )));
                }
            }
        }
    }
}

/// Parses a pickle into the value it holds (only the opcodes listed above).
fn unpickle(bytes: &[u8], path: &Path) -> Result<Value> {
    Machine { bytes, pos: 0, path, stack: Vec::new(), marks: Vec::new(), memo: HashMap::new() }.run()
}

/// `numpy.dtype('u1')` as pickled: `dtype('u1', 0|False, 1|True)` with any state.
fn is_u1_dtype(v: &Value) -> bool {
    match v {
        Value::Object { callable, args, .. } => {
            matches!(&**callable, Value::Global(g) if &**g == "numpy.dtype")
                && matches!(&**args, Value::Tuple(t, _) if t.first().and_then(Value::text).as_deref() == Some("u1"))
        }
        _ => false,
    }
}

/// The images of a `cifar-10-batches-py` batch (`data_batch_1` … `test_batch`):
/// a pickled dict with `data` (a uint8 numpy array N×3072) and `labels` (N ints
/// in 0..9); other keys (`batch_label`, `filenames`) are ignored.
pub fn read_cifar10_pickle(path: &Path) -> Result<ImageSet> {
    let bytes = read_file(path)?;
    let bad = |msg: String| Error::data(path, format!("not a CIFAR-10 pickle: {msg}"));
    let Value::Dict(entries, _) = unpickle(&bytes, path)? else {
        return Err(bad("the pickle does not hold a dict".into()));
    };
    let get = |key: &str| {
        entries
            .iter()
            .find(|(k, _)| k.text().as_deref() == Some(key))
            .map(|(_, v)| v)
            .ok_or_else(|| bad(format!("no `{key}` key in the dict")))
    };
    let (data, labels) = (get("data")?, get("labels")?);
    let Value::Object { callable, args, state, .. } = data else {
        return Err(bad(format!("`data` is {}, not a numpy array", data.kind())));
    };
    let reconstruct = matches!(&**callable, Value::Global(g) if g.ends_with("multiarray._reconstruct"));
    let of_ndarray =
        matches!(&**args, Value::Tuple(t, _) if matches!(t.first(), Some(Value::Global(g)) if &**g == "numpy.ndarray"));
    if !(reconstruct && of_ndarray) {
        return Err(bad(format!("`data` is {} of {}, not a numpy ndarray", callable.kind(), args.kind())));
    }
    let Some(Value::Tuple(st, _)) = state.as_deref() else {
        return Err(bad("`data` has no (version, shape, dtype, fortran, bytes) state".into()));
    };
    let [_, Value::Tuple(shape, _), dtype, fortran, Value::Bytes(raw)] = &st[..] else {
        let kinds: Vec<String> = st.iter().map(Value::kind).collect();
        return Err(bad(format!(
            "`data`'s state is ({}), expected (version, shape, dtype, fortran, bytes)",
            kinds.join(", ")
        )));
    };
    if !is_u1_dtype(dtype) {
        return Err(bad(format!("`data` has dtype {}, expected uint8 ('u1')", dtype.kind())));
    }
    if fortran.int() != Some(0) {
        return Err(bad("`data` is in Fortran order".into()));
    }
    let dims: Option<Vec<i64>> = shape.iter().map(Value::int).collect();
    let n = match dims.as_deref() {
        Some(&[n, d]) if d == PIXELS as i64 && n >= 0 => n as usize,
        _ => {
            let kinds: Vec<String> = shape.iter().map(Value::kind).collect();
            return Err(bad(format!("`data` has shape ({}), expected (N, 3072)", kinds.join(", "))));
        }
    };
    if n.checked_mul(PIXELS) != Some(raw.len()) {
        return Err(bad(format!("`data` has shape ({n}, 3072) but {} bytes", raw.len())));
    }
    let Value::List(labels, _) = labels else {
        return Err(bad(format!("`labels` is {}, not a list", labels.kind())));
    };
    if labels.len() != n {
        return Err(bad(format!("{} labels for {n} images", labels.len())));
    }
    let labels = labels
        .iter()
        .enumerate()
        .map(|(i, l)| match l.int() {
            Some(v @ 0..=9) => Ok(v as u8),
            _ => Err(bad(format!("label {i} is {}, expected an int in 0..9", l.kind()))),
        })
        .collect::<Result<Vec<u8>>>()?;
    Ok(ImageSet { images: raw.iter().map(|&p| p as f32 / 255.0).collect(), labels, c: 3, h: 32, w: 32 })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::{image_shape_of, images::levels_of, is_image_source, load_images, ImageOptions};

    /// The pixel byte of image `i` at channel `ch`, row `y`, column `x`: each
    /// channel in its own range, so a wrong channel order shows.
    fn px(i: usize, ch: usize, y: usize, x: usize) -> u8 {
        (ch * 80 + (i * 7 + y * 3 + x) % 80) as u8
    }

    fn pixels(i: usize) -> Vec<u8> {
        (0..3).flat_map(|ch| (0..32).flat_map(move |y| (0..32).map(move |x| px(i, ch, y, x)))).collect()
    }

    /// CIFAR-10 binary rows for images `first..first+labels.len()`.
    fn bin10(first: usize, labels: &[u8]) -> Vec<u8> {
        labels.iter().enumerate().flat_map(|(k, &l)| std::iter::once(l).chain(pixels(first + k))).collect()
    }

    fn check_pixels(set: &ImageSet, first: usize) {
        assert_eq!(set.shape(), (3, 32, 32));
        for i in 0..set.len() {
            let img = set.image(i);
            for (ch, y, x) in [(0, 0, 0), (0, 5, 31), (1, 0, 0), (1, 17, 4), (2, 31, 31), (2, 8, 9)] {
                assert_eq!(img[ch * 1024 + y * 32 + x], px(first + i, ch, y, x) as f32 / 255.0, "{i} {ch} {y} {x}");
            }
            let back: Vec<u8> = img.iter().map(|&p| (p * 255.0).round() as u8).collect();
            assert_eq!(back, pixels(first + i));
        }
    }

    /// A `cifar-10-batches-py` batch as Python 2's cPickle (protocol 2) writes
    /// it: `str` keys (SHORT_BINSTRING), the array by
    /// `numpy.core.multiarray._reconstruct`, its bytes as one BINSTRING, every
    /// value memoized with BINPUT.
    fn py2_pickle(first: usize, labels: &[u8]) -> Vec<u8> {
        let n = labels.len();
        let raw: Vec<u8> = (0..n).flat_map(|k| pixels(first + k)).collect();
        let mut p = b"\x80\x02}q\x01(U\x04dataq\x02cnumpy.core.multiarray\n_reconstruct\nq\x03cnumpy\nndarray\nq\x04K\x00\x85q\x05U\x01bq\x06\x87q\x07Rq\x08(K\x01".to_vec();
        p.extend([b'M', n as u8, (n >> 8) as u8]);
        p.extend(b"M\x00\x0c\x86q\x09cnumpy\ndtype\nq\x0aU\x02u1q\x0bK\x00K\x01\x87q\x0cRq\x0d(K\x03U\x01|q\x0eNNNJ\xff\xff\xff\xffJ\xff\xff\xff\xffK\x00tq\x0fb\x89T");
        p.extend((raw.len() as u32).to_le_bytes());
        p.extend(&raw);
        p.extend(b"q\x10tq\x11bU\x06labelsq\x12]q\x13(");
        for &l in labels {
            p.extend([b'K', l]);
        }
        p.extend(b"eU\x0bbatch_labelq\x14U\x15training batch 1 of 5q\x15U\x09filenamesq\x16]q\x17(U\x05a.pngq\x18U\x05b.pngq\x19eu.");
        p
    }

    #[test]
    fn cifar10_binary_keeps_pixels_labels_and_channel_order() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("data_batch_1.bin");
        std::fs::write(&f, bin10(0, &[6, 9, 0])).unwrap();
        let set = read_cifar10_bin(&f).unwrap();
        assert_eq!(set.labels, vec![6, 9, 0]);
        check_pixels(&set, 0);
        // The first 1,024 bytes are red: channel 0 of the first image is byte 1.
        let raw = std::fs::read(&f).unwrap();
        assert_eq!(set.image(0)[0], raw[1] as f32 / 255.0);
        assert_eq!(set.image(0)[1024], raw[1 + 1024] as f32 / 255.0);
        assert_eq!(set.image(1)[2048 + 33], raw[3073 + 1 + 2048 + 33] as f32 / 255.0);
    }

    #[test]
    fn cifar100_binary_keeps_the_fine_label() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("train.bin");
        let mut bytes = Vec::new();
        for (i, (coarse, fine)) in [(19u8, 57u8), (0, 99), (4, 0)].into_iter().enumerate() {
            bytes.extend([coarse, fine]);
            bytes.extend(pixels(i));
        }
        std::fs::write(&f, &bytes).unwrap();
        let set = read_cifar100_bin(&f).unwrap();
        assert_eq!(set.labels, vec![57, 99, 0]);
        check_pixels(&set, 0);
        bytes[0] = 20;
        std::fs::write(&f, &bytes).unwrap();
        let e = read_cifar100_bin(&f).unwrap_err().to_string();
        assert!(e.starts_with(&f.display().to_string()) && e.contains("coarse label 20"), "{e}");
        // A CIFAR-10 file (3,073-byte rows) is not a CIFAR-100 one.
        std::fs::write(&f, bin10(0, &[1, 2])).unwrap();
        assert!(read_cifar100_bin(&f).unwrap_err().to_string().contains("whole number of 3074-byte rows"));
    }

    #[test]
    fn truncated_or_corrupt_binary_is_a_clear_error() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("b.bin");
        let full = bin10(0, &[1, 2]);
        std::fs::write(&f, &full[..full.len() - 5]).unwrap();
        let e = read_cifar10_bin(&f).unwrap_err().to_string();
        assert!(e.starts_with(&f.display().to_string()) && e.contains("truncated"), "{e}");
        assert!(e.contains("1 rows and 3068 bytes over"), "{e}");
        let mut bad = full.clone();
        bad[3073] = 10;
        std::fs::write(&f, &bad).unwrap();
        let e = read_cifar10_bin(&f).unwrap_err().to_string();
        assert!(e.contains("row 1 has label 10, expected 0..9"), "{e}");
        std::fs::write(&f, b"").unwrap();
        assert!(read_cifar10_bin(&f).unwrap_err().to_string().contains("empty CIFAR-10 binary file"));
        let missing = dir.path().join("nope.bin");
        assert!(read_cifar10_bin(&missing).unwrap_err().to_string().starts_with(&missing.display().to_string()));
    }

    #[test]
    fn python2_cpickle_batch_reads_back() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("data_batch_1");
        std::fs::write(&f, py2_pickle(4, &[3, 0, 9])).unwrap();
        let set = read_cifar10_pickle(&f).unwrap();
        assert_eq!(set.labels, vec![3, 0, 9]);
        check_pixels(&set, 4);
    }

    #[test]
    fn python3_protocol2_fixture_reads_back() {
        let f = Path::new(env!("CARGO_MANIFEST_DIR")).join("data/test/cifar10_py3_protocol2.pkl");
        let set = read_cifar10_pickle(&f).unwrap();
        assert_eq!((set.labels.clone(), set.shape()), (vec![3, 9], (3, 32, 32)));
        for i in 0..2 {
            let want: Vec<f32> = (0..PIXELS).map(|k| ((i * 7 + k) % 256) as f32 / 255.0).collect();
            assert_eq!(set.image(i), &want[..]);
        }
    }

    #[test]
    fn truncated_or_foreign_pickles_are_clear_errors() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("test_batch");
        let name = f.display().to_string();
        let good = py2_pickle(0, &[1, 2]);
        let err = |bytes: &[u8]| {
            std::fs::write(&f, bytes).unwrap();
            let e = read_cifar10_pickle(&f).unwrap_err().to_string();
            assert!(e.starts_with(&name), "{e}");
            e
        };
        // Every prefix is refused (never a panic); a cut mid-string says truncated.
        for cut in (0..good.len()).step_by(97).chain([1, 2, 3, 200, good.len() - 1]) {
            err(&good[..cut]);
        }
        assert!(err(&good[..1000]).contains("truncated pickle"));
        assert!(err(&good[..good.len() - 1]).contains("no STOP opcode"));
        // An unknown opcode is named.
        let mut bad = good.clone();
        bad[2] = b'Z';
        assert!(err(&bad).contains("pickle opcode 0x5a ('Z') at byte 2"), "{}", err(&bad));
        // A label outside 0..9.
        let e = err(&py2_pickle(0, &[1, 12]));
        assert!(e.contains("label 1 is int 12"), "{e}");
        // A global other than numpy's is refused by name, never called.
        let e = err(b"\x80\x02cos\nsystem\nX\x02\x00\x00\x00ls\x85R.");
        assert!(e.contains("REDUCE calls os.system"), "{e}");
        // Not a dict, and a dict without data.
        assert!(err(b"\x80\x02K\x05.").contains("does not hold a dict"));
        assert!(err(b"\x80\x02}U\x06labels]s.").contains("no `data` key"));
        // Wrong dtype: 'f8' instead of 'u1'.
        let mut f8 = good.clone();
        let at = f8.windows(4).position(|w| w == b"U\x02u1").unwrap();
        f8[at + 2..at + 4].copy_from_slice(b"f8");
        assert!(err(&f8).contains("expected uint8"));
        // Deeply nested tuples are refused before they can overflow the stack.
        let mut deep = b"\x80\x02)".to_vec();
        deep.extend(std::iter::repeat_n(0x85, 100_000));
        deep.push(b'.');
        assert!(err(&deep).contains("nested deeper than 16"));
        // Stack underflow.
        assert!(err(b"\x80\x02R.").contains("stack underflow"));
    }

    #[test]
    fn cifar10_dir_source_uses_the_official_split() {
        let opts = ImageOptions::default();
        for binary in [true, false] {
            let dir = tempfile::tempdir().unwrap();
            for k in 1..=5 {
                let (name, bytes) = if binary {
                    (format!("data_batch_{k}.bin"), bin10(k, &[k as u8, 0]))
                } else {
                    (format!("data_batch_{k}"), py2_pickle(k, &[k as u8, 0]))
                };
                std::fs::write(dir.path().join(name), bytes).unwrap();
            }
            let (name, bytes) =
                if binary { ("test_batch.bin", bin10(50, &[9])) } else { ("test_batch", py2_pickle(50, &[9])) };
            std::fs::write(dir.path().join(name), bytes).unwrap();
            let source = format!("cifar10:{}", dir.path().display());
            assert!(is_image_source(&source));
            assert_eq!(image_shape_of(&source), Some((3, 32, 32)));
            assert_eq!(levels_of(&source), 256);
            let train = load_images(&source, true, &opts).unwrap();
            assert_eq!(train.labels, vec![1, 0, 2, 0, 3, 0, 4, 0, 5, 0]);
            check_pixels(&train.select(&[0]), 1);
            check_pixels(&train.select(&[8]), 5);
            let test = load_images(&source, false, &opts).unwrap();
            assert_eq!(test.labels, vec![9]);
            check_pixels(&test, 50);
            // The folder above `cifar-10-batches-*` works too.
            let parent = tempfile::tempdir().unwrap();
            let sub = parent.path().join(if binary { "cifar-10-batches-bin" } else { "cifar-10-batches-py" });
            std::fs::rename(dir.path(), &sub).unwrap();
            assert_eq!(read_cifar10_dir(parent.path(), false).unwrap().labels, vec![9]);
            // A missing batch is named.
            let gone = sub.join(if binary { "data_batch_3.bin" } else { "data_batch_3" });
            std::fs::remove_file(&gone).unwrap();
            let e = read_cifar10_dir(&sub, true).unwrap_err().to_string();
            assert!(e.starts_with(&gone.display().to_string()) && e.contains("missing CIFAR-10 batch"), "{e}");
        }
        let empty = tempfile::tempdir().unwrap();
        let e = load_images(&format!("cifar10:{}", empty.path().display()), true, &opts).unwrap_err().to_string();
        assert!(e.contains("no CIFAR-10 batches here"), "{e}");
        assert!(!is_image_source("cifar10:"));
    }

    #[test]
    fn cifar100_dir_source_reads_train_and_test() {
        let dir = tempfile::tempdir().unwrap();
        for (file, fine) in [("train.bin", 42u8), ("test.bin", 7)] {
            let mut b = vec![3, fine];
            b.extend(pixels(0));
            std::fs::write(dir.path().join(file), b).unwrap();
        }
        let source = format!("cifar100:{}", dir.path().display());
        assert_eq!(image_shape_of(&source), Some((3, 32, 32)));
        let opts = ImageOptions::default();
        assert_eq!(load_images(&source, true, &opts).unwrap().labels, vec![42]);
        assert_eq!(load_images(&source, false, &opts).unwrap().labels, vec![7]);
    }
}
