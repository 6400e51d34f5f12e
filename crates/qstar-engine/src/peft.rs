//! LoRA adapters on disk in Hugging Face PEFT's layout, so PEFT, TRL and
//! vLLM load what qstar trains, and qstar loads what they train:
//!
//! - `adapter_model.safetensors`: for layer i and module m of block b
//!   (`self_attn.q_proj`, `mlp.down_proj`, …) the tensors
//!   `base_model.model.model.layers.{i}.{b}.{m}.lora_A.weight` (rank × in)
//!   and `….lora_B.weight` (out × rank);
//! - `adapter_config.json`: `peft_type` "LORA", rank `r`, `lora_alpha`,
//!   `target_modules` and the rest of a `LoraConfig`.
//!
//! Hugging Face stores the query and key rows of each head as two halves
//! that RoPE rotates against each other; GGUF (and so [`LoraAdapter`])
//! stores them as adjacent pairs. B's rows of `q_proj` and `k_proj` are
//! reordered on the way in and out; A acts on the input and keeps its order.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use safetensors::{Dtype, SafeTensors};
use serde_json::{json, Value};

use crate::adapter::{
    gguf_row_of_hf_row, hf_row_of_gguf_row, reorder_rows, LoraAdapter, LoraPair, Projection,
};
use crate::error::EngineError;
use crate::llama::LlamaConfig;

pub const WEIGHTS_FILE: &str = "adapter_model.safetensors";
pub const CONFIG_FILE: &str = "adapter_config.json";

/// Largest adapter file read (a rank-256 adapter of a 7B model is ~1.3 GB).
const MAX_WEIGHTS_BYTES: u64 = 4 << 30;

/// The two files of an adapter directory, weights first.
pub fn adapter_files(dir: &Path) -> [PathBuf; 2] {
    [dir.join(WEIGHTS_FILE), dir.join(CONFIG_FILE)]
}

fn tensor_name(layer: usize, p: Projection, which: &str) -> String {
    format!(
        "base_model.model.model.layers.{layer}.{}.{}.lora_{which}.weight",
        p.hf_block(),
        p.hf_name()
    )
}

/// Parses a PEFT tensor name into (layer, projection, "A" or "B").
fn parse_name(name: &str) -> Option<(usize, Projection, char)> {
    let rest = name.strip_prefix("base_model.model.")?;
    // Some writers leave out the inner `model.`.
    let rest = rest.strip_prefix("model.").unwrap_or(rest);
    let rest = rest.strip_prefix("layers.")?;
    let (layer, rest) = rest.split_once('.')?;
    let layer: usize = layer.parse().ok()?;
    let (block, rest) = rest.split_once('.')?;
    let (module, rest) = rest.split_once('.')?;
    let p = Projection::from_hf_name(module)?;
    if p.hf_block() != block {
        return None;
    }
    let which = match rest {
        "lora_A.weight" | "lora_A.default.weight" => 'A',
        "lora_B.weight" | "lora_B.default.weight" => 'B',
        _ => return None,
    };
    Some((layer, p, which))
}

fn f32_bytes(v: &[f32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

/// Writes `adapter` into `dir` (created if needed) in PEFT's layout. Each
/// file is written to a temporary name and renamed, so a reader never sees
/// half a file. `n_head`/`n_head_kv`/`head_dim` say how q and k rows are
/// grouped into heads.
pub fn save_peft(
    adapter: &LoraAdapter,
    dir: &Path,
    n_head: usize,
    n_head_kv: usize,
    head_dim: usize,
) -> Result<(), EngineError> {
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |source| EngineError::Io { path, source }
    };
    let bad = |reason: String| EngineError::Adapter {
        path: dir.to_path_buf(),
        reason,
    };
    if adapter.rank == 0 {
        return Err(bad("cannot save an adapter of rank 0".into()));
    }
    std::fs::create_dir_all(dir).map_err(io(dir))?;
    let mut buffers: Vec<(String, Vec<usize>, Vec<u8>)> = Vec::new();
    for (&(layer, p), pair) in &adapter.pairs {
        let r = adapter.rank;
        if pair.a.len() != r * pair.k || pair.b.len() != pair.n * r {
            return Err(bad(format!(
                "layer {layer} {}: A or B does not have the pair's shape",
                p.hf_name()
            )));
        }
        let b = match p {
            Projection::Q | Projection::K => {
                let heads = if p == Projection::Q {
                    n_head
                } else {
                    n_head_kv
                };
                if heads * head_dim != pair.n || !head_dim.is_multiple_of(2) {
                    return Err(bad(format!(
                        "layer {layer} {} has {} rows, not {heads} heads of {head_dim}",
                        p.hf_name(),
                        pair.n
                    )));
                }
                reorder_rows(&pair.b, r, |hf| gguf_row_of_hf_row(hf, head_dim))
            }
            _ => pair.b.clone(),
        };
        buffers.push((
            tensor_name(layer, p, "A"),
            vec![r, pair.k],
            f32_bytes(&pair.a),
        ));
        buffers.push((tensor_name(layer, p, "B"), vec![pair.n, r], f32_bytes(&b)));
    }
    let views = buffers
        .iter()
        .map(|(name, shape, data)| {
            safetensors::tensor::TensorView::new(Dtype::F32, shape.clone(), data)
                .map(|v| (name.clone(), v))
                .map_err(|e| bad(format!("cannot lay out `{name}`: {e}")))
        })
        .collect::<Result<Vec<_>, _>>()?;
    let metadata = HashMap::from([("format".to_string(), "pt".to_string())]);
    let bytes = safetensors::tensor::serialize(views, Some(metadata))
        .map_err(|e| bad(format!("cannot serialize the tensors: {e}")))?;
    let targets: Vec<&str> = adapter.targets().iter().map(|p| p.hf_name()).collect();
    let mut layers: Vec<usize> = adapter.pairs.keys().map(|&(l, _)| l).collect();
    layers.dedup();
    let config = json!({
        "peft_type": "LORA",
        "task_type": "CAUSAL_LM",
        "base_model_name_or_path": adapter.base_model,
        "r": adapter.rank,
        "lora_alpha": adapter.alpha,
        "lora_dropout": adapter.dropout,
        "target_modules": targets,
        "bias": "none",
        "fan_in_fan_out": false,
        "inference_mode": true,
        "init_lora_weights": true,
        "use_rslora": false,
        "use_dora": false,
        "modules_to_save": null,
        "layers_to_transform": null,
        "layers_pattern": null,
        "rank_pattern": {},
        "alpha_pattern": {},
        "revision": null,
    });
    let text = serde_json::to_string_pretty(&config)
        .map_err(|e| bad(format!("cannot write the config: {e}")))?;
    let [weights_path, config_path] = adapter_files(dir);
    write_atomic(&weights_path, &bytes)?;
    write_atomic(&config_path, text.as_bytes())
}

/// Writes `bytes` to `path` through a temporary file in the same folder.
pub(crate) fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), EngineError> {
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(".tmp");
    let tmp = path.with_file_name(name);
    let io = |p: &Path| {
        let path = p.to_path_buf();
        move |source| EngineError::Io { path, source }
    };
    std::fs::write(&tmp, bytes).map_err(io(&tmp))?;
    std::fs::rename(&tmp, path).map_err(io(path))
}

/// A tensor of the file as f32 values with its shape.
fn read_tensor(st: &SafeTensors<'_>, name: &str) -> Result<(Vec<usize>, Vec<f32>), String> {
    let view = st.tensor(name).map_err(|e| format!("`{name}`: {e}"))?;
    let data = view.data();
    let values: Vec<f32> = match view.dtype() {
        Dtype::F32 => data
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect(),
        Dtype::F16 => data
            .chunks_exact(2)
            .map(|b| half::f16::from_le_bytes([b[0], b[1]]).to_f32())
            .collect(),
        Dtype::BF16 => data
            .chunks_exact(2)
            .map(|b| half::bf16::from_le_bytes([b[0], b[1]]).to_f32())
            .collect(),
        other => {
            return Err(format!(
                "`{name}` is {other:?}; F32, F16 and BF16 adapters are supported"
            ))
        }
    };
    Ok((view.shape().to_vec(), values))
}

/// Reads a PEFT LoRA adapter for a model of `config`. Every problem with the
/// directory is an [`EngineError::Adapter`] naming it.
pub fn load_peft(dir: &Path, config: &LlamaConfig) -> Result<LoraAdapter, EngineError> {
    load_inner(dir, config).map_err(|reason| EngineError::Adapter {
        path: dir.to_path_buf(),
        reason,
    })
}

fn load_inner(dir: &Path, config: &LlamaConfig) -> Result<LoraAdapter, String> {
    if !dir.is_dir() {
        return Err("is not a directory (an adapter is a directory holding \
                    adapter_config.json and adapter_model.safetensors)"
            .into());
    }
    let [weights_path, config_path] = adapter_files(dir);
    let text = std::fs::read_to_string(&config_path)
        .map_err(|e| format!("cannot read {CONFIG_FILE}: {e}"))?;
    let cfg: Value =
        serde_json::from_str(&text).map_err(|e| format!("{CONFIG_FILE} is not JSON: {e}"))?;
    let peft_type = cfg.get("peft_type").and_then(Value::as_str).unwrap_or("");
    if peft_type != "LORA" {
        return Err(format!(
            "{CONFIG_FILE} has peft_type {:?}; only LORA adapters are supported",
            cfg.get("peft_type").unwrap_or(&Value::Null)
        ));
    }
    let rank = cfg
        .get("r")
        .and_then(Value::as_u64)
        .ok_or_else(|| format!("{CONFIG_FILE} has no integer rank `r`"))? as usize;
    if rank == 0 {
        return Err(format!("{CONFIG_FILE} says rank r = 0"));
    }
    let alpha = cfg
        .get("lora_alpha")
        .and_then(Value::as_f64)
        .ok_or_else(|| format!("{CONFIG_FILE} has no number `lora_alpha`"))? as f32;
    for (key, unsupported) in [
        ("use_rslora", "rank-stabilized scaling"),
        ("use_dora", "DoRA"),
        ("fan_in_fan_out", "transposed (fan-in × fan-out) weights"),
    ] {
        if cfg.get(key).and_then(Value::as_bool) == Some(true) {
            return Err(format!(
                "{CONFIG_FILE} asks for {unsupported} ({key}), which is not supported"
            ));
        }
    }
    for key in ["rank_pattern", "alpha_pattern"] {
        if cfg
            .get(key)
            .and_then(Value::as_object)
            .is_some_and(|m| !m.is_empty())
        {
            return Err(format!(
                "{CONFIG_FILE} sets `{key}`; per-module ranks or alphas are not supported"
            ));
        }
    }
    let dropout = cfg
        .get("lora_dropout")
        .and_then(Value::as_f64)
        .unwrap_or(0.0) as f32;
    let base_model = cfg
        .get("base_model_name_or_path")
        .and_then(Value::as_str)
        .unwrap_or("")
        .to_string();

    let len = std::fs::metadata(&weights_path)
        .map_err(|e| format!("cannot read {WEIGHTS_FILE}: {e}"))?
        .len();
    if len > MAX_WEIGHTS_BYTES {
        return Err(format!(
            "{WEIGHTS_FILE} is {len} bytes, more than an adapter of any supported model"
        ));
    }
    let bytes =
        std::fs::read(&weights_path).map_err(|e| format!("cannot read {WEIGHTS_FILE}: {e}"))?;
    let st = SafeTensors::deserialize(&bytes)
        .map_err(|e| format!("{WEIGHTS_FILE} is not a safetensors file: {e}"))?;

    let mut halves: BTreeMap<(usize, Projection), [Option<String>; 2]> = BTreeMap::new();
    let mut names = st.names();
    names.sort();
    for name in names {
        let (layer, p, which) = parse_name(name).ok_or_else(|| {
            format!(
                "{WEIGHTS_FILE} holds `{name}`, which is not a LoRA tensor of a Llama \
                 projection (base_model.model.model.layers.N.self_attn|mlp.MODULE.lora_A|lora_B.weight)"
            )
        })?;
        if layer >= config.n_layer {
            return Err(format!(
                "`{name}` adapts layer {layer}, but the model has {} layers",
                config.n_layer
            ));
        }
        let slot = &mut halves.entry((layer, p)).or_default()[(which == 'B') as usize];
        if slot.is_some() {
            return Err(format!("`{name}` appears twice"));
        }
        *slot = Some(name.to_string());
    }
    if halves.is_empty() {
        return Err(format!("{WEIGHTS_FILE} holds no LoRA tensors"));
    }
    let mut pairs = BTreeMap::new();
    for ((layer, p), [a_name, b_name]) in halves {
        let missing = |w: &str| format!("layer {layer} {} has no lora_{w} tensor", p.hf_name());
        let a_name = a_name.ok_or_else(|| missing("A"))?;
        let b_name = b_name.ok_or_else(|| missing("B"))?;
        let (n, k) = p.shape(config);
        let (a_shape, a) = read_tensor(&st, &a_name)?;
        let (b_shape, b) = read_tensor(&st, &b_name)?;
        if a_shape != [rank, k] {
            return Err(format!(
                "`{a_name}` has shape {a_shape:?}; rank {rank} for this model needs [{rank}, {k}]"
            ));
        }
        if b_shape != [n, rank] {
            return Err(format!(
                "`{b_name}` has shape {b_shape:?}; rank {rank} for this model needs [{n}, {rank}]"
            ));
        }
        let b = match p.permuted_heads(config) {
            Some(_) => reorder_rows(&b, rank, |g| hf_row_of_gguf_row(g, config.head_dim)),
            None => b,
        };
        pairs.insert((layer, p), LoraPair { n, k, a, b });
    }
    let adapter = LoraAdapter {
        rank,
        alpha,
        dropout,
        base_model,
        pairs,
    };
    adapter.check(config)?;
    Ok(adapter)
}

#[cfg(test)]
mod tests {
    use super::parse_name;
    use crate::adapter::Projection;

    #[test]
    fn peft_names_parse() {
        assert_eq!(
            parse_name("base_model.model.model.layers.12.mlp.down_proj.lora_B.weight"),
            Some((12, Projection::Down, 'B'))
        );
        assert_eq!(
            parse_name("base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight"),
            Some((0, Projection::Q, 'A'))
        );
        for bad in [
            "base_model.model.model.layers.0.mlp.q_proj.lora_A.weight",
            "base_model.model.model.layers.x.self_attn.q_proj.lora_A.weight",
            "base_model.model.model.layers.0.self_attn.q_proj.lora_C.weight",
            "base_model.model.lm_head.lora_A.weight",
            "model.layers.0.self_attn.q_proj.weight",
        ] {
            assert_eq!(parse_name(bad), None, "{bad}");
        }
    }
}
