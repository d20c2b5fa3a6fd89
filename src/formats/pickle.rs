//! Reads a `torch.save` checkpoint (`pytorch_model.bin`) without executing anything.
//!
//! The file is a zip archive: `<stem>/data.pkl` (a pickle of the state dict) and
//! `<stem>/data/<key>` (raw little-endian storages). The pickle is run by a small stack
//! machine that knows only the opcodes a state dict needs and only these callables:
//! `collections.OrderedDict`, `torch._utils._rebuild_tensor_v2`,
//! `torch._utils._rebuild_parameter` and the `torch.*Storage` types. Any other opcode or
//! global is refused with an error, so a malicious file cannot run code.

use std::collections::HashMap;
use std::io::Read;
use std::path::Path;

use safetensors::Dtype;

use super::tensor::{Tensor, bytes_to_f32};
use crate::error::{Error, Result};

#[derive(Clone, Debug)]
#[allow(dead_code)] // scalar payloads are parsed for completeness, only ints are used
enum Value {
    None,
    Bool(bool),
    Int(i64),
    Float(f64),
    Str(String),
    Tuple(Vec<Value>),
    List(Vec<Value>),
    Dict(Vec<(Value, Value)>),
    Global(String, String),
    Storage { key: String, dtype: Dtype },
    Tensor { key: String, dtype: Dtype, offset: usize, shape: Vec<usize>, stride: Vec<usize> },
    Mark,
}

const ALLOWED_GLOBALS: &[(&str, &str)] =
    &[("collections", "OrderedDict"), ("torch._utils", "_rebuild_tensor_v2"), ("torch._utils", "_rebuild_parameter")];

fn storage_dtype(module: &str, name: &str) -> Option<Dtype> {
    if module != "torch" {
        return None;
    }
    Some(match name {
        "FloatStorage" => Dtype::F32,
        "DoubleStorage" => Dtype::F64,
        "HalfStorage" => Dtype::F16,
        "BFloat16Storage" => Dtype::BF16,
        "LongStorage" => Dtype::I64,
        "IntStorage" => Dtype::I32,
        "BoolStorage" => Dtype::BOOL,
        "ByteStorage" => Dtype::U8,
        _ => return None,
    })
}

/// The most values a pickle may build by copying memo entries (a state dict of ten
/// thousand tensors builds about a hundred thousand): beyond it is a pickle bomb.
const MAX_COPIED: usize = 1 << 22;
/// The deepest nesting of values (a state dict is 4 deep).
const MAX_DEPTH: usize = 64;
/// The largest data.pkl read (a state dict's pickle is a few hundred bytes per tensor).
const MAX_PICKLE_BYTES: u64 = 64 << 20;

/// The most values on the stack at once (a state dict's pickle holds a few).
const MAX_STACK: usize = 1 << 20;

/// The size of `v` in values (a string counts one per 64 bytes) and its depth (1 for a
/// scalar), counted without recursion.
fn measure(v: &Value) -> (usize, usize) {
    let (mut nodes, mut depth) = (0, 0);
    let mut todo = vec![(v, 1)];
    while let Some((v, d)) = todo.pop() {
        nodes += 1 + if let Value::Str(s) = v { s.len() / 64 } else { 0 };
        depth = depth.max(d);
        match v {
            Value::Tuple(xs) | Value::List(xs) => todo.extend(xs.iter().map(|x| (x, d + 1))),
            Value::Dict(kv) => todo.extend(kv.iter().flat_map(|(k, x)| [(k, d + 1), (x, d + 1)])),
            _ => {}
        }
    }
    (nodes, depth)
}

struct Machine<'a> {
    data: &'a [u8],
    pos: usize,
    stack: Vec<Value>,
    memo: HashMap<u32, Value>,
    path: &'a Path,
    /// Values still allowed to be built by copying (memo puts and gets).
    copy_budget: usize,
}

impl<'a> Machine<'a> {
    fn err(&self, msg: impl Into<String>) -> Error {
        Error::format(self.path, format!("pytorch_model.bin: {} (at byte {} of data.pkl)", msg.into(), self.pos))
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8]> {
        if self.pos + n > self.data.len() {
            return Err(self.err("pickle ends early; the file is truncated"));
        }
        let s = &self.data[self.pos..self.pos + n];
        self.pos += n;
        Ok(s)
    }
    fn u8(&mut self) -> Result<u8> {
        Ok(self.take(1)?[0])
    }
    fn u16(&mut self) -> Result<u16> {
        let b = self.take(2)?;
        Ok(u16::from_le_bytes([b[0], b[1]]))
    }
    fn u32(&mut self) -> Result<u32> {
        let b = self.take(4)?;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }
    fn line(&mut self) -> Result<String> {
        let start = self.pos;
        while self.pos < self.data.len() && self.data[self.pos] != b'\n' {
            self.pos += 1;
        }
        let s = String::from_utf8_lossy(&self.data[start..self.pos]).into_owned();
        self.take(1)?;
        Ok(s)
    }
    fn string(&mut self, n: usize) -> Result<Value> {
        let b = self.take(n)?;
        Ok(Value::Str(String::from_utf8(b.to_vec()).map_err(|_| self.err("invalid UTF-8 string"))?))
    }
    /// Admits a value about to be placed in a container (`copy`: or copied from the memo):
    /// nesting and copies are bounded, so no pickle makes igpt build unbounded values.
    fn admit(&mut self, v: &Value, copy: bool) -> Result<()> {
        let (nodes, depth) = measure(v);
        if depth >= MAX_DEPTH {
            return Err(self.err(format!("values nested over {MAX_DEPTH} deep: not a state dict")));
        }
        if copy {
            self.copy_budget = self.copy_budget.checked_sub(nodes).ok_or_else(|| {
                self.err(format!("the pickle copies more than {MAX_COPIED} values (a pickle bomb?): not a state dict"))
            })?;
        }
        Ok(())
    }
    fn admit_all(&mut self, vs: &[Value]) -> Result<()> {
        vs.iter().try_for_each(|v| self.admit(v, false))
    }
    fn memo_put(&mut self, i: u32) -> Result<()> {
        let v = self.top()?.clone();
        self.admit(&v, true)?;
        self.memo.insert(i, v);
        Ok(())
    }

    /// Pushes a value; a pickle that piles up more than [`MAX_STACK`] is refused.
    fn push(&mut self, v: Value) -> Result<()> {
        if self.stack.len() >= MAX_STACK {
            return Err(self.err(format!("more than {MAX_STACK} values on the stack: not a state dict")));
        }
        self.stack.push(v);
        Ok(())
    }

    fn pop(&mut self) -> Result<Value> {
        self.stack.pop().ok_or_else(|| self.err("stack underflow"))
    }
    fn pop_mark(&mut self) -> Result<Vec<Value>> {
        let at = self.stack.iter().rposition(|v| matches!(v, Value::Mark)).ok_or_else(|| self.err("MARK not found"))?;
        let items = self.stack.split_off(at + 1);
        self.stack.pop();
        Ok(items)
    }
    fn top(&mut self) -> Result<&mut Value> {
        let pos = self.pos;
        self.stack.last_mut().ok_or_else(|| Error::Invalid(format!("pickle stack underflow at byte {pos}")))
    }

    fn run(&mut self) -> Result<Value> {
        loop {
            let op = self.u8()?;
            match op {
                0x80 => { self.u8()?; }                                  // PROTO
                0x95 => { self.take(8)?; }                               // FRAME
                b'.' => return self.pop(),                               // STOP
                b'(' => self.push(Value::Mark)?,                    // MARK
                b'}' => self.push(Value::Dict(Vec::new()))?,        // EMPTY_DICT
                b']' => self.push(Value::List(Vec::new()))?,        // EMPTY_LIST
                b')' => self.push(Value::Tuple(Vec::new()))?,       // EMPTY_TUPLE
                b't' => { let v = self.pop_mark()?; self.admit_all(&v)?; self.push(Value::Tuple(v))?; } // TUPLE
                0x85..=0x87 => {                                  // TUPLE1..3
                    let n = (op - 0x84) as usize;
                    if self.stack.len() < n { return Err(self.err("stack underflow")); }
                    let v = self.stack.split_off(self.stack.len() - n);
                    self.admit_all(&v)?;
                    self.push(Value::Tuple(v))?;
                }
                b'q' => { let i = self.u8()? as u32; self.memo_put(i)?; }            // BINPUT
                b'r' => { let i = self.u32()?; self.memo_put(i)?; }                  // LONG_BINPUT
                0x94 => { let i = self.memo.len() as u32; self.memo_put(i)?; }       // MEMOIZE
                b'h' | b'j' => {                                         // BINGET, LONG_BINGET
                    let i = if op == b'h' { self.u8()? as u32 } else { self.u32()? };
                    let v = self.memo.get(&i).cloned().ok_or_else(|| self.err(format!("memo entry {i} missing")))?;
                    self.admit(&v, true)?;
                    self.push(v)?;
                }
                b'X' => { let n = self.u32()? as usize; let s = self.string(n)?; self.push(s)?; } // BINUNICODE
                0x8c => { let n = self.u8()? as usize; let s = self.string(n)?; self.push(s)?; }  // SHORT_BINUNICODE
                b'J' => { let v = self.u32()? as i32; self.push(Value::Int(v as i64))?; }       // BININT
                b'K' => { let v = self.u8()?; self.push(Value::Int(v as i64))?; }               // BININT1
                b'M' => { let v = self.u16()?; self.push(Value::Int(v as i64))?; }              // BININT2
                0x8a => {                                                // LONG1
                    let n = self.u8()? as usize;
                    if n > 8 { return Err(self.err("integer too large")); }
                    let b = self.take(n)?;
                    let mut v: i64 = 0;
                    for (i, &byte) in b.iter().enumerate() { v |= (byte as i64) << (8 * i); }
                    if n > 0 && n < 8 && b[n - 1] & 0x80 != 0 { v -= 1i64 << (8 * n); }
                    self.push(Value::Int(v))?;
                }
                b'G' => { let b = self.take(8)?; self.push(Value::Float(f64::from_be_bytes(b.try_into().expect("8 bytes"))))?; } // BINFLOAT
                b'N' => self.push(Value::None)?,
                0x88 => self.push(Value::Bool(true))?,
                0x89 => self.push(Value::Bool(false))?,
                b'c' => {                                                // GLOBAL
                    let module = self.line()?;
                    let name = self.line()?;
                    self.global(module, name)?;
                }
                0x93 => {                                                // STACK_GLOBAL
                    let name = self.pop()?;
                    let module = self.pop()?;
                    match (module, name) {
                        (Value::Str(m), Value::Str(n)) => self.global(m, n)?,
                        _ => return Err(self.err("STACK_GLOBAL needs two strings")),
                    }
                }
                b'Q' => {                                                // BINPERSID
                    let pid = self.pop()?;
                    let v = self.persistent_load(pid)?;
                    self.push(v)?;
                }
                b'R' => {                                                // REDUCE
                    let args = self.pop()?;
                    let func = self.pop()?;
                    let v = self.reduce(func, args)?;
                    self.push(v)?;
                }
                b'b' => { self.pop()?; }                                 // BUILD: state of an OrderedDict (metadata), ignored
                b's' => {                                                // SETITEM
                    let v = self.pop()?;
                    let k = self.pop()?;
                    self.admit(&k, false)?;
                    self.admit(&v, false)?;
                    match self.top()? { Value::Dict(d) => d.push((k, v)), _ => return Err(self.err("SETITEM on a non-dict")) }
                }
                b'u' => {                                                // SETITEMS
                    let items = self.pop_mark()?;
                    self.admit_all(&items)?;
                    let pos = self.pos;
                    match self.top()? {
                        Value::Dict(d) => {
                            let mut it = items.into_iter();
                            while let (Some(k), Some(v)) = (it.next(), it.next()) { d.push((k, v)); }
                        }
                        _ => return Err(Error::Invalid(format!("pickle SETITEMS on a non-dict at byte {pos}"))),
                    }
                }
                b'a' => { let v = self.pop()?; self.admit(&v, false)?; match self.top()? { Value::List(l) => l.push(v), _ => return Err(self.err("APPEND on a non-list")) } }
                b'e' => { let items = self.pop_mark()?; self.admit_all(&items)?; match self.top()? { Value::List(l) => l.extend(items), _ => return Err(self.err("APPENDS on a non-list")) } }
                other => {
                    return Err(self.err(format!(
                        "opcode 0x{other:02x} is not allowed: igpt reads only plain state dicts of tensors and never executes pickled code; convert the file to model.safetensors"
                    )))
                }
            }
        }
    }

    fn global(&mut self, module: String, name: String) -> Result<()> {
        if ALLOWED_GLOBALS.contains(&(module.as_str(), name.as_str())) || storage_dtype(&module, &name).is_some() {
            self.push(Value::Global(module, name))
        } else {
            Err(self.err(format!(
                "refusing to load global `{module}.{name}`: only state dicts of tensors are accepted (no code is ever executed); convert the file to model.safetensors"
            )))
        }
    }

    fn persistent_load(&self, pid: Value) -> Result<Value> {
        // ('storage', <storage type>, key, location, numel)
        if let Value::Tuple(items) = pid
            && let [Value::Str(tag), Value::Global(m, n), Value::Str(key), ..] = items.as_slice()
            && tag == "storage"
            && let Some(dtype) = storage_dtype(m, n)
        {
            return Ok(Value::Storage { key: key.clone(), dtype });
        }
        Err(self.err("unsupported persistent id (expected a torch storage)"))
    }

    fn reduce(&self, func: Value, args: Value) -> Result<Value> {
        let Value::Global(m, n) = func else {
            return Err(self.err("REDUCE on a non-callable"));
        };
        let Value::Tuple(args) = args else {
            return Err(self.err("REDUCE arguments are not a tuple"));
        };
        let ints = |v: &Value| -> Option<Vec<usize>> {
            match v {
                Value::Tuple(xs) => {
                    xs.iter().map(|x| if let Value::Int(i) = x { usize::try_from(*i).ok() } else { None }).collect()
                }
                _ => None,
            }
        };
        match (m.as_str(), n.as_str()) {
            ("collections", "OrderedDict") => Ok(Value::Dict(Vec::new())),
            ("torch._utils", "_rebuild_tensor_v2") => {
                // (storage, storage_offset, size, stride, requires_grad, backward_hooks[, metadata])
                if let [Value::Storage { key, dtype }, Value::Int(offset), size, stride, ..] = args.as_slice()
                    && let (Some(shape), Some(stride)) = (ints(size), ints(stride))
                    && *offset >= 0
                {
                    return Ok(Value::Tensor {
                        key: key.clone(),
                        dtype: *dtype,
                        offset: *offset as usize,
                        shape,
                        stride,
                    });
                }
                Err(self.err("malformed _rebuild_tensor_v2 arguments"))
            }
            ("torch._utils", "_rebuild_parameter") => {
                args.into_iter().next().ok_or_else(|| self.err("_rebuild_parameter without data"))
            }
            _ => Err(self.err(format!("`{m}.{n}` cannot be called"))),
        }
    }
}

fn dtype_size(d: Dtype) -> usize {
    match d {
        Dtype::F64 | Dtype::I64 => 8,
        Dtype::F32 | Dtype::I32 => 4,
        Dtype::F16 | Dtype::BF16 => 2,
        _ => 1,
    }
}

/// Reads at most `limit` bytes of a zip entry; more is an error (a zip bomb).
fn read_entry<R: Read>(entry: R, limit: u64, path: &Path, what: &str) -> Result<Vec<u8>> {
    let mut buf = Vec::new();
    entry.take(limit + 1).read_to_end(&mut buf).map_err(|e| Error::format(path, format!("{what}: {e}")))?;
    if buf.len() as u64 > limit {
        return Err(Error::format(
            path,
            format!(
                "{what} inflates to more than {limit} bytes (a zip bomb?); re-save the model with torch.save or as safetensors"
            ),
        ));
    }
    Ok(buf)
}

/// The bytes of a tensor's storage that its view reaches: (offset + sum (size - 1) * stride + 1)
/// elements, checked; None when the sizes overflow.
fn reach(offset: usize, shape: &[usize], stride: &[usize], es: usize) -> Option<u64> {
    if shape.contains(&0) {
        return Some(0);
    }
    let mut last = offset as u64;
    for (&n, &s) in shape.iter().zip(stride) {
        last = last.checked_add((n as u64 - 1).checked_mul(s as u64)?)?;
    }
    last.checked_add(1)?.checked_mul(es as u64)
}

/// Reads every floating tensor of a `torch.save` zip checkpoint. Integer/bool tensors
/// (buffers) are skipped. What is inflated is bounded: data.pkl by [`MAX_PICKLE_BYTES`],
/// all storages together by 16 times the file's size (torch.save stores them uncompressed),
/// and no tensor has more elements than the storage bytes its view reaches.
pub fn read_torch_file(path: &Path) -> Result<Vec<(String, Tensor)>> {
    let file = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
    let file_len = file.metadata().map_err(|e| Error::io(path, e))?.len();
    let mut zip = zip::ZipArchive::new(file).map_err(|e| {
        Error::format(path, format!("not a torch.save zip archive ({e}); legacy (pre-1.6) torch files are not supported, re-save with a recent torch or as safetensors"))
    })?;
    let pkl_name = zip
        .file_names()
        .filter_map(|n| n.ok().map(|n| n.to_string()))
        .find(|n| n.ends_with("data.pkl"))
        .ok_or_else(|| Error::format(path, "no data.pkl in the archive"))?;
    let stem = pkl_name.trim_end_matches("data.pkl").to_string();
    let entry = zip.by_name(&pkl_name).map_err(|e| Error::format(path, e.to_string()))?;
    // torch.save stores entries uncompressed: a data.pkl that inflates far past its
    // compressed size is a bomb
    let limit = MAX_PICKLE_BYTES.min(entry.compressed_size().saturating_mul(16).max(1 << 20));
    let pkl = read_entry(entry, limit, path, "data.pkl")?;

    let mut m = Machine { data: &pkl, pos: 0, stack: Vec::new(), memo: HashMap::new(), path, copy_budget: MAX_COPIED };
    let root = m.run()?;
    drop(m);
    let Value::Dict(items) = root else {
        return Err(Error::format(path, "the pickle is not a state dict (a dict of tensors)"));
    };
    let mut budget = file_len.saturating_mul(16).saturating_add(1 << 20);
    let mut storages: HashMap<String, Vec<u8>> = HashMap::new();
    let mut out = Vec::new();
    for (k, v) in items {
        let (Value::Str(name), Value::Tensor { key, dtype, offset, shape, stride }) = (k, v) else {
            continue; // non-tensor entries (e.g. metadata) are not weights
        };
        if !matches!(dtype, Dtype::F32 | Dtype::F64 | Dtype::F16 | Dtype::BF16) {
            continue;
        }
        let es = dtype_size(dtype);
        let corrupt = |why: &str| Error::format(path, format!("tensor `{name}` {why}; the file is corrupt"));
        if stride.len() != shape.len() {
            return Err(corrupt("has a stride of another rank than its shape"));
        }
        let need = reach(offset, &shape, &stride, es).ok_or_else(|| corrupt("has sizes that overflow"))?;
        let n = shape
            .iter()
            .try_fold(1u64, |a, &d| a.checked_mul(d as u64))
            .ok_or_else(|| corrupt("has sizes that overflow"))?;
        if n.saturating_mul(es as u64) > need {
            return Err(corrupt("has overlapping strides (more elements than the storage it reads)"));
        }
        if storages.get(&key).is_none_or(|b| (b.len() as u64) < need) {
            let what = format!("storage {key} of `{name}`");
            let entry =
                zip.by_name(&format!("{stem}data/{key}")).map_err(|e| Error::format(path, format!("{what}: {e}")))?;
            if need > budget {
                return Err(Error::format(
                    path,
                    format!(
                        "{what} needs {need} bytes, more than 16 times the file's size allows (a zip bomb?); re-save with torch.save or as safetensors"
                    ),
                ));
            }
            let buf = read_entry(entry.take(need), need, path, &what)?;
            budget -= need.min(budget);
            storages.insert(key.clone(), buf);
        }
        let raw = &storages[&key];
        if (raw.len() as u64) < need {
            return Err(corrupt("reads past its storage"));
        }
        // Gather the strided view into a contiguous row-major buffer.
        let n = n as usize;
        let mut bytes = Vec::with_capacity(n * es);
        let mut idx = vec![0usize; shape.len()];
        for _ in 0..n {
            let el = offset + idx.iter().zip(&stride).map(|(i, s)| i * s).sum::<usize>();
            bytes.extend_from_slice(&raw[el * es..(el + 1) * es]);
            for d in (0..shape.len()).rev() {
                idx[d] += 1;
                if idx[d] < shape[d] {
                    break;
                }
                idx[d] = 0;
            }
        }
        let data = bytes_to_f32(&bytes, dtype, path, &name)?;
        out.push((name, Tensor { shape, data }));
    }
    Ok(out)
}
