//! A GGUF model loaded for inference: weights, tokenizer and chat template.

use std::collections::BTreeMap;
use std::path::Path;

use serde::Serialize;

use crate::chat::ChatTemplate;
use crate::error::EngineError;
use crate::gguf::GgufFile;
use crate::llama::{Llama, LlamaConfig};
use crate::tokenizer::Tokenizer;

pub struct LoadedModel {
    pub llama: Llama,
    pub tokenizer: Tokenizer,
    pub chat: Option<ChatTemplate>,
    pub info: ModelInfo,
}

/// What `qstar model info` shows about a model file.
#[derive(Debug, Clone, Serialize)]
pub struct ModelInfo {
    pub path: String,
    pub file_bytes: u64,
    pub name: Option<String>,
    pub architecture: String,
    pub parameters: usize,
    pub config: LlamaConfig,
    /// Tensor count by storage type, e.g. {"Q4_1": 210, "F32": 61}.
    pub tensor_types: BTreeMap<String, usize>,
    /// GGUF `general.file_type` as llama.cpp names it.
    pub quantization: String,
    pub context_length: usize,
    pub vocab_size: usize,
    pub pre_tokenizer: String,
    pub add_bos_token: bool,
    pub bos_token: Option<SpecialToken>,
    pub eos_token: Option<SpecialToken>,
    pub special_tokens: Vec<SpecialToken>,
    pub chat_template: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct SpecialToken {
    pub id: u32,
    pub text: String,
}

fn file_type_name(ft: u64) -> String {
    match ft {
        0 => "F32",
        1 => "F16",
        2 => "Q4_0",
        3 => "Q4_1",
        7 => "Q8_0",
        8 => "Q5_0",
        9 => "Q5_1",
        10 => "Q2_K",
        11 => "Q3_K_S",
        12 => "Q3_K_M",
        13 => "Q3_K_L",
        14 => "Q4_K_S",
        15 => "Q4_K_M",
        16 => "Q5_K_S",
        17 => "Q5_K_M",
        18 => "Q6_K",
        32 => "BF16",
        _ => return format!("type {ft}"),
    }
    .to_string()
}

/// Longest context a model may declare: RoPE tables and KV budgets are sized
/// from it, and no llama-architecture model needs more.
pub const MAX_CONTEXT: usize = 1 << 20;
/// Largest RoPE table a model may need (a million positions × 128 rotated
/// dimensions).
const MAX_ROPE_TABLE_BYTES: usize = 512 << 20;

/// Checks the model's hyper-parameters and every tensor's shape against each
/// other, from the header alone, before any weight is read.
fn check_layout(g: &GgufFile, c: &LlamaConfig) -> Result<(), EngineError> {
    let bad = |m: String| Err(EngineError::Metadata(m));
    if c.n_embd == 0 || c.n_ff == 0 || c.n_layer == 0 || c.n_vocab == 0 {
        return bad(format!(
            "embedding width {}, feed-forward width {}, {} layers and {} tokens: none may be 0",
            c.n_embd, c.n_ff, c.n_layer, c.n_vocab
        ));
    }
    if c.context_length == 0 || c.context_length > MAX_CONTEXT {
        return bad(format!(
            "`llama.context_length` is {}; it must be between 1 and {MAX_CONTEXT}",
            c.context_length
        ));
    }
    // cos and sin for every position and rotated pair, in f32.
    let rope_bytes = c.context_length as u128 * c.n_rot as u128 * 4;
    if rope_bytes > MAX_ROPE_TABLE_BYTES as u128 {
        return bad(format!(
            "a context of {} tokens with {} rotated dimensions per head needs a RoPE table \
             of {} MiB (at most {} MiB allowed)",
            c.context_length,
            c.n_rot,
            rope_bytes >> 20,
            MAX_ROPE_TABLE_BYTES >> 20
        ));
    }
    if !c.n_rot.is_multiple_of(2) {
        return bad(format!(
            "RoPE rotates {} dimensions per head; it must be an even number",
            c.n_rot
        ));
    }
    if !(c.rope_base.is_finite() && c.rope_base > 0.0) {
        return bad(format!(
            "RoPE base {} is not a positive number",
            c.rope_base
        ));
    }
    if !(c.rms_eps.is_finite() && c.rms_eps >= 0.0) {
        return bad(format!(
            "RMSNorm epsilon {} is not a non-negative number",
            c.rms_eps
        ));
    }
    let expect = |name: &str, want: &[usize]| -> Result<(), EngineError> {
        match g.tensor_info(name) {
            None => bad(format!("missing tensor `{name}`")),
            Some((_, dims)) if dims != want => bad(format!(
                "tensor `{name}` has shape {dims:?}, but the metadata implies {want:?}"
            )),
            Some(_) => Ok(()),
        }
    };
    let (d, kv, ff) = (c.n_embd, c.kv_dim(), c.n_ff);
    expect("token_embd.weight", &[c.n_vocab, d])?;
    if g.tensor_info("output.weight").is_some() {
        expect("output.weight", &[c.n_vocab, d])?;
    }
    expect("output_norm.weight", &[d])?;
    for i in 0..c.n_layer {
        let p = |s: &str| format!("blk.{i}.{s}.weight");
        expect(&p("attn_norm"), &[d])?;
        expect(&p("attn_q"), &[c.n_head * c.head_dim, d])?;
        expect(&p("attn_k"), &[kv, d])?;
        expect(&p("attn_v"), &[kv, d])?;
        expect(&p("attn_output"), &[d, c.n_head * c.head_dim])?;
        expect(&p("ffn_norm"), &[d])?;
        expect(&p("ffn_gate"), &[ff, d])?;
        expect(&p("ffn_up"), &[ff, d])?;
        expect(&p("ffn_down"), &[d, ff])?;
    }
    Ok(())
}

impl LoadedModel {
    /// Loads a model; any problem with the file is an error naming it.
    pub fn load(path: &Path) -> Result<Self, EngineError> {
        Self::load_inner(path).map_err(|e| e.in_file(path))
    }

    fn load_inner(path: &Path) -> Result<Self, EngineError> {
        let gguf = GgufFile::open(path)?;
        let config = LlamaConfig::from_gguf(&gguf)?;
        check_layout(&gguf, &config)?;
        let tokenizer = Tokenizer::from_gguf(&gguf)?;
        if tokenizer.vocab_size() != config.n_vocab {
            return Err(EngineError::Metadata(format!(
                "tokenizer has {} tokens but the embedding has {} rows",
                tokenizer.vocab_size(),
                config.n_vocab
            )));
        }
        let llama = Llama::load(&gguf)?;
        let special = |id: Option<u32>| {
            id.map(|id| SpecialToken {
                id,
                text: tokenizer.token_text(id),
            })
        };
        let template_source = if gguf.has("tokenizer.chat_template") {
            Some(gguf.string("tokenizer.chat_template")?)
        } else {
            None
        };
        let bos_text = special(tokenizer.bos).map(|t| t.text).unwrap_or_default();
        let eos_text = special(tokenizer.eos).map(|t| t.text).unwrap_or_default();
        let chat = template_source
            .as_deref()
            .map(|src| ChatTemplate::new(src, &bos_text, &eos_text))
            .transpose()?;
        let mut tensor_types = BTreeMap::new();
        for name in gguf.tensor_names() {
            if let Some((dtype, _)) = gguf.tensor_info(name) {
                *tensor_types.entry(format!("{dtype:?}")).or_insert(0) += 1;
            }
        }
        let info = ModelInfo {
            path: path.display().to_string(),
            file_bytes: gguf.file_len(),
            name: gguf.string("general.name").ok(),
            architecture: "llama".into(),
            parameters: llama.parameter_count(),
            config: llama.config.clone(),
            tensor_types,
            quantization: gguf
                .uint("general.file_type")
                .map(file_type_name)
                .unwrap_or_else(|_| "unknown".into()),
            context_length: llama.config.context_length,
            vocab_size: tokenizer.vocab_size(),
            pre_tokenizer: tokenizer.pre_name.clone(),
            add_bos_token: tokenizer.add_bos,
            bos_token: special(tokenizer.bos),
            eos_token: special(tokenizer.eos),
            special_tokens: tokenizer
                .special_tokens()
                .into_iter()
                .map(|(text, id)| SpecialToken { id, text })
                .collect(),
            chat_template: template_source,
        };
        Ok(LoadedModel {
            llama,
            tokenizer,
            chat,
            info,
        })
    }
}
