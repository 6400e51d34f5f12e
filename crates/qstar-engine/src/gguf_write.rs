//! Writing GGUF v3 files, and the export of a model with a LoRA adapter
//! merged into its weights.
//!
//! The export copies every metadata key of the source (with
//! `general.file_type` set to what it writes), keeps the source's tensor
//! order and alignment, and re-encodes the tensors: matrices (projections,
//! embedding, output) in the chosen type, Q8_0 as llama.cpp's reference
//! quantizer rounds or F16, vectors (norms) in F32. An adapted projection is
//! dequantized to f32, gets scale · B · A added, and is encoded like the
//! rest. The file is written to a temporary name beside the target and
//! renamed when complete.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::Path;

use candle_core::quantized::GgmlDType;

use crate::adapter::{LoraAdapter, Projection};
use crate::error::EngineError;
use crate::gguf::{GgufFile, Value};
use crate::llama::LlamaConfig;

/// Alignment of tensor data when the source does not say.
const DEFAULT_ALIGNMENT: u64 = 32;

/// The storage type of an export's matrices.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExportType {
    Q8_0,
    F16,
}

impl ExportType {
    pub fn parse(text: &str) -> Option<ExportType> {
        match text.to_ascii_lowercase().as_str() {
            "q8_0" => Some(ExportType::Q8_0),
            "f16" => Some(ExportType::F16),
            _ => None,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            ExportType::Q8_0 => "q8_0",
            ExportType::F16 => "f16",
        }
    }

    /// llama.cpp's `general.file_type` (LLAMA_FTYPE_MOSTLY_…).
    pub fn file_type(self) -> u32 {
        match self {
            ExportType::Q8_0 => 7,
            ExportType::F16 => 1,
        }
    }

    fn dtype(self) -> GgmlDType {
        match self {
            ExportType::Q8_0 => GgmlDType::Q8_0,
            ExportType::F16 => GgmlDType::F16,
        }
    }
}

/// One tensor of a file to write: name, dimensions outermost first, type.
#[derive(Debug, Clone)]
pub struct TensorSpec {
    pub name: String,
    pub dims: Vec<usize>,
    pub dtype: GgmlDType,
}

/// ggml's id of the types this writer encodes.
fn type_id(dtype: GgmlDType) -> Option<u32> {
    Some(match dtype {
        GgmlDType::F32 => 0,
        GgmlDType::F16 => 1,
        GgmlDType::Q8_0 => 8,
        _ => return None,
    })
}

/// Bytes of a tensor of `dims` in `dtype`.
fn data_bytes(dtype: GgmlDType, dims: &[usize]) -> u64 {
    let elems: u64 = dims.iter().map(|&d| d as u64).product();
    elems / dtype.block_size() as u64 * dtype.type_size() as u64
}

/// Values per Q8_0 block.
const QK8_0: usize = 32;

/// Q8_0 blocks of `values` (a multiple of 32 long) as llama.cpp's reference
/// quantizer makes them: d = max|x| / 127 stored as f16, q = x · (1/d)
/// rounded half away from zero.
pub fn quantize_q8_0(values: &[f32]) -> Vec<u8> {
    let mut out = Vec::with_capacity(values.len() / QK8_0 * 34);
    for block in values.chunks_exact(QK8_0) {
        let amax = block.iter().fold(0f32, |m, v| m.max(v.abs()));
        let d = amax / 127.0;
        let id = if d != 0.0 { 1.0 / d } else { 0.0 };
        out.extend_from_slice(&half::f16::from_f32(d).to_le_bytes());
        out.extend(block.iter().map(|&v| ((v * id).round() as i8) as u8));
    }
    out
}

/// f16 (round to nearest even, as ggml converts) little-endian bytes.
pub fn encode_f16(values: &[f32]) -> Vec<u8> {
    values
        .iter()
        .flat_map(|&v| half::f16::from_f32(v).to_le_bytes())
        .collect()
}

pub fn encode_f32(values: &[f32]) -> Vec<u8> {
    values.iter().flat_map(|v| v.to_le_bytes()).collect()
}

/// Encodes f32 values as `dtype` (F32, F16 or Q8_0).
pub fn encode(dtype: GgmlDType, values: &[f32]) -> Option<Vec<u8>> {
    match dtype {
        GgmlDType::F32 => Some(encode_f32(values)),
        GgmlDType::F16 => Some(encode_f16(values)),
        GgmlDType::Q8_0 if values.len().is_multiple_of(QK8_0) => Some(quantize_q8_0(values)),
        _ => None,
    }
}

fn value_type(v: &Value) -> u32 {
    match v {
        Value::U8(_) => 0,
        Value::I8(_) => 1,
        Value::U16(_) => 2,
        Value::I16(_) => 3,
        Value::U32(_) => 4,
        Value::I32(_) => 5,
        Value::F32(_) => 6,
        Value::Bool(_) => 7,
        Value::String(_) => 8,
        Value::Array(_) => 9,
        Value::U64(_) => 10,
        Value::I64(_) => 11,
        Value::F64(_) => 12,
    }
}

fn put_string(out: &mut Vec<u8>, s: &str) {
    out.extend_from_slice(&(s.len() as u64).to_le_bytes());
    out.extend_from_slice(s.as_bytes());
}

fn put_value(out: &mut Vec<u8>, key: &str, v: &Value) -> Result<(), String> {
    match v {
        Value::U8(x) => out.push(*x),
        Value::I8(x) => out.push(*x as u8),
        Value::U16(x) => out.extend_from_slice(&x.to_le_bytes()),
        Value::I16(x) => out.extend_from_slice(&x.to_le_bytes()),
        Value::U32(x) => out.extend_from_slice(&x.to_le_bytes()),
        Value::I32(x) => out.extend_from_slice(&x.to_le_bytes()),
        Value::F32(x) => out.extend_from_slice(&x.to_le_bytes()),
        Value::Bool(x) => out.push(*x as u8),
        Value::String(s) => put_string(out, s),
        Value::U64(x) => out.extend_from_slice(&x.to_le_bytes()),
        Value::I64(x) => out.extend_from_slice(&x.to_le_bytes()),
        Value::F64(x) => out.extend_from_slice(&x.to_le_bytes()),
        Value::Array(items) => {
            // The reader keeps no element type for an empty array; any
            // type describes it.
            let elem = items.first().map_or(4, value_type);
            if items.iter().any(|i| value_type(i) != elem) {
                return Err(format!("`{key}` is an array of mixed types"));
            }
            out.extend_from_slice(&elem.to_le_bytes());
            out.extend_from_slice(&(items.len() as u64).to_le_bytes());
            for item in items {
                put_value(out, key, item)?;
            }
        }
    }
    Ok(())
}

/// The header of a GGUF v3 file up to (not including) the tensor data, and
/// each tensor's offset in the data section.
fn header(
    metadata: &[(String, Value)],
    tensors: &[TensorSpec],
    alignment: u64,
) -> Result<(Vec<u8>, Vec<u64>), String> {
    let mut out = Vec::new();
    out.extend_from_slice(b"GGUF");
    out.extend_from_slice(&3u32.to_le_bytes());
    out.extend_from_slice(&(tensors.len() as u64).to_le_bytes());
    out.extend_from_slice(&(metadata.len() as u64).to_le_bytes());
    for (key, value) in metadata {
        put_string(&mut out, key);
        out.extend_from_slice(&value_type(value).to_le_bytes());
        put_value(&mut out, key, value)?;
    }
    let mut offsets = Vec::with_capacity(tensors.len());
    let mut offset = 0u64;
    for t in tensors {
        let id = type_id(t.dtype)
            .ok_or_else(|| format!("`{}`: cannot write type {:?}", t.name, t.dtype))?;
        let inner = t.dims.last().copied().unwrap_or(1);
        if !inner.is_multiple_of(t.dtype.block_size()) {
            return Err(format!(
                "`{}` has rows of {inner} values, not whole {:?} blocks",
                t.name, t.dtype
            ));
        }
        put_string(&mut out, &t.name);
        out.extend_from_slice(&(t.dims.len() as u32).to_le_bytes());
        // Stored innermost first.
        for &d in t.dims.iter().rev() {
            out.extend_from_slice(&(d as u64).to_le_bytes());
        }
        out.extend_from_slice(&id.to_le_bytes());
        out.extend_from_slice(&offset.to_le_bytes());
        offsets.push(offset);
        offset = (offset + data_bytes(t.dtype, &t.dims)).next_multiple_of(alignment);
    }
    let padded = (out.len() as u64).next_multiple_of(alignment) as usize;
    out.resize(padded, 0);
    Ok((out, offsets))
}

/// Writes a GGUF v3 file atomically (a temporary file beside `path`, then a
/// rename). `data(i)` gives tensor i's bytes, called in order, so only one
/// tensor is in memory at a time.
pub fn write_gguf(
    path: &Path,
    metadata: &[(String, Value)],
    tensors: &[TensorSpec],
    alignment: u64,
    mut data: impl FnMut(usize) -> Result<Vec<u8>, EngineError>,
) -> Result<u64, EngineError> {
    if alignment == 0 || !alignment.is_power_of_two() {
        return Err(EngineError::Metadata(format!(
            "alignment {alignment} is not a power of two"
        )));
    }
    let (head, _) = header(metadata, tensors, alignment).map_err(EngineError::Metadata)?;
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(".partial");
    let tmp = path.with_file_name(name);
    let io = |p: &Path| {
        let path = p.to_path_buf();
        move |source| EngineError::Io { path, source }
    };
    let result = (|| {
        let mut w = BufWriter::new(File::create(&tmp).map_err(io(&tmp))?);
        w.write_all(&head).map_err(io(&tmp))?;
        let mut written = head.len() as u64;
        for (i, t) in tensors.iter().enumerate() {
            let bytes = data(i)?;
            let want = data_bytes(t.dtype, &t.dims);
            if bytes.len() as u64 != want {
                return Err(EngineError::Metadata(format!(
                    "`{}`: {} bytes of data, expected {want}",
                    t.name,
                    bytes.len()
                )));
            }
            w.write_all(&bytes).map_err(io(&tmp))?;
            written += want;
            let pad = written.next_multiple_of(alignment) - written;
            if i + 1 < tensors.len() {
                w.write_all(&vec![0u8; pad as usize]).map_err(io(&tmp))?;
                written += pad;
            }
        }
        let file = w.into_inner().map_err(|e| EngineError::Io {
            path: tmp.clone(),
            source: e.into_error(),
        })?;
        file.sync_all().map_err(io(&tmp))?;
        Ok(written)
    })();
    match result {
        Ok(written) => {
            std::fs::rename(&tmp, path).map_err(io(path))?;
            Ok(written)
        }
        Err(e) => {
            let _ = std::fs::remove_file(&tmp);
            Err(e)
        }
    }
}

/// What an export wrote.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ExportSummary {
    pub path: String,
    pub bytes: u64,
    pub tensors: usize,
    /// Projections with the adapter merged in.
    pub merged: usize,
    pub tensor_type: &'static str,
}

/// (layer, projection) of a GGUF tensor name such as `blk.3.attn_q.weight`.
fn projection_of(name: &str) -> Option<(usize, Projection)> {
    let rest = name.strip_prefix("blk.")?.strip_suffix(".weight")?;
    let (layer, proj) = rest.split_once('.')?;
    let p = Projection::ALL
        .into_iter()
        .find(|p| p.gguf_name() == proj)?;
    Some((layer.parse().ok()?, p))
}

/// Writes the model of `g` to `out` with the values `values(name)` gives
/// each tensor: the source's metadata (`general.file_type` set to the new
/// type), tensor order and alignment, matrices as `matrix_type` (F16 for a
/// Q8_0 matrix whose rows are not whole blocks), vectors as F32. Returns the
/// bytes written and the number of tensors.
pub fn rewrite_gguf(
    g: &GgufFile,
    out: &Path,
    matrix_type: GgmlDType,
    mut values: impl FnMut(&str) -> Result<Vec<f32>, EngineError>,
) -> Result<(u64, usize), EngineError> {
    let file_type: u32 = match matrix_type {
        GgmlDType::F32 => 0,
        GgmlDType::F16 => 1,
        GgmlDType::Q8_0 => 7,
        other => {
            return Err(EngineError::Metadata(format!(
                "cannot write {other:?} matrices"
            )))
        }
    };
    let alignment = if g.has("general.alignment") {
        g.uint("general.alignment")?
    } else {
        DEFAULT_ALIGNMENT
    };
    let mut metadata: Vec<(String, Value)> = g
        .metadata()
        .iter()
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    metadata.sort_by(|a, b| a.0.cmp(&b.0));
    match metadata.iter_mut().find(|(k, _)| k == "general.file_type") {
        Some((_, v)) => *v = Value::U32(file_type),
        None => metadata.push(("general.file_type".into(), Value::U32(file_type))),
    }
    let mut names: Vec<&String> = g.tensor_names().collect();
    names.sort_by_key(|n| g.tensor_layout(n).map_or(0, |l| l.start));
    let specs: Vec<TensorSpec> = names
        .iter()
        .map(|&name| {
            let (_, dims) = g
                .tensor_info(name)
                .ok_or_else(|| EngineError::Metadata(format!("missing tensor `{name}`")))?;
            let inner = dims.last().copied().unwrap_or(1);
            let dtype = if dims.len() < 2 {
                GgmlDType::F32
            } else if matrix_type == GgmlDType::Q8_0 && !inner.is_multiple_of(QK8_0) {
                GgmlDType::F16
            } else {
                matrix_type
            };
            Ok(TensorSpec {
                name: name.clone(),
                dims,
                dtype,
            })
        })
        .collect::<Result<_, EngineError>>()?;
    let bytes = write_gguf(out, &metadata, &specs, alignment, |i| {
        let spec = &specs[i];
        let values = values(&spec.name)?;
        encode(spec.dtype, &values)
            .ok_or_else(|| EngineError::Metadata(format!("cannot encode `{}`", spec.name)))
    })?;
    Ok((bytes, specs.len()))
}

/// Writes the model `source` to `out` with `adapter` (if any) merged into
/// its projections, matrices encoded as `ty`.
pub fn export_gguf(
    source: &Path,
    adapter: Option<&LoraAdapter>,
    out: &Path,
    ty: ExportType,
) -> Result<ExportSummary, EngineError> {
    let g = GgufFile::open(source)?;
    let config = LlamaConfig::from_gguf(&g).map_err(|e| e.in_file(source))?;
    if let Some(a) = adapter {
        a.check(&config).map_err(|reason| EngineError::Adapter {
            path: out.to_path_buf(),
            reason: format!("does not fit {}: {reason}", source.display()),
        })?;
    }
    if let (Ok(a), Ok(b)) = (source.canonicalize(), out.canonicalize()) {
        if a == b {
            return Err(EngineError::Metadata(format!(
                "the export would overwrite its source {}",
                source.display()
            )));
        }
    }
    let mut merged = 0;
    let (bytes, tensors) = rewrite_gguf(&g, out, ty.dtype(), |name| {
        let mut values = g.tensor_f32(name)?;
        if let (Some(a), Some((layer, p))) = (adapter, projection_of(name)) {
            if a.add_delta(layer, p, &mut values) {
                merged += 1;
            }
        }
        Ok(values)
    })?;
    Ok(ExportSummary {
        path: out.display().to_string(),
        bytes,
        tensors,
        merged,
        tensor_type: ty.name(),
    })
}

/// [`export_gguf`] with the PEFT adapter in `adapter` (if any), read and
/// checked against the source model first.
pub fn export_peft(
    source: &Path,
    adapter: Option<&Path>,
    out: &Path,
    ty: ExportType,
) -> Result<ExportSummary, EngineError> {
    let lora = match adapter {
        Some(dir) => {
            let g = GgufFile::open(source)?;
            let config = LlamaConfig::from_gguf(&g).map_err(|e| e.in_file(source))?;
            Some(crate::peft::load_peft(dir, &config)?)
        }
        None => None,
    };
    export_gguf(source, lora.as_ref(), out, ty)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn q8_0_rounds_like_the_reference() {
        let mut block = vec![0f32; 32];
        block[0] = 127.0;
        block[1] = -63.5; // half away from zero: −64
        block[2] = 0.49;
        let q = quantize_q8_0(&block);
        assert_eq!(q.len(), 34);
        assert_eq!(half::f16::from_le_bytes([q[0], q[1]]).to_f32(), 1.0);
        assert_eq!(q[2] as i8, 127);
        assert_eq!(q[3] as i8, -64);
        assert_eq!(q[4] as i8, 0);
        // An all-zero block has d = 0 and zero values.
        assert!(quantize_q8_0(&[0.0; 32]).iter().all(|&b| b == 0));
    }

    #[test]
    fn projection_names_map_to_layers() {
        assert_eq!(
            projection_of("blk.12.ffn_down.weight"),
            Some((12, Projection::Down))
        );
        assert_eq!(projection_of("blk.0.attn_norm.weight"), None);
        assert_eq!(projection_of("token_embd.weight"), None);
    }
}
