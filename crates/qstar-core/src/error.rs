use thiserror::Error;

/// What can go wrong when a pipeline talks to a model.
#[derive(Debug, Error)]
pub enum ModelError {
    /// The request itself is wrong (empty option list, prompt longer than the
    /// context, …). Retrying will not help; the user must change the input.
    #[error("invalid request: {0}")]
    InvalidRequest(String),
    /// The backend cannot do what was asked. Never silently emulated.
    #[error("backend `{backend}` does not support {capability}")]
    Unsupported { backend: String, capability: String },
    /// The backend failed (server error after retries, engine stopped, …).
    #[error("backend `{backend}` failed: {message}")]
    Backend { backend: String, message: String },
}

impl ModelError {
    /// True when the failure is the caller's input, not the backend's health;
    /// the CLI maps these to exit code 2.
    pub fn is_input_error(&self) -> bool {
        matches!(self, ModelError::InvalidRequest(_))
    }
}
