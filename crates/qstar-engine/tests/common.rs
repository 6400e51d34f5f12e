//! Shared helpers of the engine's end-to-end tests: the real default model
//! (fetched with `qstar model fetch`) and the shared reference data.

#![allow(dead_code)]

use std::path::PathBuf;
use std::sync::OnceLock;

use qstar_engine::{Engine, EngineOptions, LoadedModel};

pub fn model_path() -> PathBuf {
    let path = qstar_engine::fetch::default_model_path();
    assert!(
        path.exists(),
        "the default model is missing at {}; run `cargo run --release -- model fetch` first",
        path.display()
    );
    path
}

/// One loaded model shared by the tests of a binary (loading takes a second).
pub fn loaded() -> std::sync::Arc<LoadedModel> {
    static MODEL: OnceLock<std::sync::Arc<LoadedModel>> = OnceLock::new();
    MODEL
        .get_or_init(|| std::sync::Arc::new(LoadedModel::load(&model_path()).expect("model loads")))
        .clone()
}

pub fn engine() -> Engine {
    Engine::start(loaded(), EngineOptions::default())
}

pub fn engine_with(options: EngineOptions) -> Engine {
    Engine::start(loaded(), options)
}

/// The llama.cpp reference log-probs, or `None` (the test is skipped, or
/// fails where CI requires the shared data) when they are not there.
pub fn golden(test: &str) -> Option<serde_json::Value> {
    let path = qstar_core::shared_data::shared_file_or_skip(
        test,
        "golden/smollm2_135m_q4_1_llamacpp.json",
    )?;
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
    Some(serde_json::from_str(&text).expect("golden JSON"))
}

pub fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime")
}
