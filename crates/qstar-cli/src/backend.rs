//! Which model a command talks to: the embedded engine (default) or
//! OpenAI-compatible servers.

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Result;
use clap::{Args, ValueEnum};
use qstar_core::LanguageModel;
use qstar_engine::{Engine, EngineOptions};

use crate::report::Reporter;
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
    /// LoRA adapter directory in PEFT's layout (adapter_config.json and
    /// adapter_model.safetensors), applied on top of the embedded model.
    #[arg(long, global = true)]
    pub adapter: Option<PathBuf>,
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
    /// Parameters of the server's model, for FLOP estimates (e.g. 135M,
    /// 7B, 1.5e9); without it they come from the server's model card, or
    /// are reported as unknown.
    #[arg(long = "server-params", value_parser = parse_parameter_count)]
    pub server_params: Option<u64>,
    /// Threads of the embedded engine (0: one per core).
    #[arg(long, default_value_t = 0)]
    pub threads: usize,
    /// Turn the embedded engine's prefix cache off (to measure what it
    /// saves).
    #[arg(long)]
    pub no_prefix_cache: bool,
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
            // A note on stderr, whatever the command's output mode.
            Reporter::default().note("the default model is not in the cache yet; fetching it");
            qstar_engine::fetch::fetch_default(&|_, _| {}).await?;
        }
        Ok(path)
    }

    /// The embedded engine's settings these flags ask for.
    fn engine_options(&self) -> EngineOptions {
        EngineOptions {
            threads: self.threads,
            prefix_cache: !self.no_prefix_cache,
            ..EngineOptions::default()
        }
    }

    pub async fn engine(&self) -> Result<Engine> {
        let path = self.ensure_model().await?;
        let options = self.engine_options();
        Ok(Engine::load_with_adapter(
            &path,
            self.adapter.as_deref(),
            options,
        )?)
    }

    /// The reference model of DPO's implicit reward, on the embedded engine:
    /// `ref_model` when given, else the model without `--adapter` (the
    /// policy a LoRA adapter was trained from); without either there is no
    /// reference to compare with.
    pub async fn reference_engine(&self, ref_model: Option<&std::path::Path>) -> Result<Engine> {
        let options = self.engine_options();
        match ref_model {
            Some(path) => Ok(Engine::load(path, options)?),
            None if self.adapter.is_some() && self.backend == BackendKind::Embedded => {
                Ok(Engine::load(&self.ensure_model().await?, options)?)
            }
            None if self.backend == BackendKind::Openai => Err(UsageError(
                "the implicit reward's reference runs on the embedded engine: give --ref-model"
                    .into(),
            )
            .into()),
            None => Err(UsageError(
                "the implicit reward compares a policy with its reference: give --adapter \
                 (the reference is then the model without it) or --ref-model"
                    .into(),
            )
            .into()),
        }
    }

    /// The SHA-256 of each file of the adapter (`None` without one), keyed
    /// by file name: what records made with the adapter depend on.
    pub fn adapter_sha256(&self, store: &qstar_store::Store) -> Result<Option<serde_json::Value>> {
        let Some(dir) = &self.adapter else {
            return Ok(None);
        };
        let mut hashes = serde_json::Map::new();
        for file in qstar_engine::peft::adapter_files(dir) {
            let name = file
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            let hash = store.file_sha256(&file).map_err(|e| {
                UsageError(format!(
                    "adapter {}: cannot read {name}: {e}",
                    dir.display()
                ))
            })?;
            hashes.insert(name, serde_json::Value::String(hash));
        }
        Ok(Some(serde_json::Value::Object(hashes)))
    }

    pub async fn open(&self) -> Result<Arc<dyn LanguageModel>> {
        match self.backend {
            BackendKind::Embedded => Ok(Arc::new(self.engine().await?)),
            BackendKind::Openai => Ok(Arc::new(self.server()?)),
        }
    }

    /// The model and its parameter count, for FLOP estimates: the engine's
    /// own; for servers `--server-params`, else the server's model card,
    /// else `None` (unknown).
    pub async fn open_with_size(&self) -> Result<(Arc<dyn LanguageModel>, Option<u64>)> {
        match self.backend {
            BackendKind::Embedded => {
                let engine = self.engine().await?;
                let parameters = engine.info().parameters as u64;
                Ok((Arc::new(engine), Some(parameters)))
            }
            BackendKind::Openai => {
                let server = self.server()?;
                let parameters = match self.server_params {
                    Some(n) => Some(n),
                    None => server.model_parameters().await,
                };
                Ok((Arc::new(server), parameters))
            }
        }
    }

    fn server(&self) -> Result<qstar_openai::OpenAiBackend> {
        if self.adapter.is_some() {
            return Err(UsageError(
                "--adapter applies a LoRA adapter to the embedded engine; with --backend openai \
                 load the adapter in the server instead"
                    .into(),
            )
            .into());
        }
        if self.base_url.is_empty() {
            return Err(UsageError("--backend openai needs at least one --base-url".into()).into());
        }
        let config = qstar_openai::OpenAiConfig {
            base_urls: self.base_url.clone(),
            model: self.server_model.clone(),
            api_key: std::env::var(&self.api_key_env).ok(),
            concurrency: self.concurrency.max(1),
            ..Default::default()
        };
        Ok(qstar_openai::OpenAiBackend::new(config)?)
    }
}

/// A parameter count: a number, optionally with a K, M, B (or G) or T
/// suffix (`135M`, `1.5B`), or in exponent form (`7e9`).
pub fn parse_parameter_count(text: &str) -> Result<u64, String> {
    let t = text.trim();
    let scale = match t.chars().last().map(|c| c.to_ascii_uppercase()) {
        Some('K') => 1e3,
        Some('M') => 1e6,
        Some('B' | 'G') => 1e9,
        Some('T') => 1e12,
        _ => 1.0,
    };
    let number = if scale == 1.0 { t } else { &t[..t.len() - 1] };
    let value = number
        .parse::<f64>()
        .ok()
        .map(|v| (v * scale).round())
        .filter(|v| v.is_finite() && *v >= 1.0 && *v < 1e18)
        .ok_or_else(|| format!("{text:?} is not a parameter count: use e.g. 135M, 7B or 1.5e9"))?;
    Ok(value as u64)
}

#[cfg(test)]
mod tests {
    use super::parse_parameter_count;

    #[test]
    fn parameter_counts_parse_with_suffixes() {
        for (text, n) in [
            ("134515008", 134_515_008),
            ("135M", 135_000_000),
            ("1.5B", 1_500_000_000),
            ("7b", 7_000_000_000),
            ("7e9", 7_000_000_000),
            ("70K", 70_000),
        ] {
            assert_eq!(parse_parameter_count(text), Ok(n), "{text}");
        }
        for bad in ["", "0", "-5M", "M", "lots", "1e30", "NaN", "infB"] {
            assert!(parse_parameter_count(bad).is_err(), "{bad:?}");
        }
    }
}
