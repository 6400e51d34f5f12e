//! qstar's trainer: one llama of any size with each operation's forward and
//! backward pass side by side, LoRA adapters, AdamW, and resumable runs.

pub mod checkpoint;
pub mod config;
pub mod data;
pub mod dpo;
pub mod error;
pub mod export;
// The call into the GEMM crate: the one module where `unsafe` is allowed.
#[allow(unsafe_code)]
pub mod gemm;
pub mod head_objectives;
pub mod model;
pub mod ops;
pub mod optim;
pub mod process_reward;
pub mod real;
pub mod reward;
pub mod rng;
pub mod run;
pub mod score_head;
pub mod weights;

pub use config::ModelConfig;
pub use error::TrainError;
pub use model::{cross_entropy, Grads, Model, Sequence, Trainable};
pub use real::Real;
pub use run::{train, StepRecord, Summary, TrainConfig};
pub use weights::{Lora, LoraConfig, Weights};
