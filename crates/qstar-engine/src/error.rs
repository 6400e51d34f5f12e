use std::path::PathBuf;

use thiserror::Error;

/// Errors of the embedded engine. Every variant names what the user must fix.
#[derive(Debug, Error)]
pub enum EngineError {
    #[error("model file {0} does not exist (run `qstar model fetch` for the default model)")]
    NotFound(PathBuf),
    #[error("{path} is not a GGUF file: {reason}")]
    NotGguf { path: PathBuf, reason: String },
    #[error("{path} is truncated: tensor `{tensor}` ends at byte {needed} but the file has {actual} bytes")]
    Truncated {
        path: PathBuf,
        tensor: String,
        needed: u64,
        actual: u64,
    },
    #[error("unsupported model architecture `{0}` (qstar's engine runs `llama`)")]
    UnsupportedArchitecture(String),
    #[error("malformed model metadata: {0}")]
    Metadata(String),
    #[error("chat template error: {0}")]
    Template(String),
    #[error("prompt has {tokens} tokens but the context holds {context}")]
    PromptTooLong { tokens: usize, context: usize },
    #[error("model download failed: {0}")]
    Fetch(String),
    #[error("I/O error on {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

impl EngineError {
    /// True when the user's input (a path, a file, a prompt) is at fault.
    pub fn is_input_error(&self) -> bool {
        matches!(
            self,
            EngineError::NotFound(_)
                | EngineError::NotGguf { .. }
                | EngineError::Truncated { .. }
                | EngineError::UnsupportedArchitecture(_)
                | EngineError::Metadata(_)
                | EngineError::PromptTooLong { .. }
        )
    }
}
