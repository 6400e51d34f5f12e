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

impl LoadedModel {
    pub fn load(path: &Path) -> Result<Self, EngineError> {
        let gguf = GgufFile::open(path)?;
        let tokenizer = Tokenizer::from_gguf(&gguf)?;
        let llama = Llama::load(&gguf)?;
        if tokenizer.vocab_size() != llama.config.n_vocab {
            return Err(EngineError::Metadata(format!(
                "tokenizer has {} tokens but the embedding has {} rows",
                tokenizer.vocab_size(),
                llama.config.n_vocab
            )));
        }
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
