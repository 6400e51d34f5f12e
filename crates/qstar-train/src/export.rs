//! Trained weights to a GGUF file: the source model's metadata and tensor
//! order, the trained values, matrices in the type asked for (F32, F16 or
//! Q8_0) and vectors in F32, as llama.cpp's converter stores them.

use std::collections::HashMap;
use std::path::Path;

use candle_core::quantized::GgmlDType;
use qstar_engine::gguf::{GgufFile, Value};
use qstar_engine::gguf_write::{encode, write_gguf, TensorSpec};
use qstar_engine::EngineError;

use crate::weights::Weights;

/// llama.cpp's `general.file_type` of a whole-file type.
fn file_type(dtype: GgmlDType) -> u32 {
    match dtype {
        GgmlDType::F32 => 0,
        GgmlDType::F16 => 1,
        _ => 7,
    }
}

/// Writes `weights` (trained from `source`) to `out`; returns the bytes written.
pub fn write_weights_gguf(
    source: &Path,
    weights: &Weights<f32>,
    out: &Path,
    dtype: GgmlDType,
) -> Result<u64, EngineError> {
    if !matches!(dtype, GgmlDType::F32 | GgmlDType::F16 | GgmlDType::Q8_0) {
        return Err(EngineError::Metadata(format!(
            "cannot write {dtype:?} tensors"
        )));
    }
    let g = GgufFile::open(source).map_err(|e| e.in_file(source))?;
    let alignment = if g.has("general.alignment") {
        g.uint("general.alignment")?
    } else {
        32
    };
    let mut metadata: Vec<(String, Value)> = g
        .metadata()
        .iter()
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    metadata.sort_by(|a, b| a.0.cmp(&b.0));
    match metadata.iter_mut().find(|(k, _)| k == "general.file_type") {
        Some((_, v)) => *v = Value::U32(file_type(dtype)),
        None => metadata.push(("general.file_type".into(), Value::U32(file_type(dtype)))),
    }
    let trained: HashMap<String, &[f32]> = weights
        .tensors()
        .into_iter()
        .map(|(n, _, t)| (n, t))
        .collect();
    let mut names: Vec<&String> = g.tensor_names().collect();
    names.sort_by_key(|n| g.tensor_layout(n).map_or(0, |l| l.start));
    let specs: Vec<TensorSpec> = names
        .iter()
        .map(|&name| {
            let (_, dims) = g
                .tensor_info(name)
                .ok_or_else(|| EngineError::Metadata(format!("missing tensor `{name}`")))?;
            let inner = dims.last().copied().unwrap_or(1);
            let dtype = match dtype {
                _ if dims.len() < 2 => GgmlDType::F32,
                GgmlDType::Q8_0 if !inner.is_multiple_of(32) => GgmlDType::F16,
                other => other,
            };
            Ok(TensorSpec {
                name: name.clone(),
                dims,
                dtype,
            })
        })
        .collect::<Result<_, EngineError>>()?;
    write_gguf(out, &metadata, &specs, alignment, |i| {
        let spec = &specs[i];
        let values = match trained.get(&spec.name) {
            Some(v) => v.to_vec(),
            // A tensor the trainer does not hold (such as RoPE factors) is copied.
            None => g.tensor_f32(&spec.name)?,
        };
        encode(spec.dtype, &values)
            .ok_or_else(|| EngineError::Metadata(format!("cannot encode `{}`", spec.name)))
    })
}
