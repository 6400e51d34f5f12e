//! LoRA adapters end to end on the default model: the PEFT files (names,
//! shapes, the q/k row order), bad adapter directories, the side product in
//! the forward pass, and the merged GGUF export checked against independent
//! computations.

mod common;

use std::path::Path;

use qstar_engine::adapter::{gguf_row_of_hf_row, hf_row_of_gguf_row, LoraAdapter, Projection};
use qstar_engine::gguf::GgufFile;
use qstar_engine::gguf_write::{export_gguf, ExportType};
use qstar_engine::llama::{KvCache, LlamaConfig, SeqStep};
use qstar_engine::peft::{load_peft, save_peft, CONFIG_FILE, WEIGHTS_FILE};
use qstar_engine::{EngineError, LoadedModel};

/// A small seeded generator of uniform values in [-1, 1).
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> f32 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        ((self.0 >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
    }
}

/// A rank-4 adapter on every projection of the layers `layers`, with B
/// drawn uniformly from ±`b_size` (so it changes the model).
fn random_adapter(config: &LlamaConfig, layers: &[usize], b_size: f32, seed: u64) -> LoraAdapter {
    let mut a = LoraAdapter::init(config, 4, 8.0, &Projection::ALL, seed);
    a.pairs.retain(|&(l, _), _| layers.contains(&l));
    let mut rng = Rng(seed);
    for pair in a.pairs.values_mut() {
        for b in &mut pair.b {
            *b = rng.next() * b_size;
        }
    }
    a.base_model = "HuggingFaceTB/SmolLM2-135M-Instruct".into();
    a
}

fn save(a: &LoraAdapter, dir: &Path, c: &LlamaConfig) {
    save_peft(a, dir, c.n_head, c.n_head_kv, c.head_dim).expect("save");
}

/// Log-softmax of every position's logits for `tokens`.
fn logprobs(model: &LoadedModel, tokens: &[u32]) -> Vec<Vec<f32>> {
    let mut kv = KvCache::new(model.llama.config.n_layer);
    let logits = model.llama.forward(&mut [SeqStep {
        kv: &mut kv,
        tokens,
        logits_from: 0,
        output: Default::default(),
    }]);
    logits[0]
        .chunks(model.llama.config.n_vocab)
        .map(|row| {
            let max = row.iter().fold(f32::NEG_INFINITY, |m, &v| m.max(v));
            let sum: f64 = row.iter().map(|&v| ((v - max) as f64).exp()).sum();
            let log_z = max as f64 + sum.ln();
            row.iter().map(|&v| (v as f64 - log_z) as f32).collect()
        })
        .collect()
}

fn max_gap(a: &[Vec<f32>], b: &[Vec<f32>]) -> f32 {
    a.iter()
        .flatten()
        .zip(b.iter().flatten())
        .fold(0f32, |m, (x, y)| m.max((x - y).abs()))
}

/// Mean over positions of the largest log-prob change among the tokens
/// that are likely (log-prob above −5) in either model.
fn mean_top_gap(a: &[Vec<f32>], b: &[Vec<f32>]) -> f32 {
    let mut total = 0.0;
    for (ra, rb) in a.iter().zip(b) {
        let mut m = 0f32;
        for (x, y) in ra.iter().zip(rb) {
            if *x > -5.0 || *y > -5.0 {
                m = m.max((x - y).abs());
            }
        }
        total += m;
    }
    total / a.len() as f32
}

const TEXT: &str = "The capital of France is Paris. Two plus three equals five, and";

/// HF's RoPE rotates element i of a head with element i + hd/2; GGUF's
/// (after llama.cpp's row permutation) rotates elements 2j and 2j + 1.
/// Permuting a vector HF → GGUF and rotating it with adjacent pairs must
/// give the permutation of the vector rotated the HF way, which is what
/// makes translating B's q/k rows with the same permutation right.
#[test]
fn row_permutation_turns_half_split_rope_into_adjacent_pairs() {
    let (n_head, hd) = (3, 16);
    let mut rng = Rng(5);
    let x_hf: Vec<f32> = (0..n_head * hd).map(|_| rng.next()).collect();
    let pos = 7.0f64;
    let theta = |i: usize| pos * 10_000f64.powf(-2.0 * i as f64 / hd as f64);
    // HF: rotate_half per head.
    let mut rot_hf = x_hf.clone();
    for h in 0..n_head {
        for i in 0..hd / 2 {
            let (a, b) = (x_hf[h * hd + i] as f64, x_hf[h * hd + i + hd / 2] as f64);
            let (c, s) = (theta(i).cos(), theta(i).sin());
            rot_hf[h * hd + i] = (a * c - b * s) as f32;
            rot_hf[h * hd + i + hd / 2] = (b * c + a * s) as f32;
        }
    }
    // GGUF: the permuted vector, rotated in adjacent pairs.
    let to_gguf =
        |v: &[f32]| -> Vec<f32> { (0..v.len()).map(|g| v[hf_row_of_gguf_row(g, hd)]).collect() };
    let x_g = to_gguf(&x_hf);
    let mut rot_g = x_g.clone();
    for h in 0..n_head {
        for j in 0..hd / 2 {
            let (a, b) = (x_g[h * hd + 2 * j] as f64, x_g[h * hd + 2 * j + 1] as f64);
            let (c, s) = (theta(j).cos(), theta(j).sin());
            rot_g[h * hd + 2 * j] = (a * c - b * s) as f32;
            rot_g[h * hd + 2 * j + 1] = (b * c + a * s) as f32;
        }
    }
    let want = to_gguf(&rot_hf);
    for (g, (a, b)) in rot_g.iter().zip(&want).enumerate() {
        assert!((a - b).abs() < 1e-6, "row {g}: {a} vs {b}");
    }
    // The brief's formula, spelled out: HF row h·hd + s·hd/2 + j ↔ GGUF
    // row h·hd + 2j + s.
    for h in 0..n_head {
        for s in 0..2 {
            for j in 0..hd / 2 {
                assert_eq!(
                    gguf_row_of_hf_row(h * hd + s * hd / 2 + j, hd),
                    h * hd + 2 * j + s
                );
            }
        }
    }
}

#[test]
fn peft_files_have_peft_names_shapes_and_round_trip() {
    let model = common::loaded();
    let c = &model.llama.config;
    let adapter = random_adapter(c, &[0, 29], 0.1, 11);
    let dir = tempfile::tempdir().expect("dir");
    save(&adapter, dir.path(), c);

    // The config PEFT's LoraConfig reads.
    let cfg: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(dir.path().join(CONFIG_FILE)).expect("config"),
    )
    .expect("json");
    assert_eq!(cfg["peft_type"], "LORA");
    assert_eq!(cfg["task_type"], "CAUSAL_LM");
    assert_eq!(cfg["r"], 4);
    assert_eq!(cfg["lora_alpha"], 8.0);
    assert_eq!(cfg["bias"], "none");
    assert_eq!(cfg["fan_in_fan_out"], false);
    assert_eq!(cfg["inference_mode"], true);
    assert_eq!(
        cfg["base_model_name_or_path"],
        "HuggingFaceTB/SmolLM2-135M-Instruct"
    );
    let mut modules: Vec<String> = cfg["target_modules"]
        .as_array()
        .expect("modules")
        .iter()
        .map(|m| m.as_str().expect("name").to_string())
        .collect();
    modules.sort();
    assert_eq!(
        modules,
        [
            "down_proj",
            "gate_proj",
            "k_proj",
            "o_proj",
            "q_proj",
            "up_proj",
            "v_proj"
        ]
    );

    // The tensors PEFT's `set_peft_model_state_dict` expects for a Llama.
    let bytes = std::fs::read(dir.path().join(WEIGHTS_FILE)).expect("weights");
    let st = safetensors::SafeTensors::deserialize(&bytes).expect("safetensors");
    assert_eq!(st.names().len(), 2 * 7 * 2);
    let (d, ff, kv) = (c.n_embd, c.n_ff, c.kv_dim());
    for layer in [0, 29] {
        for (block, module, out, inp) in [
            ("self_attn", "q_proj", d, d),
            ("self_attn", "k_proj", kv, d),
            ("self_attn", "v_proj", kv, d),
            ("self_attn", "o_proj", d, d),
            ("mlp", "gate_proj", ff, d),
            ("mlp", "up_proj", ff, d),
            ("mlp", "down_proj", d, ff),
        ] {
            let p = format!("base_model.model.model.layers.{layer}.{block}.{module}");
            let a = st.tensor(&format!("{p}.lora_A.weight")).expect("A");
            let b = st.tensor(&format!("{p}.lora_B.weight")).expect("B");
            assert_eq!(a.shape(), [4, inp], "{p} A");
            assert_eq!(b.shape(), [out, 4], "{p} B");
            assert_eq!(a.dtype(), safetensors::Dtype::F32);
        }
    }
    // q_proj's B is stored in HF's row order: file row h·hd + s·hd/2 + j is
    // GGUF row h·hd + 2j + s of the adapter in memory; v_proj's is as is.
    let file_b = |name: &str| -> Vec<f32> {
        st.tensor(name)
            .expect("B")
            .data()
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect()
    };
    let hd = c.head_dim;
    let q = file_b("base_model.model.model.layers.0.self_attn.q_proj.lora_B.weight");
    let mem = &adapter.pairs[&(0, Projection::Q)].b;
    for h in 0..c.n_head {
        for s in 0..2 {
            for j in 0..hd / 2 {
                let (hf, g) = (h * hd + s * hd / 2 + j, h * hd + 2 * j + s);
                assert_eq!(q[hf * 4..hf * 4 + 4], mem[g * 4..g * 4 + 4]);
            }
        }
    }
    assert_ne!(q, *mem, "q rows are reordered");
    let v = file_b("base_model.model.model.layers.0.self_attn.v_proj.lora_B.weight");
    assert_eq!(v, adapter.pairs[&(0, Projection::V)].b);

    let back = load_peft(dir.path(), c).expect("load");
    assert_eq!(back, adapter);
}

/// Writes a safetensors file of F32 tensors (name, shape) filled with 0.01.
fn write_tensors(path: &Path, tensors: &[(&str, Vec<usize>)]) {
    let data: Vec<(String, Vec<usize>, Vec<u8>)> = tensors
        .iter()
        .map(|(n, s)| {
            let count: usize = s.iter().product();
            let bytes = (0..count).flat_map(|_| 0.01f32.to_le_bytes()).collect();
            (n.to_string(), s.clone(), bytes)
        })
        .collect();
    let views: Vec<(String, safetensors::tensor::TensorView<'_>)> = data
        .iter()
        .map(|(n, s, b)| {
            (
                n.clone(),
                safetensors::tensor::TensorView::new(safetensors::Dtype::F32, s.clone(), b)
                    .expect("view"),
            )
        })
        .collect();
    std::fs::write(
        path,
        safetensors::tensor::serialize(views, None).expect("serialize"),
    )
    .expect("write");
}

/// Makes a bad adapter directory at the path.
type Maker<'a> = Box<dyn Fn(&Path) + 'a>;

#[test]
fn bad_adapter_directories_are_clear_input_errors() {
    let model = common::loaded();
    let c = &model.llama.config;
    let root = tempfile::tempdir().expect("dir");
    let good = random_adapter(c, &[1], 0.1, 3);
    let config_text = |r: usize| {
        format!(
            r#"{{"peft_type": "LORA", "r": {r}, "lora_alpha": 8, "target_modules": ["q_proj"]}}"#
        )
    };
    let q = "base_model.model.model.layers.1.self_attn.q_proj";
    let cases: Vec<(&str, Maker<'_>, &str)> = vec![
        ("missing", Box::new(|_: &Path| {}), "not a directory"),
        (
            "no-weights",
            Box::new(move |d: &Path| {
                std::fs::create_dir(d).expect("mkdir");
                std::fs::write(d.join(CONFIG_FILE), config_text(4)).expect("cfg");
            }),
            WEIGHTS_FILE,
        ),
        (
            "no-config",
            Box::new(|d: &Path| {
                std::fs::create_dir(d).expect("mkdir");
                write_tensors(&d.join(WEIGHTS_FILE), &[]);
            }),
            CONFIG_FILE,
        ),
        (
            "rank-0",
            Box::new({
                let good = good.clone();
                let c = c.clone();
                move |d: &Path| {
                    save(&good, d, &c);
                    std::fs::write(d.join(CONFIG_FILE), config_text(0)).expect("cfg");
                }
            }),
            "rank r = 0",
        ),
        (
            "wrong-shape",
            Box::new(move |d: &Path| {
                std::fs::create_dir(d).expect("mkdir");
                std::fs::write(d.join(CONFIG_FILE), config_text(4)).expect("cfg");
                write_tensors(
                    &d.join(WEIGHTS_FILE),
                    &[
                        (&format!("{q}.lora_A.weight"), vec![4, 100]),
                        (&format!("{q}.lora_B.weight"), vec![576, 4]),
                    ],
                );
            }),
            "has shape [4, 100]",
        ),
        (
            "unknown-module",
            Box::new(|d: &Path| {
                std::fs::create_dir(d).expect("mkdir");
                std::fs::write(d.join(CONFIG_FILE), config_text(4)).expect("cfg");
                write_tensors(
                    &d.join(WEIGHTS_FILE),
                    &[(
                        "base_model.model.model.layers.1.self_attn.qkv_proj.lora_A.weight",
                        vec![4, 576],
                    )],
                );
            }),
            "qkv_proj",
        ),
        (
            "layer-beyond",
            Box::new(|d: &Path| {
                std::fs::create_dir(d).expect("mkdir");
                std::fs::write(d.join(CONFIG_FILE), config_text(4)).expect("cfg");
                write_tensors(
                    &d.join(WEIGHTS_FILE),
                    &[
                        (
                            "base_model.model.model.layers.30.self_attn.q_proj.lora_A.weight",
                            vec![4, 576],
                        ),
                        (
                            "base_model.model.model.layers.30.self_attn.q_proj.lora_B.weight",
                            vec![576, 4],
                        ),
                    ],
                );
            }),
            "layer 30, but the model has 30 layers",
        ),
        (
            "half-pair",
            Box::new(move |d: &Path| {
                std::fs::create_dir(d).expect("mkdir");
                std::fs::write(d.join(CONFIG_FILE), config_text(4)).expect("cfg");
                write_tensors(
                    &d.join(WEIGHTS_FILE),
                    &[(&format!("{q}.lora_A.weight"), vec![4, 576])],
                );
            }),
            "no lora_B",
        ),
        (
            "not-safetensors",
            Box::new(|d: &Path| {
                std::fs::create_dir(d).expect("mkdir");
                std::fs::write(d.join(CONFIG_FILE), config_text(4)).expect("cfg");
                std::fs::write(
                    d.join(WEIGHTS_FILE),
                    b"\xff\xff\xff\xff\xff\xff\xff\x7fgarbage",
                )
                .expect("w");
            }),
            "not a safetensors file",
        ),
    ];
    for (name, make, words) in cases {
        let dir = root.path().join(name);
        make(&dir);
        let err = load_peft(&dir, c).expect_err(name);
        assert!(matches!(err, EngineError::Adapter { .. }), "{name}: {err}");
        assert!(err.is_input_error(), "{name}");
        let text = err.to_string();
        assert!(text.contains(words), "{name}: {text}");
        assert!(
            text.contains(name),
            "{name}: the message names the directory: {text}"
        );
    }
}

#[test]
fn zero_b_adapter_leaves_the_logits_bit_identical() {
    let base = common::loaded();
    let tokens = base.tokenizer.encode(TEXT, false);
    let c = base.llama.config.clone();
    let dir = tempfile::tempdir().expect("dir");
    // As a trainer starts: A random, B zero, every projection of every layer.
    let zero = LoraAdapter::init(&c, 8, 16.0, &Projection::ALL, 1);
    save(&zero, dir.path(), &c);
    let adapted =
        LoadedModel::load_with_adapter(&common::model_path(), Some(dir.path())).expect("adapted");
    assert!(adapted.llama.has_adapter());
    let (a, b) = (logprobs(&base, &tokens), logprobs(&adapted, &tokens));
    let bits = |v: &[Vec<f32>]| -> Vec<u32> { v.iter().flatten().map(|x| x.to_bits()).collect() };
    assert_eq!(bits(&a), bits(&b));
}

/// The adapter as a side product against the same adapter merged into the
/// weights by the export (merge, encoder, writer, and the engine's plain
/// path on the file), on a base of each export type: the adapter moves the
/// log-probs by far more than the two ways of applying it differ. The base
/// is the default model re-encoded to that type, so both sides start from
/// the same weights.
#[test]
fn side_product_agrees_with_the_merged_export() {
    let source = common::model_path();
    let base = common::loaded();
    let c = base.llama.config.clone();
    let tokens = base.tokenizer.encode(TEXT, false);
    let dir = tempfile::tempdir().expect("dir");
    let adapter = random_adapter(&c, &[0, 3, 7, 15, 28], 0.2, 21);
    let adapter_dir = dir.path().join("adapter");
    save(&adapter, &adapter_dir, &c);
    for ty in [ExportType::F16, ExportType::Q8_0] {
        let plain_path = dir.path().join(format!("plain-{}.gguf", ty.name()));
        export_gguf(&source, None, &plain_path, ty).expect("export");
        let merged_path = dir.path().join(format!("merged-{}.gguf", ty.name()));
        let summary = export_gguf(&plain_path, Some(&adapter), &merged_path, ty).expect("export");
        assert_eq!(summary.merged, 5 * 7);
        let plain = LoadedModel::load(&plain_path).expect("plain loads");
        let merged = LoadedModel::load(&merged_path).expect("merged loads");
        let side = LoadedModel::load_with_adapter(&plain_path, Some(&adapter_dir)).expect("side");

        let lp_plain = logprobs(&plain, &tokens);
        let lp_side = logprobs(&side, &tokens);
        let lp_merged = logprobs(&merged, &tokens);
        let effect = mean_top_gap(&lp_side, &lp_plain);
        let disagreement = mean_top_gap(&lp_side, &lp_merged);
        eprintln!(
            "{}: adapter effect {effect:.3} (max {:.3}), side product vs merged {disagreement:.4} \
             (max {:.4})",
            ty.name(),
            max_gap(&lp_side, &lp_plain),
            max_gap(&lp_side, &lp_merged)
        );
        assert!(effect > 0.5, "the adapter changes the model: {effect}");
        // F16 keeps W + ΔW to 11 bits: the two agree to rounding. Q8_0
        // rounds every value of the five merged layers' matrices afresh
        // (steps of max|w|/127 per 32 values), which this small model feels
        // about as much as re-encoding the base itself (Q4_1 → Q8_0 moves it
        // by ~0.4 on this measure), so its bound is looser.
        let bound = match ty {
            ExportType::F16 => effect / 100.0,
            ExportType::Q8_0 => effect / 2.0,
        };
        assert!(
            disagreement < bound,
            "{}: {disagreement} vs {effect}",
            ty.name()
        );
    }
}

/// One merged matrix of the Q8_0 export against an independent computation:
/// the source's weights dequantized by candle plus scale · B · A summed in
/// f64; every value is within half a Q8_0 step of its block (plus what
/// rounding the step to f16 adds over 127 steps: 127 · d · 2⁻¹¹).
#[test]
fn merged_matrix_is_w_plus_scaled_ba_within_q8_0_rounding() {
    let base = common::loaded();
    let c = base.llama.config.clone();
    let adapter = random_adapter(&c, &[2], 0.2, 8);
    let dir = tempfile::tempdir().expect("dir");
    let out = dir.path().join("m.gguf");
    export_gguf(
        &common::model_path(),
        Some(&adapter),
        &out,
        ExportType::Q8_0,
    )
    .expect("export");
    let src = GgufFile::open(&common::model_path()).expect("src");
    let dst = GgufFile::open(&out).expect("dst");
    for p in [Projection::K, Projection::Down] {
        let name = format!("blk.2.{}.weight", p.gguf_name());
        let w = src.tensor_f32(&name).expect("w");
        let got = dst.tensor_f32(&name).expect("merged");
        let raw = dst.tensor_bytes(&name).expect("bytes");
        let pair = &adapter.pairs[&(2, p)];
        let (n, k, r) = (pair.n, pair.k, adapter.rank);
        let scale = adapter.alpha as f64 / r as f64;
        let mut moved = 0f64;
        for i in 0..n {
            for j in 0..k {
                let delta: f64 = (0..r)
                    .map(|t| pair.b[i * r + t] as f64 * pair.a[t * k + j] as f64)
                    .sum::<f64>()
                    * scale;
                let want = w[i * k + j] as f64 + delta;
                let block = (i * k + j) / 32;
                let d = half::f16::from_le_bytes([raw[block * 34], raw[block * 34 + 1]]).to_f64();
                let err = (got[i * k + j] as f64 - want).abs();
                assert!(
                    err <= d * (0.5 + 127.0 / 2048.0) + 1e-7,
                    "{name}[{i},{j}]: {err} > {d}/2"
                );
                moved = moved.max(delta.abs());
            }
        }
        assert!(
            moved > 1e-3,
            "{name}: the adapter changes the matrix ({moved})"
        );
    }
    // Layers the adapter does not touch are the source's values re-encoded.
    let name = "blk.5.attn_q.weight";
    let (w, got) = (
        src.tensor_f32(name).expect("w"),
        dst.tensor_f32(name).expect("g"),
    );
    let amax = w.iter().fold(0f32, |m, v| m.max(v.abs()));
    assert!(w
        .iter()
        .zip(&got)
        .all(|(a, b)| (a - b).abs() <= amax / 127.0));
}

/// With an adapter, a sequence's logits do not depend on what it is batched
/// with (the base engine's promise, kept by the side product).
#[test]
fn adapted_logits_do_not_depend_on_batching() {
    let base = common::loaded();
    let c = base.llama.config.clone();
    let dir = tempfile::tempdir().expect("dir");
    save(&random_adapter(&c, &[0, 10, 20], 0.2, 4), dir.path(), &c);
    let model =
        LoadedModel::load_with_adapter(&common::model_path(), Some(dir.path())).expect("adapted");
    let first = model.tokenizer.encode(TEXT, false);
    let second = model.tokenizer.encode(
        "A longer second sequence, which shares nothing with the first one at all.",
        false,
    );
    let mut kv = [KvCache::new(c.n_layer), KvCache::new(c.n_layer)];
    let [kv0, kv1] = &mut kv;
    let together = model.llama.forward(&mut [
        SeqStep {
            kv: kv1,
            tokens: &second,
            logits_from: 0,
            output: Default::default(),
        },
        SeqStep {
            kv: kv0,
            tokens: &first,
            logits_from: 0,
            output: Default::default(),
        },
    ]);
    let bits = |v: &[f32]| -> Vec<u32> { v.iter().map(|x| x.to_bits()).collect() };
    let mut kv = KvCache::new(c.n_layer);
    let single = model.llama.forward(&mut [SeqStep {
        kv: &mut kv,
        tokens: &first,
        logits_from: 0,
        output: Default::default(),
    }]);
    assert_eq!(bits(&together[1]), bits(&single[0]));
}
