//! Shared vocabulary of qstar: requests and answers of language models, the
//! [`LanguageModel`] trait every backend implements, and its error type.
//!
//! Pipelines depend on this crate only, so the same labeling or search code
//! runs on the embedded engine, on one remote server or on a fleet of them.

mod error;
pub mod labels;
mod model;
mod prompt;
mod prompt_dir;
mod rng;
pub mod shared_data;
mod types;

pub use error::ModelError;
pub use model::{Capabilities, LanguageModel};
pub use prompt::PromptFormat;
pub use prompt_dir::{prompt_files, TemplateSet};
pub use rng::{mix, SplitMix};
pub use types::*;
