//! qstar's embedded inference engine: GGUF models on the CPU, with batching
//! across callers and reuse of shared prompt prefixes.

pub mod adapter;
pub mod chat;
mod engine;
pub mod error;
pub mod fetch;
pub mod gguf;
pub mod gguf_write;
// SIMD intrinsics: the one module where `unsafe` is allowed.
#[allow(unsafe_code)]
pub mod kernels;
pub mod llama;
pub mod model;
pub mod numerics;
pub mod peft;
pub mod prefix_cache;
pub mod sampling;
pub mod tokenizer;

pub use engine::{Embedding, Engine, EngineOptions, EngineStats, TokenSink};
pub use error::EngineError;
pub use model::{AdapterInfo, LoadedModel, ModelInfo};
