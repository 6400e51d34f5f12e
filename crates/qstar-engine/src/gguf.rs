//! Reading GGUF files: metadata, tensor layout and raw tensor bytes.
//!
//! Parsing is candle's; this module adds the checks a user needs to see as
//! clear errors (missing file, not GGUF, truncated data) before any tensor is
//! touched.

use std::collections::HashMap;
use std::fs::File;
use std::io::{BufReader, Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use candle_core::quantized::gguf_file::{Content, Value};
use candle_core::quantized::{GgmlDType, QTensor};

use crate::error::EngineError;

pub struct GgufFile {
    path: PathBuf,
    content: Content,
    file_len: u64,
}

impl GgufFile {
    /// Opens and validates a GGUF file: the header parses and every tensor's
    /// data lies inside the file.
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
        let mut reader = BufReader::new(file);
        let content = Content::read(&mut reader).map_err(|e| EngineError::NotGguf {
            path: path.to_path_buf(),
            reason: format!("its header cannot be read ({e}); the file may be truncated"),
        })?;
        let gguf = GgufFile {
            path: path.to_path_buf(),
            content,
            file_len,
        };
        gguf.check_extents()?;
        Ok(gguf)
    }

    fn check_extents(&self) -> Result<(), EngineError> {
        for (name, info) in &self.content.tensor_infos {
            let end = self.content.tensor_data_offset + info.offset + tensor_bytes(info)? as u64;
            if end > self.file_len {
                return Err(EngineError::Truncated {
                    path: self.path.clone(),
                    tensor: name.clone(),
                    needed: end,
                    actual: self.file_len,
                });
            }
        }
        Ok(())
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn file_len(&self) -> u64 {
        self.file_len
    }

    pub fn metadata(&self) -> &HashMap<String, Value> {
        &self.content.metadata
    }

    fn get(&self, key: &str) -> Result<&Value, EngineError> {
        self.content
            .metadata
            .get(key)
            .ok_or_else(|| EngineError::Metadata(format!("missing key `{key}`")))
    }

    pub fn has(&self, key: &str) -> bool {
        self.content.metadata.contains_key(key)
    }

    pub fn string(&self, key: &str) -> Result<String, EngineError> {
        self.get(key)?
            .to_string()
            .cloned()
            .map_err(|e| EngineError::Metadata(format!("`{key}`: {e}")))
    }

    /// Any integer type, as GGUF writers differ in which they use.
    pub fn uint(&self, key: &str) -> Result<u64, EngineError> {
        let v = self.get(key)?;
        let n = match v {
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

    pub fn float(&self, key: &str) -> Result<f64, EngineError> {
        match self.get(key)? {
            Value::F32(x) => Ok(*x as f64),
            Value::F64(x) => Ok(*x),
            _ => Ok(self.uint(key)? as f64),
        }
    }

    pub fn bool_or(&self, key: &str, default: bool) -> bool {
        match self.content.metadata.get(key) {
            Some(Value::Bool(b)) => *b,
            _ => default,
        }
    }

    fn array(&self, key: &str) -> Result<&Vec<Value>, EngineError> {
        self.get(key)?
            .to_vec()
            .map_err(|e| EngineError::Metadata(format!("`{key}`: {e}")))
    }

    pub fn string_array(&self, key: &str) -> Result<Vec<String>, EngineError> {
        self.array(key)?
            .iter()
            .map(|v| {
                v.to_string()
                    .cloned()
                    .map_err(|e| EngineError::Metadata(format!("`{key}`: {e}")))
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
                Value::I64(x) => Ok(*x),
                _ => Err(EngineError::Metadata(format!(
                    "`{key}` holds a non-integer"
                ))),
            })
            .collect()
    }

    pub fn tensor_names(&self) -> impl Iterator<Item = &String> {
        self.content.tensor_infos.keys()
    }

    /// The tensor's type and dimensions, outermost first (rows, then columns).
    pub fn tensor_info(&self, name: &str) -> Option<(GgmlDType, Vec<usize>)> {
        self.content
            .tensor_infos
            .get(name)
            .map(|i| (i.ggml_dtype, i.shape.dims().to_vec()))
    }

    /// The tensor's bytes exactly as stored.
    pub fn tensor_bytes(&self, name: &str) -> Result<Vec<u8>, EngineError> {
        let info = self
            .content
            .tensor_infos
            .get(name)
            .ok_or_else(|| EngineError::Metadata(format!("missing tensor `{name}`")))?;
        let len = tensor_bytes(info)?;
        let io_err = |source| EngineError::Io {
            path: self.path.clone(),
            source,
        };
        let mut file = File::open(&self.path).map_err(io_err)?;
        file.seek(SeekFrom::Start(
            self.content.tensor_data_offset + info.offset,
        ))
        .map_err(io_err)?;
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

fn tensor_bytes(
    info: &candle_core::quantized::gguf_file::TensorInfo,
) -> Result<usize, EngineError> {
    let elems = info.shape.elem_count();
    let block = info.ggml_dtype.block_size();
    if !elems.is_multiple_of(block) {
        return Err(EngineError::Metadata(format!(
            "tensor of {elems} elements is not a whole number of {block}-element blocks"
        )));
    }
    Ok(elems / block * info.ggml_dtype.type_size())
}
