//! Files of a training run: tensors in safetensors, the rest in JSON, every
//! file written to a temporary name and renamed, so a run killed at any
//! moment leaves either the old file or the new one.

use std::collections::HashMap;
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use safetensors::tensor::{Dtype, SafeTensors, TensorView};

use crate::error::TrainError;

fn io(path: &Path) -> impl Fn(std::io::Error) -> TrainError + '_ {
    move |source| TrainError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Writes `bytes` to `path` through a temporary file in the same directory,
/// synced before the rename.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), TrainError> {
    let tmp = path.with_extension(format!(
        "{}.tmp",
        path.extension().and_then(|e| e.to_str()).unwrap_or("")
    ));
    let mut f = fs::File::create(&tmp).map_err(io(&tmp))?;
    f.write_all(bytes).map_err(io(&tmp))?;
    f.sync_all().map_err(io(&tmp))?;
    drop(f);
    fs::rename(&tmp, path).map_err(io(path))
}

fn f32_bytes(values: &[f32]) -> Vec<u8> {
    let mut out = Vec::with_capacity(values.len() * 4);
    for v in values {
        out.extend_from_slice(&v.to_le_bytes());
    }
    out
}

/// Named f32 tensors (name, shape, values) to one safetensors file.
pub fn write_tensors(
    path: &Path,
    tensors: &[(String, Vec<usize>, &[f32])],
) -> Result<(), TrainError> {
    let bytes: Vec<(String, Vec<usize>, Vec<u8>)> = tensors
        .iter()
        .map(|(n, s, v)| (n.clone(), s.clone(), f32_bytes(v)))
        .collect();
    let views = bytes
        .iter()
        .map(|(n, s, b)| {
            TensorView::new(Dtype::F32, s.clone(), b)
                .map(|v| (n.clone(), v))
                .map_err(|e| TrainError::Format {
                    path: path.to_path_buf(),
                    reason: e.to_string(),
                })
        })
        .collect::<Result<Vec<_>, _>>()?;
    let data = safetensors::tensor::serialize(views, None).map_err(|e| TrainError::Format {
        path: path.to_path_buf(),
        reason: e.to_string(),
    })?;
    write_atomic(path, &data)
}

/// Tensors read from a file: name → (shape, values).
pub type NamedTensors = HashMap<String, (Vec<usize>, Vec<f32>)>;

/// Every tensor of a safetensors file as f32.
pub fn read_tensors(path: &Path) -> Result<NamedTensors, TrainError> {
    let bytes = fs::read(path).map_err(io(path))?;
    let bad = |reason: String| TrainError::Format {
        path: path.to_path_buf(),
        reason,
    };
    let st = SafeTensors::deserialize(&bytes).map_err(|e| bad(e.to_string()))?;
    let mut out = HashMap::new();
    for name in st.names() {
        let t = st.tensor(name).map_err(|e| bad(e.to_string()))?;
        if t.dtype() != Dtype::F32 {
            return Err(bad(format!(
                "tensor `{name}` is {:?}, expected F32",
                t.dtype()
            )));
        }
        let values = t
            .data()
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect();
        out.insert(name.to_string(), (t.shape().to_vec(), values));
    }
    Ok(out)
}

/// Copies the tensors of `from` into `into`, which must hold exactly the
/// same names and shapes.
pub fn load_into(
    path: &Path,
    from: &mut NamedTensors,
    into: Vec<(String, Vec<usize>, &mut [f32])>,
) -> Result<(), TrainError> {
    for (name, shape, t) in into {
        let (s, v) = from.remove(&name).ok_or_else(|| TrainError::Format {
            path: path.to_path_buf(),
            reason: format!("tensor `{name}` is missing"),
        })?;
        if s != shape || v.len() != t.len() {
            return Err(TrainError::Format {
                path: path.to_path_buf(),
                reason: format!("tensor `{name}` has shape {s:?}, expected {shape:?}"),
            });
        }
        t.copy_from_slice(&v);
    }
    if let Some(extra) = from.keys().next() {
        return Err(TrainError::Format {
            path: path.to_path_buf(),
            reason: format!("unexpected tensor `{extra}`"),
        });
    }
    Ok(())
}

/// `DIR/checkpoints/step-000042`.
pub fn checkpoint_dir(run: &Path, step: usize) -> PathBuf {
    run.join("checkpoints").join(format!("step-{step:06}"))
}

/// The step of the last complete checkpoint, from `DIR/checkpoints/latest`.
pub fn latest(run: &Path) -> Result<Option<usize>, TrainError> {
    let path = run.join("checkpoints").join("latest");
    match fs::read_to_string(&path) {
        Ok(s) => s
            .trim()
            .strip_prefix("step-")
            .and_then(|n| n.parse().ok())
            .map(Some)
            .ok_or_else(|| TrainError::Format {
                path,
                reason: format!("not a checkpoint name: {s:?}"),
            }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(TrainError::Io { path, source: e }),
    }
}

/// Marks `step` as the last complete checkpoint and removes older ones.
pub fn commit(run: &Path, step: usize) -> Result<(), TrainError> {
    let dir = run.join("checkpoints");
    write_atomic(&dir.join("latest"), format!("step-{step:06}\n").as_bytes())?;
    let keep = checkpoint_dir(run, step);
    if let Ok(entries) = fs::read_dir(&dir) {
        for e in entries.flatten() {
            let p = e.path();
            if p.is_dir() && p != keep {
                fs::remove_dir_all(&p).map_err(io(&p))?;
            }
        }
    }
    Ok(())
}
