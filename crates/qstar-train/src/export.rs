//! Trained weights to a GGUF file: the source model's metadata and tensor
//! order, the trained values, matrices in the type asked for (F32, F16 or
//! Q8_0) and vectors in F32, as llama.cpp's converter stores them.

use std::collections::HashMap;
use std::path::Path;

use candle_core::quantized::GgmlDType;
use qstar_engine::gguf::GgufFile;
use qstar_engine::gguf_write::rewrite_gguf;
use qstar_engine::EngineError;

use crate::weights::Weights;

/// Writes `weights` (trained from `source`) to `out`; returns the bytes written.
pub fn write_weights_gguf(
    source: &Path,
    weights: &Weights<f32>,
    out: &Path,
    dtype: GgmlDType,
) -> Result<u64, EngineError> {
    let g = GgufFile::open(source).map_err(|e| e.in_file(source))?;
    let trained: HashMap<String, &[f32]> = weights
        .tensors()
        .into_iter()
        .map(|(n, _, t)| (n, t))
        .collect();
    let (bytes, _) = rewrite_gguf(&g, out, dtype, |name| match trained.get(name) {
        Some(v) => Ok(v.to_vec()),
        // A tensor the trainer does not hold (such as RoPE factors) is copied.
        None => g.tensor_f32(name),
    })?;
    Ok(bytes)
}
