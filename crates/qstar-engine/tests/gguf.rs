//! Hostile GGUF files: every corruption of a small valid model is an error
//! that names the file and what is wrong, never a panic, a wrapped offset or
//! an allocation sized by a lie in the header.

mod tiny_gguf;

use std::path::Path;

use qstar_core::{GenerateRequest, LanguageModel, SamplingParams};
use qstar_engine::{Engine, EngineOptions, LoadedModel};
use tiny_gguf::{Gguf, Val, KV_DIM, N_EMBD, N_FF};

/// Loads the file, expecting an input error that names it and says `why`.
fn rejected(dir: &Path, model: &Gguf, why: &str) {
    let path = model.write(dir, "bad.gguf");
    let err = match LoadedModel::load(&path) {
        Ok(_) => panic!("a model that should fail ({why}) loaded"),
        Err(e) => e,
    };
    let msg = err.to_string();
    assert!(err.is_input_error(), "not an input error: {msg}");
    assert!(
        msg.contains(&path.display().to_string()),
        "the message does not name the file: {msg}"
    );
    assert!(msg.contains(why), "expected {why:?} in: {msg}");
}

#[test]
fn the_tiny_model_loads_and_runs() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = Gguf::tiny_llama().write(dir.path(), "tiny.gguf");
    let model = LoadedModel::load(&path).expect("the tiny model loads");
    assert_eq!(model.info.vocab_size, 258);
    assert_eq!(model.info.context_length, 64);
    let engine = Engine::start(std::sync::Arc::new(model), EngineOptions::default());
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("runtime");
    let out = rt
        .block_on(engine.generate(vec![GenerateRequest::new(
            "ab ab",
            SamplingParams {
                max_tokens: 5,
                ignore_eos: true,
                ..Default::default()
            },
        )]))
        .expect("generates");
    assert_eq!(out[0].completions[0].token_ids.len(), 5);
}

#[test]
fn alignment_zero_or_not_a_power_of_two() {
    let dir = tempfile::tempdir().expect("tempdir");
    for a in [0u32, 3, 48] {
        let mut m = Gguf::tiny_llama();
        m.set("general.alignment", Val::U32(a));
        rejected(dir.path(), &m, "`general.alignment`");
    }
    let mut m = Gguf::tiny_llama();
    m.set("general.alignment", Val::Str("32".into()));
    rejected(dir.path(), &m, "`general.alignment`");
}

#[test]
fn offsets_that_wrap_around_are_caught() {
    let dir = tempfile::tempdir().expect("tempdir");
    let m = Gguf::tiny_llama();
    let data_start = m.header_len().div_ceil(32) * 32;
    // data_start + offset wraps to 0: unchecked, the tensor would be read
    // from the header's bytes.
    let mut wrap_to_zero = m.clone();
    wrap_to_zero.tensor("output_norm.weight").offset = Some(0u64.wrapping_sub(data_start));
    rejected(dir.path(), &wrap_to_zero, "`output_norm.weight`");
    let mut huge = m.clone();
    huge.tensor("blk.0.attn_q.weight").offset = Some(u64::MAX - 31);
    rejected(dir.path(), &huge, "`blk.0.attn_q.weight`");
    let mut unaligned = m.clone();
    unaligned.tensor("blk.0.attn_q.weight").offset = Some(4);
    rejected(dir.path(), &unaligned, "not a multiple of the alignment");
}

#[test]
fn dimension_products_that_overflow_are_caught() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut m = Gguf::tiny_llama();
    // 2^32 · 2^32 wraps to 0 elements in 64 bits.
    m.tensor("blk.0.ffn_up.weight").ne = vec![1 << 32, 1 << 32];
    rejected(dir.path(), &m, "`blk.0.ffn_up.weight`");
    let mut m = Gguf::tiny_llama();
    m.tensor("blk.0.ffn_up.weight").ne = vec![u64::MAX, 2];
    rejected(dir.path(), &m, "`blk.0.ffn_up.weight`");
    let mut m = Gguf::tiny_llama();
    m.tensor("blk.0.ffn_up.weight").ne = vec![8, 16, 1, 1, 1];
    rejected(dir.path(), &m, "dimensions");
}

#[test]
fn truncated_files_and_tensors_past_the_end() {
    let dir = tempfile::tempdir().expect("tempdir");
    let bytes = Gguf::tiny_llama().bytes();
    for keep in [3usize, 10, 30, 200, bytes.len() / 2, bytes.len() - 1] {
        let path = dir.path().join("cut.gguf");
        std::fs::write(&path, &bytes[..keep]).expect("write");
        let err = LoadedModel::load(&path).err().expect("a cut file fails");
        assert!(err.is_input_error(), "{err}");
        assert!(
            err.to_string().contains(&path.display().to_string()),
            "{err}"
        );
    }
    let mut m = Gguf::tiny_llama();
    m.tensor("blk.0.ffn_down.weight").ne = vec![N_FF, N_EMBD * 1000];
    rejected(dir.path(), &m, "beyond the end of the file");
}

#[test]
fn absurd_lengths_and_counts_allocate_nothing() {
    let dir = tempfile::tempdir().expect("tempdir");
    // A string that claims 2^63 bytes.
    let mut m = Gguf::tiny_llama();
    m.set(
        "general.name",
        Val::Raw(8, (1u64 << 63).to_le_bytes().to_vec()),
    );
    rejected(dir.path(), &m, "bytes long");
    // An array that claims 2^60 strings.
    let mut body = 8u32.to_le_bytes().to_vec();
    body.extend((1u64 << 60).to_le_bytes());
    let mut m = Gguf::tiny_llama();
    m.set("tokenizer.ggml.merges", Val::Raw(9, body));
    rejected(dir.path(), &m, "array `tokenizer.ggml.merges`");
    // Arrays nested without end.
    let mut nested = Vec::new();
    for _ in 0..64 {
        nested.extend(9u32.to_le_bytes());
        nested.extend(1u64.to_le_bytes());
    }
    nested.extend(4u32.to_le_bytes());
    nested.extend(0u64.to_le_bytes());
    let mut m = Gguf::tiny_llama();
    m.set("general.nested", Val::Raw(9, nested));
    rejected(dir.path(), &m, "nests arrays");
    // Header counts beyond what the file could hold.
    let mut bytes = Gguf::tiny_llama().bytes();
    bytes[8..16].copy_from_slice(&u64::MAX.to_le_bytes());
    let path = dir.path().join("count.gguf");
    std::fs::write(&path, &bytes).expect("write");
    let err = LoadedModel::load(&path).err().expect("fails");
    assert!(err.to_string().contains("tensor table"), "{err}");
    let mut m = Gguf::tiny_llama();
    m.set("general.flag", Val::Raw(7, vec![2]));
    rejected(dir.path(), &m, "boolean");
    let mut m = Gguf::tiny_llama();
    m.set("general.odd", Val::Raw(99, vec![0; 8]));
    rejected(dir.path(), &m, "unknown value type");
}

#[test]
fn an_absurd_context_length_is_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    for ctx in [0u64, 1 << 40, u64::MAX] {
        let mut m = Gguf::tiny_llama();
        m.set("llama.context_length", Val::U64(ctx));
        rejected(dir.path(), &m, "context_length");
    }
}

#[test]
fn every_tensor_shape_is_checked_against_the_header() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (d, ff, kv) = (N_EMBD, N_FF, KV_DIM);
    let cases: &[(&str, &[u64])] = &[
        // Input widths (ggml's first dimension) of every projection.
        ("blk.0.attn_q.weight", &[d + 8, d]),
        ("blk.0.attn_k.weight", &[d * 2, kv]),
        ("blk.0.attn_v.weight", &[d * 2, kv]),
        ("blk.0.attn_output.weight", &[d * 2, d]),
        ("blk.0.ffn_gate.weight", &[d * 2, ff]),
        ("blk.0.ffn_up.weight", &[d * 2, ff]),
        ("blk.0.ffn_down.weight", &[ff * 2, d]),
        // Output widths.
        ("blk.0.attn_q.weight", &[d, d * 2]),
        ("blk.0.attn_k.weight", &[d, kv * 2]),
        ("blk.0.attn_output.weight", &[d, d * 2]),
        ("blk.0.ffn_down.weight", &[ff, d * 2]),
        // Embedding width and norms.
        ("token_embd.weight", &[d * 2, 258]),
        ("blk.0.attn_norm.weight", &[d * 2]),
        ("output_norm.weight", &[d, 1]),
    ];
    for (name, ne) in cases {
        let mut m = Gguf::tiny_llama();
        m.reshape(name, ne);
        rejected(dir.path(), &m, &format!("`{name}` has shape"));
    }
    // A tied output given with the wrong vocabulary.
    let mut m = Gguf::tiny_llama();
    let mut output = m.tensor("token_embd.weight").clone();
    output.name = "output.weight".into();
    m.tensors.push(output);
    m.reshape("output.weight", &[d, 100]);
    rejected(dir.path(), &m, "`output.weight` has shape");
    // Head counts that do not divide the width.
    let mut m = Gguf::tiny_llama();
    m.set("llama.attention.head_count", Val::U32(3));
    rejected(dir.path(), &m, "heads");
    let mut m = Gguf::tiny_llama();
    m.set("llama.attention.head_count_kv", Val::U32(0));
    rejected(dir.path(), &m, "heads");
    let mut m = Gguf::tiny_llama();
    m.remove("blk.0.ffn_gate.weight");
    m.tensors.retain(|t| t.name != "blk.0.ffn_gate.weight");
    rejected(dir.path(), &m, "missing tensor `blk.0.ffn_gate.weight`");
    let mut m = Gguf::tiny_llama();
    m.set("llama.block_count", Val::U32(2));
    rejected(dir.path(), &m, "missing tensor `blk.1.attn_norm.weight`");
}

#[test]
fn special_token_ids_lie_inside_the_vocabulary() {
    let dir = tempfile::tempdir().expect("tempdir");
    for key in [
        "tokenizer.ggml.bos_token_id",
        "tokenizer.ggml.eos_token_id",
        "tokenizer.ggml.eot_token_id",
        "tokenizer.ggml.padding_token_id",
    ] {
        let mut m = Gguf::tiny_llama();
        m.set(key, Val::U32(258));
        rejected(dir.path(), &m, &format!("`{key}` is 258"));
    }
    let mut m = Gguf::tiny_llama();
    m.set("tokenizer.ggml.bos_token_id", Val::U64(1 << 32));
    rejected(dir.path(), &m, "outside the vocabulary");
    let mut m = Gguf::tiny_llama();
    m.set("tokenizer.ggml.token_type", Val::I32s(vec![1; 10]));
    rejected(dir.path(), &m, "`tokenizer.ggml.token_type` has 10 entries");
    let mut m = Gguf::tiny_llama();
    m.set("tokenizer.ggml.tokens", Val::Strs(vec!["a".into(); 300]));
    m.remove("tokenizer.ggml.token_type");
    rejected(dir.path(), &m, "tokenizer has 300 tokens");
}

#[test]
fn other_bad_files_name_the_file() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut m = Gguf::tiny_llama();
    m.set("general.architecture", Val::Str("mamba".into()));
    rejected(dir.path(), &m, "architecture `mamba`");
    let mut m = Gguf::tiny_llama();
    m.set("tokenizer.chat_template", Val::Str("{% for %}".into()));
    rejected(dir.path(), &m, "chat template");
    let mut m = Gguf::tiny_llama();
    m.version = 7;
    rejected(dir.path(), &m, "version 7");
    let mut m = Gguf::tiny_llama();
    m.kv.push(m.kv[0].clone());
    rejected(dir.path(), &m, "appears twice");
    let mut m = Gguf::tiny_llama();
    m.tensor("blk.0.attn_q.weight").ty = 77;
    rejected(dir.path(), &m, "unsupported ggml type 77");
    let path = dir.path().join("text.gguf");
    std::fs::write(&path, "hello").expect("write");
    let err = LoadedModel::load(&path).err().expect("fails");
    assert!(
        err.is_input_error() && err.to_string().contains("text.gguf"),
        "{err}"
    );
}
