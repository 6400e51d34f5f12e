use std::path::PathBuf;

use thiserror::Error;

/// Errors of the embedded engine. Every variant names what the user must fix.
#[derive(Debug, Error)]
pub enum EngineError {
    #[error("model file {0} does not exist (run `qstar model fetch` for the default model)")]
    NotFound(PathBuf),
    #[error("{path} is not a GGUF file: {reason}")]
    NotGguf { path: PathBuf, reason: String },
    /// The file is GGUF but its header or its model is inconsistent.
    #[error("{path} is not a usable GGUF model: {reason}")]
    Malformed { path: PathBuf, reason: String },
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
                | EngineError::Malformed { .. }
                | EngineError::UnsupportedArchitecture(_)
                | EngineError::Metadata(_)
                | EngineError::PromptTooLong { .. }
        )
    }

    /// Names the model file in an error about its contents.
    pub(crate) fn in_file(self, path: &std::path::Path) -> EngineError {
        let reason = match &self {
            EngineError::Metadata(m) => m.clone(),
            EngineError::UnsupportedArchitecture(_) => self.to_string(),
            EngineError::Template(m) => format!("its chat template does not compile: {m}"),
            _ => return self,
        };
        EngineError::Malformed {
            path: path.to_path_buf(),
            reason,
        }
    }
}
