//! Which model a command talks to: the embedded engine (default) or
//! OpenAI-compatible servers.

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Result;
use clap::{Args, ValueEnum};
use qstar_core::LanguageModel;
use qstar_engine::{Engine, EngineOptions};

use crate::UsageError;

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum BackendKind {
    Embedded,
    Openai,
}

#[derive(Debug, Clone, Args)]
pub struct BackendArgs {
    /// GGUF model file (default: the fetched SmolLM2-135M-Instruct).
    #[arg(long, global = true)]
    pub model: Option<PathBuf>,
    #[arg(long, value_enum, default_value = "embedded")]
    pub backend: BackendKind,
    /// Server base URL, e.g. http://127.0.0.1:8080 (repeat to spread load).
    #[arg(long = "base-url")]
    pub base_url: Vec<String>,
    /// Model name sent to the server.
    #[arg(long = "server-model", default_value = "default")]
    pub server_model: String,
    /// Environment variable that holds the server's API key.
    #[arg(long = "api-key-env", default_value = "OPENAI_API_KEY")]
    pub api_key_env: String,
    /// Requests in flight at once against the servers.
    #[arg(long, default_value_t = 8)]
    pub concurrency: usize,
    /// Threads of the embedded engine (0: one per core).
    #[arg(long, default_value_t = 0)]
    pub threads: usize,
}

impl BackendArgs {
    pub fn model_path(&self) -> PathBuf {
        self.model
            .clone()
            .unwrap_or_else(qstar_engine::fetch::default_model_path)
    }

    /// The model file, fetching the default model on first use.
    pub async fn ensure_model(&self) -> Result<PathBuf> {
        let path = self.model_path();
        if self.model.is_none() && !path.exists() {
            eprintln!("the default model is not in the cache yet; fetching it");
            qstar_engine::fetch::fetch_default(&|_, _| {}).await?;
        }
        Ok(path)
    }

    pub async fn engine(&self) -> Result<Engine> {
        let path = self.ensure_model().await?;
        let options = EngineOptions {
            threads: self.threads,
            ..EngineOptions::default()
        };
        Ok(Engine::load(&path, options)?)
    }

    pub async fn open(&self) -> Result<Arc<dyn LanguageModel>> {
        Ok(self.open_with_size().await?.0)
    }

    /// The model and its parameter count (for FLOP estimates; 0 when a
    /// server does not say).
    pub async fn open_with_size(&self) -> Result<(Arc<dyn LanguageModel>, u64)> {
        match self.backend {
            BackendKind::Embedded => {
                let engine = self.engine().await?;
                let parameters = engine.info().parameters as u64;
                Ok((Arc::new(engine), parameters))
            }
            BackendKind::Openai => {
                if self.base_url.is_empty() {
                    return Err(UsageError(
                        "--backend openai needs at least one --base-url".into(),
                    )
                    .into());
                }
                let config = qstar_openai::OpenAiConfig {
                    base_urls: self.base_url.clone(),
                    model: self.server_model.clone(),
                    api_key: std::env::var(&self.api_key_env).ok(),
                    concurrency: self.concurrency.max(1),
                    ..Default::default()
                };
                Ok((Arc::new(qstar_openai::OpenAiBackend::new(config)?), 0))
            }
        }
    }
}
