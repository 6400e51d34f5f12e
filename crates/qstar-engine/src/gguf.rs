//! Reading GGUF files: metadata, tensor layout and raw tensor bytes.
//!
//! The header is parsed here, defensively: a GGUF file is untrusted input, so
//! every length, count, offset and dimension read from it is checked against
//! the bytes that are really there before anything is allocated from it, and
//! all arithmetic on them is checked. A bad file is an error that says what is
//! wrong; it never panics, wraps around or allocates more than the file could
//! describe. Dequantization of tensor data is candle's.

use std::collections::HashMap;
use std::fs::File;
use std::io::{BufReader, Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use candle_core::quantized::{GgmlDType, QTensor};

use crate::error::EngineError;

/// Alignment of the tensor data when `general.alignment` is absent.
const DEFAULT_ALIGNMENT: u64 = 32;
/// GGUF keys are at most 65535 bytes long (the format's own limit).
const MAX_KEY_BYTES: u64 = 65_535;
/// ggml tensors have at most four dimensions.
const MAX_DIMS: u32 = 4;
/// Arrays of arrays deeper than this are not metadata any model uses.
const MAX_ARRAY_DEPTH: usize = 4;

/// A metadata value as stored in the file.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    U8(u8),
    I8(i8),
    U16(u16),
    I16(i16),
    U32(u32),
    I32(i32),
    U64(u64),
    I64(i64),
    F32(f32),
    F64(f64),
    Bool(bool),
    String(String),
    Array(Vec<Value>),
}

/// Where one tensor lives in the file and what it holds.
#[derive(Debug, Clone)]
pub struct TensorInfo {
    pub dtype: GgmlDType,
    /// Dimensions outermost first (rows, then columns).
    pub dims: Vec<usize>,
    /// Absolute byte offset of the tensor's data in the file.
    pub start: u64,
    /// Size of the tensor's data in bytes.
    pub bytes: u64,
}

pub struct GgufFile {
    path: PathBuf,
    file_len: u64,
    version: u32,
    metadata: HashMap<String, Value>,
    tensors: HashMap<String, TensorInfo>,
}

/// The ggml type ids candle can dequantize.
fn dtype_from_id(id: u32) -> Option<GgmlDType> {
    Some(match id {
        0 => GgmlDType::F32,
        1 => GgmlDType::F16,
        2 => GgmlDType::Q4_0,
        3 => GgmlDType::Q4_1,
        6 => GgmlDType::Q5_0,
        7 => GgmlDType::Q5_1,
        8 => GgmlDType::Q8_0,
        9 => GgmlDType::Q8_1,
        10 => GgmlDType::Q2K,
        11 => GgmlDType::Q3K,
        12 => GgmlDType::Q4K,
        13 => GgmlDType::Q5K,
        14 => GgmlDType::Q6K,
        15 => GgmlDType::Q8K,
        30 => GgmlDType::BF16,
        _ => return None,
    })
}

/// A reader of the header that knows how many bytes the file has left, so a
/// declared length is checked before it sizes anything.
struct HeaderReader<R> {
    inner: R,
    pos: u64,
    len: u64,
    /// Width of lengths and counts: 4 bytes in GGUF v1, 8 later.
    wide: bool,
}

/// Why the header cannot be read; the caller adds the path.
type HeaderResult<T> = Result<T, String>;

impl<R: Read> HeaderReader<R> {
    fn remaining(&self) -> u64 {
        self.len.saturating_sub(self.pos)
    }

    fn bytes<const N: usize>(&mut self, what: &str) -> HeaderResult<[u8; N]> {
        let mut buf = [0u8; N];
        if self.remaining() < N as u64 {
            return Err(format!(
                "the file ends at byte {} inside the header, while reading {what}",
                self.len
            ));
        }
        self.inner
            .read_exact(&mut buf)
            .map_err(|e| format!("cannot read {what} at byte {}: {e}", self.pos))?;
        self.pos += N as u64;
        Ok(buf)
    }

    fn u8(&mut self, what: &str) -> HeaderResult<u8> {
        Ok(self.bytes::<1>(what)?[0])
    }

    fn u32(&mut self, what: &str) -> HeaderResult<u32> {
        Ok(u32::from_le_bytes(self.bytes(what)?))
    }

    fn u64(&mut self, what: &str) -> HeaderResult<u64> {
        Ok(u64::from_le_bytes(self.bytes(what)?))
    }

    /// A length or count (u32 in v1, u64 since v2).
    fn length(&mut self, what: &str) -> HeaderResult<u64> {
        if self.wide {
            self.u64(what)
        } else {
            Ok(self.u32(what)? as u64)
        }
    }

    fn length_bytes(&self) -> u64 {
        if self.wide {
            8
        } else {
            4
        }
    }

    /// Checks that `count` items of at least `each` bytes fit in what is left.
    fn check_fits(&self, count: u64, each: u64, what: &str) -> HeaderResult<()> {
        let needed = count.saturating_mul(each);
        if needed > self.remaining() {
            return Err(format!(
                "{what} declares {count} entries, which need at least {needed} bytes, \
                 but only {} bytes remain",
                self.remaining()
            ));
        }
        Ok(())
    }

    fn string(&mut self, what: &str, max: u64) -> HeaderResult<String> {
        let len = self.length(what)?;
        if len > max {
            return Err(format!(
                "{what} is {len} bytes long (at most {max} allowed)"
            ));
        }
        if len > self.remaining() {
            return Err(format!(
                "{what} is {len} bytes long but only {} bytes remain in the file",
                self.remaining()
            ));
        }
        // `len` fits in the file, so it fits in memory's address space.
        let mut buf = vec![0u8; len as usize];
        self.inner
            .read_exact(&mut buf)
            .map_err(|e| format!("cannot read {what} at byte {}: {e}", self.pos))?;
        self.pos += len;
        // Some writers NUL-terminate strings; the NULs are not part of them.
        while buf.last() == Some(&0) {
            buf.pop();
        }
        Ok(String::from_utf8_lossy(&buf).into_owned())
    }

    /// Smallest encoding of one value of a type, to bound array lengths.
    fn min_size(&self, ty: u32) -> u64 {
        match ty {
            0 | 1 | 7 => 1,
            2 | 3 => 2,
            4..=6 => 4,
            8 => self.length_bytes(),
            9 => 4 + self.length_bytes(),
            _ => 8,
        }
    }

    fn value(&mut self, ty: u32, key: &str, depth: usize) -> HeaderResult<Value> {
        Ok(match ty {
            0 => Value::U8(self.u8(key)?),
            1 => Value::I8(self.u8(key)? as i8),
            2 => Value::U16(u16::from_le_bytes(self.bytes(key)?)),
            3 => Value::I16(i16::from_le_bytes(self.bytes(key)?)),
            4 => Value::U32(self.u32(key)?),
            5 => Value::I32(self.u32(key)? as i32),
            6 => Value::F32(f32::from_le_bytes(self.bytes(key)?)),
            7 => match self.u8(key)? {
                0 => Value::Bool(false),
                1 => Value::Bool(true),
                b => return Err(format!("`{key}` is a boolean stored as {b} (not 0 or 1)")),
            },
            8 => Value::String(self.string(&format!("the value of `{key}`"), u64::MAX)?),
            9 => {
                if depth >= MAX_ARRAY_DEPTH {
                    return Err(format!(
                        "`{key}` nests arrays deeper than {MAX_ARRAY_DEPTH}"
                    ));
                }
                let elem = self.u32(key)?;
                if elem > 12 {
                    return Err(format!("`{key}` is an array of unknown type {elem}"));
                }
                let count = self.length(key)?;
                self.check_fits(count, self.min_size(elem), &format!("array `{key}`"))?;
                // Grows as elements are really read: the count alone never
                // sizes an allocation.
                let mut items = Vec::new();
                for _ in 0..count {
                    items.push(self.value(elem, key, depth + 1)?);
                }
                Value::Array(items)
            }
            10 => Value::U64(self.u64(key)?),
            11 => Value::I64(self.u64(key)? as i64),
            12 => Value::F64(f64::from_le_bytes(self.bytes(key)?)),
            _ => return Err(format!("`{key}` has unknown value type {ty}")),
        })
    }
}

/// Version, metadata and tensor table of a file.
type Header = (u32, HashMap<String, Value>, HashMap<String, TensorInfo>);

/// Reads the header of a GGUF file of `len` bytes whose magic is already
/// checked; returns the version, metadata and tensor table.
fn read_header<R: Read>(inner: R, len: u64) -> HeaderResult<Header> {
    let mut r = HeaderReader {
        inner,
        pos: 0,
        len,
        wide: true,
    };
    r.bytes::<4>("the magic bytes")?;
    let version = r.u32("the version")?;
    if !(1..=3).contains(&version) {
        return Err(format!(
            "GGUF version {version} is not supported (1 to 3 are)"
        ));
    }
    r.wide = version >= 2;
    let tensor_count = r.length("the tensor count")?;
    let kv_count = r.length("the metadata count")?;
    let lb = r.length_bytes();
    // A key-value pair takes at least a key length, a type and one byte; a
    // tensor entry a name length, a dimension count, a type and an offset.
    r.check_fits(kv_count, lb + 4 + 1, "the metadata table")?;
    let left = r.remaining() - kv_count * (lb + 4 + 1);
    if tensor_count.saturating_mul(lb + 4 + 4 + 8) > left {
        return Err(format!(
            "the tensor table declares {tensor_count} tensors, more than the file could hold"
        ));
    }

    let mut metadata = HashMap::new();
    for i in 0..kv_count {
        let key = r.string(&format!("metadata key {i}"), MAX_KEY_BYTES)?;
        let ty = r.u32(&key)?;
        let value = r.value(ty, &key, 0)?;
        if metadata.insert(key.clone(), value).is_some() {
            return Err(format!("metadata key `{key}` appears twice"));
        }
    }

    let alignment = match metadata.get("general.alignment") {
        None => DEFAULT_ALIGNMENT,
        Some(Value::U32(a)) => *a as u64,
        Some(Value::U64(a)) => *a,
        Some(Value::U16(a)) => *a as u64,
        Some(Value::U8(a)) => *a as u64,
        Some(other) => {
            return Err(format!(
                "`general.alignment` must be an unsigned integer, found {other:?}"
            ))
        }
    };
    if alignment == 0 || !alignment.is_power_of_two() {
        return Err(format!(
            "`general.alignment` is {alignment}; it must be a power of two"
        ));
    }

    let mut entries = Vec::new();
    let mut names = std::collections::HashSet::new();
    for i in 0..tensor_count {
        let name = r.string(&format!("the name of tensor {i}"), MAX_KEY_BYTES)?;
        if !names.insert(name.clone()) {
            return Err(format!("tensor `{name}` appears twice"));
        }
        let n_dims = r.u32(&name)?;
        if n_dims == 0 || n_dims > MAX_DIMS {
            return Err(format!(
                "tensor `{name}` has {n_dims} dimensions (1 to {MAX_DIMS} allowed)"
            ));
        }
        // Stored innermost first; kept outermost first.
        let mut dims = Vec::with_capacity(n_dims as usize);
        for _ in 0..n_dims {
            let d = r.length(&name)?;
            dims.push(usize::try_from(d).map_err(|_| {
                format!("tensor `{name}` has dimension {d}, too large for this machine")
            })?);
        }
        dims.reverse();
        let type_id = r.u32(&name)?;
        let dtype = dtype_from_id(type_id)
            .ok_or_else(|| format!("tensor `{name}` has unsupported ggml type {type_id}"))?;
        let offset = r.u64(&name)?;
        entries.push((name, dtype, dims, offset));
    }

    let data_start = r
        .pos
        .checked_next_multiple_of(alignment)
        .ok_or("the tensor data would start beyond the largest file size")?;
    let mut tensors = HashMap::with_capacity(entries.len());
    for (name, dtype, dims, offset) in entries {
        let bytes = tensor_size(&name, dtype, &dims)?;
        if offset % alignment != 0 {
            return Err(format!(
                "tensor `{name}` starts at data offset {offset}, not a multiple of the \
                 alignment {alignment}"
            ));
        }
        let start = data_start.checked_add(offset);
        let end = start.and_then(|s| s.checked_add(bytes));
        match (start, end) {
            (Some(start), Some(end)) if end <= len => {
                tensors.insert(
                    name,
                    TensorInfo {
                        dtype,
                        dims,
                        start,
                        bytes,
                    },
                );
            }
            _ => {
                return Err(format!(
                    "tensor `{name}` ({bytes} bytes at data offset {offset}) ends beyond the \
                     end of the file ({len} bytes); the file may be truncated"
                ))
            }
        }
    }
    Ok((version, metadata, tensors))
}

/// Bytes of a tensor's data, with every product checked.
fn tensor_size(name: &str, dtype: GgmlDType, dims: &[usize]) -> HeaderResult<u64> {
    let block = dtype.block_size();
    let inner = dims.last().copied().unwrap_or(1);
    if !inner.is_multiple_of(block) {
        return Err(format!(
            "tensor `{name}` has rows of {inner} values, not a whole number of \
             {block}-value {dtype:?} blocks"
        ));
    }
    let too_big = || format!("tensor `{name}` has dimensions {dims:?}, too many values");
    let elems = dims
        .iter()
        .try_fold(1u64, |acc, &d| acc.checked_mul(d as u64))
        .ok_or_else(too_big)?;
    (elems / block as u64)
        .checked_mul(dtype.type_size() as u64)
        .ok_or_else(too_big)
}

impl GgufFile {
    /// Opens and validates a GGUF file: the header parses within the file's
    /// bounds and every tensor's data lies inside the file.
    pub fn open(path: &Path) -> Result<Self, EngineError> {
        let io_err = |source| EngineError::Io {
            path: path.to_path_buf(),
            source,
        };
        if !path.exists() {
            return Err(EngineError::NotFound(path.to_path_buf()));
        }
        let mut file = File::open(path).map_err(io_err)?;
        let file_len = file.metadata().map_err(io_err)?.len();
        let mut magic = [0u8; 4];
        if file.read_exact(&mut magic).is_err() || &magic != b"GGUF" {
            return Err(EngineError::NotGguf {
                path: path.to_path_buf(),
                reason: "it does not start with the GGUF magic bytes".into(),
            });
        }
        file.seek(SeekFrom::Start(0)).map_err(io_err)?;
        let (version, metadata, tensors) =
            read_header(BufReader::new(file), file_len).map_err(|reason| {
                EngineError::Malformed {
                    path: path.to_path_buf(),
                    reason,
                }
            })?;
        Ok(GgufFile {
            path: path.to_path_buf(),
            file_len,
            version,
            metadata,
            tensors,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn file_len(&self) -> u64 {
        self.file_len
    }

    pub fn version(&self) -> u32 {
        self.version
    }

    pub fn metadata(&self) -> &HashMap<String, Value> {
        &self.metadata
    }

    fn get(&self, key: &str) -> Result<&Value, EngineError> {
        self.metadata
            .get(key)
            .ok_or_else(|| EngineError::Metadata(format!("missing key `{key}`")))
    }

    pub fn has(&self, key: &str) -> bool {
        self.metadata.contains_key(key)
    }

    pub fn string(&self, key: &str) -> Result<String, EngineError> {
        match self.get(key)? {
            Value::String(s) => Ok(s.clone()),
            _ => Err(EngineError::Metadata(format!("`{key}` is not a string"))),
        }
    }

    /// Any integer type, as GGUF writers differ in which they use.
    pub fn uint(&self, key: &str) -> Result<u64, EngineError> {
        let n = match self.get(key)? {
            Value::U8(x) => Some(*x as u64),
            Value::U16(x) => Some(*x as u64),
            Value::U32(x) => Some(*x as u64),
            Value::U64(x) => Some(*x),
            Value::I8(x) => u64::try_from(*x).ok(),
            Value::I16(x) => u64::try_from(*x).ok(),
            Value::I32(x) => u64::try_from(*x).ok(),
            Value::I64(x) => u64::try_from(*x).ok(),
            _ => None,
        };
        n.ok_or_else(|| EngineError::Metadata(format!("`{key}` is not a non-negative integer")))
    }

    /// An unsigned integer that must also fit `usize`.
    pub fn usize(&self, key: &str) -> Result<usize, EngineError> {
        let v = self.uint(key)?;
        usize::try_from(v).map_err(|_| EngineError::Metadata(format!("`{key}` = {v} is too large")))
    }

    pub fn float(&self, key: &str) -> Result<f64, EngineError> {
        match self.get(key)? {
            Value::F32(x) => Ok(*x as f64),
            Value::F64(x) => Ok(*x),
            _ => Ok(self.uint(key)? as f64),
        }
    }

    pub fn bool_or(&self, key: &str, default: bool) -> bool {
        match self.metadata.get(key) {
            Some(Value::Bool(b)) => *b,
            _ => default,
        }
    }

    fn array(&self, key: &str) -> Result<&Vec<Value>, EngineError> {
        match self.get(key)? {
            Value::Array(a) => Ok(a),
            _ => Err(EngineError::Metadata(format!("`{key}` is not an array"))),
        }
    }

    pub fn string_array(&self, key: &str) -> Result<Vec<String>, EngineError> {
        self.array(key)?
            .iter()
            .map(|v| match v {
                Value::String(s) => Ok(s.clone()),
                _ => Err(EngineError::Metadata(format!("`{key}` holds a non-string"))),
            })
            .collect()
    }

    pub fn int_array(&self, key: &str) -> Result<Vec<i64>, EngineError> {
        self.array(key)?
            .iter()
            .map(|v| match v {
                Value::I32(x) => Ok(*x as i64),
                Value::U32(x) => Ok(*x as i64),
                Value::I8(x) => Ok(*x as i64),
                Value::U8(x) => Ok(*x as i64),
                Value::I16(x) => Ok(*x as i64),
                Value::U16(x) => Ok(*x as i64),
                Value::I64(x) => Ok(*x),
                _ => Err(EngineError::Metadata(format!(
                    "`{key}` holds a non-integer"
                ))),
            })
            .collect()
    }

    pub fn tensor_names(&self) -> impl Iterator<Item = &String> {
        self.tensors.keys()
    }

    /// The tensor's type and dimensions, outermost first (rows, then columns).
    pub fn tensor_info(&self, name: &str) -> Option<(GgmlDType, Vec<usize>)> {
        self.tensors.get(name).map(|i| (i.dtype, i.dims.clone()))
    }

    /// Where the tensor lives in the file.
    pub fn tensor_layout(&self, name: &str) -> Option<&TensorInfo> {
        self.tensors.get(name)
    }

    /// The tensor's bytes exactly as stored.
    pub fn tensor_bytes(&self, name: &str) -> Result<Vec<u8>, EngineError> {
        let info = self
            .tensors
            .get(name)
            .ok_or_else(|| EngineError::Metadata(format!("missing tensor `{name}`")))?;
        let io_err = |source| EngineError::Io {
            path: self.path.clone(),
            source,
        };
        // Checked at open: the data lies inside the file, so its size fits
        // the address space of any machine that can map the file.
        let len = usize::try_from(info.bytes).map_err(|_| {
            EngineError::Metadata(format!("tensor `{name}` is too large for this machine"))
        })?;
        let mut file = File::open(&self.path).map_err(io_err)?;
        file.seek(SeekFrom::Start(info.start)).map_err(io_err)?;
        let mut buf = vec![0u8; len];
        file.read_exact(&mut buf).map_err(io_err)?;
        Ok(buf)
    }

    /// The tensor dequantized to f32, for any type candle knows.
    pub fn tensor_f32(&self, name: &str) -> Result<Vec<f32>, EngineError> {
        let (dtype, dims) = self
            .tensor_info(name)
            .ok_or_else(|| EngineError::Metadata(format!("missing tensor `{name}`")))?;
        let bytes = self.tensor_bytes(name)?;
        let meta_err = |e: candle_core::Error| EngineError::Metadata(format!("`{name}`: {e}"));
        let storage = candle_core::quantized::QStorage::from_data(
            std::borrow::Cow::Owned(bytes),
            &candle_core::Device::Cpu,
            dtype,
        )
        .map_err(meta_err)?;
        let tensor = QTensor::new(storage, dims).map_err(meta_err)?;
        tensor
            .dequantize(&candle_core::Device::Cpu)
            .and_then(|t| t.flatten_all())
            .and_then(|t| t.to_vec1::<f32>())
            .map_err(meta_err)
    }
}
