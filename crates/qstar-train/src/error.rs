use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum TrainError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: {reason}")]
    Format { path: PathBuf, reason: String },
    /// A bad row, flag or config: the user's to fix (exit 2 in the binary).
    #[error("{0}")]
    Input(String),
    #[error(
        "{dir} holds a run with another configuration ({reason}); use another --out or remove it"
    )]
    OtherRun { dir: PathBuf, reason: String },
    #[error(transparent)]
    Model(#[from] qstar_engine::EngineError),
    #[error("{0}")]
    Internal(String),
}

impl TrainError {
    pub fn is_input_error(&self) -> bool {
        match self {
            TrainError::Input(_) | TrainError::OtherRun { .. } | TrainError::Format { .. } => true,
            TrainError::Model(e) => e.is_input_error(),
            _ => false,
        }
    }
}
