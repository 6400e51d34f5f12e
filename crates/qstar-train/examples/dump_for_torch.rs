//! Writes what `scripts/check-trainer-torch.py` compares against Hugging Face
//! transformers + PEFT: the token ids of a fixed text, log p(next token) at
//! every position, the mean cross-entropy, and the gradient of that loss with
//! respect to every LoRA A and B tensor, keyed by PEFT's tensor names.
//!
//! Usage: `cargo run --release -p qstar-train --example dump_for_torch --
//! GGUF ADAPTER_DIR DUMP.json [TEXT]`
//!
//! The trainer keeps the query and key rows of B (and so of B's gradient)
//! in GGUF order; PEFT's files hold them in Hugging Face order. The
//! gradients of `q_proj`/`k_proj` B are reordered here the way `save_peft`
//! reorders B itself, so each dumped gradient lines up with PEFT's tensor.
//! A acts on the input and is not reordered.

use std::collections::BTreeMap;
use std::error::Error;
use std::path::PathBuf;

use qstar_engine::adapter::{gguf_row_of_hf_row, reorder_rows, LoraAdapter, Projection};
use qstar_train::weights::LoraPair;
use qstar_train::{cross_entropy, Lora, LoraConfig, Model, Sequence, Trainable, Weights};
use serde_json::{json, Map, Value};

const TEXT: &str = "Question: A baker makes 24 rolls in the morning and 18 in the \
afternoon. She sells 35 of them. How many rolls are left?\nAnswer: 24 + 18 = 42 \
rolls, and 42 - 35 = 7, so 7 rolls are left.\n#### 7";

/// The trainer's form of an engine adapter (the inverse of `Lora::to_adapter`).
/// Dropout is set to zero: the check compares deterministic passes.
fn lora_of_adapter(adapter: &LoraAdapter, n_layer: usize) -> Lora<f32> {
    let mut layers = vec![BTreeMap::new(); n_layer];
    for (&(layer, p), pair) in &adapter.pairs {
        layers[layer].insert(
            p,
            LoraPair {
                a: pair.a.clone(),
                b: pair.b.clone(),
            },
        );
    }
    let targets = adapter
        .targets()
        .iter()
        .map(|p| p.hf_name().to_string())
        .collect();
    Lora {
        config: LoraConfig {
            rank: adapter.rank,
            alpha: adapter.alpha,
            dropout: 0.0,
            targets,
        },
        layers,
    }
}

fn peft_name(layer: usize, p: Projection, which: char) -> String {
    format!(
        "base_model.model.model.layers.{layer}.{}.{}.lora_{which}.weight",
        p.hf_block(),
        p.hf_name()
    )
}

fn main() -> Result<(), Box<dyn Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.len() < 3 || args.len() > 4 {
        eprintln!("usage: dump_for_torch GGUF ADAPTER_DIR DUMP.json [TEXT]");
        std::process::exit(2);
    }
    let gguf = PathBuf::from(&args[0]);
    let adapter_dir = PathBuf::from(&args[1]);
    let out = PathBuf::from(&args[2]);
    let text = args.get(3).map(String::as_str).unwrap_or(TEXT);

    let loaded = qstar_engine::LoadedModel::load(&gguf)?;
    let tokens = loaded.tokenizer.encode(text, false);
    if tokens.len() < 2 {
        return Err("the text has fewer than two tokens".into());
    }
    let engine_config = loaded.llama.config.clone();
    drop(loaded);

    let (c, w) = Weights::from_gguf(&gguf)?;
    let adapter = qstar_engine::peft::load_peft(&adapter_dir, &engine_config)?;
    let lora = lora_of_adapter(&adapter, c.n_layer);
    let head_dim = c.head_dim();
    let model = Model::new(c, w, Some(lora))?;

    let seq = Sequence::all(tokens.clone());
    let count = seq.predicted();
    let (logps, tape) = model.forward(&[seq], 0)?;
    let (loss, dlogp) = cross_entropy(&logps, count);
    let mut grads = model.grads(Trainable::Lora);
    model.backward(tape, &dlogp, &mut grads)?;
    let glora = grads
        .lora
        .ok_or("the model has no adapter to differentiate")?;

    let rank = glora.config.rank;
    let mut tensors = Map::new();
    for (layer, pairs) in glora.layers.iter().enumerate() {
        for (&p, g) in pairs {
            let b = match p.permuted_heads(&engine_config) {
                Some(_) => reorder_rows(&g.b, rank, |hf| gguf_row_of_hf_row(hf, head_dim)),
                None => g.b.clone(),
            };
            let k = g.a.len() / rank;
            let n = b.len() / rank;
            tensors.insert(
                peft_name(layer, p, 'A'),
                json!({ "shape": [rank, k], "values": g.a }),
            );
            tensors.insert(
                peft_name(layer, p, 'B'),
                json!({ "shape": [n, rank], "values": b }),
            );
        }
    }
    let dump = json!({
        "text": text,
        "tokens": tokens,
        "logprobs": logps,
        "loss": loss,
        "lora_grads": Value::Object(tensors),
    });
    std::fs::write(&out, serde_json::to_vec(&dump)?)?;
    eprintln!(
        "{} tokens, loss {loss:.6}, {} gradient tensors → {}",
        tokens.len(),
        glora.layers.iter().map(|l| 2 * l.len()).sum::<usize>(),
        out.display()
    );
    Ok(())
}
