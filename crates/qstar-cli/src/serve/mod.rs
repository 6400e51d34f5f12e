//! `qstar serve`: the embedded engine behind an OpenAI-compatible HTTP API
//! and qstar's own endpoints. Every request goes to one engine actor, so
//! concurrent requests batch together and share prompt prefixes.

mod limits;
mod metrics;
mod routes;
mod stream;
mod tally;
mod wire;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::AtomicU64;
use std::sync::Arc;

use anyhow::{Context, Result};
use axum::extract::DefaultBodyLimit;
use axum::middleware::from_fn_with_state;
use axum::routing::{get, post};
use axum::Router;
use clap::Args;
use qstar_core::ModelError;
use qstar_engine::Engine;
use tokio::sync::Semaphore;

use crate::backend::{BackendArgs, BackendKind};
use crate::{bounded, UsageError};

#[derive(Args)]
pub struct ServeArgs {
    /// GGUF model file (default: the fetched SmolLM2-135M-Instruct).
    #[arg(long)]
    model: Option<PathBuf>,
    /// LoRA adapter directory in PEFT's layout, applied on top of the model.
    #[arg(long)]
    adapter: Option<PathBuf>,
    #[arg(long, default_value = "127.0.0.1")]
    host: String,
    #[arg(long, default_value_t = 8080)]
    port: u16,
    /// Environment variable holding the API key clients must send as
    /// `Authorization: Bearer KEY` (without it, no key is asked for).
    #[arg(long = "api-key-env")]
    api_key_env: Option<String>,
    /// Requests in flight at once; more are answered 429 with Retry-After.
    #[arg(long, default_value_t = 64, value_parser = bounded(1, 4096))]
    max_queue: usize,
    /// The largest request body accepted, in bytes (413 beyond).
    #[arg(long, default_value_t = 4 << 20, value_parser = bounded(1024, 1 << 30))]
    max_body_bytes: usize,
    /// The largest `max_tokens` a request may ask for (400 beyond).
    #[arg(long, default_value_t = 4096, value_parser = bounded(1, 1 << 20))]
    max_tokens_limit: usize,
    /// Threads of the embedded engine (0: one per core).
    #[arg(long, default_value_t = 0)]
    threads: usize,
    /// A reward model `qstar train rm` wrote: `/get_reward` answers with its
    /// rewards instead of d-RLAIF ratings.
    #[arg(long)]
    reward_model: Option<PathBuf>,
    /// The constitution `/v1/judge` draws its principles from (TOML or
    /// JSON; default: qstar's own).
    #[arg(long)]
    constitution: Option<PathBuf>,
    /// A directory of qstar outputs (labels, ratings, solve records, runs,
    /// sweeps) to show at `/inspect/`, as `qstar inspect` shows them.
    #[arg(long, value_name = "DIR")]
    inspect: Option<PathBuf>,
    /// SQLite file of reward-model hidden states to read (default:
    /// features.sqlite in qstar's cache directory); requests add no
    /// states to it.
    #[arg(long, requires = "reward_model")]
    feature_cache: Option<PathBuf>,
}

/// What every handler shares.
pub struct AppState {
    engine: Engine,
    /// The name `/v1/models` lists (the model file's stem).
    model_id: String,
    started: u64,
    api_key: Option<String>,
    queue: Arc<Semaphore>,
    max_queue: usize,
    max_tokens_limit: usize,
    metrics: metrics::Metrics,
    reward_model: Option<crate::reward::RewardModel>,
    constitution: qstar_feedback::Constitution,
    next_id: AtomicU64,
    /// Makes response ids and unseeded samples differ between runs.
    id_salt: u64,
}

fn no_answer() -> ModelError {
    ModelError::Backend {
        backend: "embedded".into(),
        message: "the engine returned no answer".into(),
    }
}

fn router(state: Arc<AppState>, max_body_bytes: usize, inspector: Option<Router>) -> Router {
    let engine_routes = Router::new()
        .route("/v1/completions", post(routes::completions))
        .route("/v1/chat/completions", post(routes::chat_completions))
        .route("/v1/choose", post(routes::choose))
        .route("/v1/rate", post(routes::rate))
        .route("/v1/judge", post(routes::judge))
        .route("/get_reward", post(routes::get_reward))
        .layer(from_fn_with_state(state.clone(), limits::queue));
    let mut protected = Router::new()
        .route("/v1/models", get(routes::models))
        .route("/metrics", get(routes::metrics))
        .merge(engine_routes);
    if let Some(inspector) = inspector {
        // The page's links are relative, so it needs the trailing slash.
        // It shows the directory's records, so it asks for the key too.
        protected = protected.nest_service("/inspect", inspector);
    }
    let protected = protected.layer(from_fn_with_state(state.clone(), limits::auth));
    let open = Router::new().route("/health", get(routes::health));
    open.merge(protected)
        .fallback(routes::not_found)
        .method_not_allowed_fallback(routes::method_not_allowed)
        .layer(DefaultBodyLimit::max(max_body_bytes))
        .layer(from_fn_with_state(state.clone(), limits::observe))
        .with_state(state)
}

/// The address `--host` and `--port` name (exit 2 when there is none).
pub(crate) fn listen_addr(host: &str, port: u16) -> Result<SocketAddr, UsageError> {
    format!("{host}:{port}")
        .parse()
        .or_else(|_| {
            std::net::ToSocketAddrs::to_socket_addrs(&(host, port))
                .ok()
                .and_then(|mut a| a.next())
                .ok_or(())
        })
        .map_err(|_| UsageError(format!("--host {host}: not an address to listen on")))
}

/// Resolves on Ctrl-C or SIGTERM.
pub(crate) async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {},
        _ = term => {},
    }
    crate::report::Reporter::default()
        .note("shutting down: finishing the requests in flight, refusing new ones");
}

pub async fn serve(args: ServeArgs) -> Result<()> {
    let api_key = match &args.api_key_env {
        None => None,
        Some(var) => match std::env::var(var) {
            Ok(key) if !key.trim().is_empty() => Some(key.trim().to_string()),
            _ => {
                return Err(UsageError(format!(
                    "--api-key-env {var}: the environment variable is not set or empty"
                ))
                .into())
            }
        },
    };
    let addr = listen_addr(&args.host, args.port)?;
    let constitution = match &args.constitution {
        Some(p) => qstar_feedback::Constitution::load(p).map_err(UsageError)?,
        None => qstar_feedback::Constitution::default_constitution(),
    };
    let backend = BackendArgs {
        model: args.model.clone(),
        adapter: args.adapter.clone(),
        backend: BackendKind::Embedded,
        base_url: Vec::new(),
        server_model: String::new(),
        api_key_env: String::new(),
        concurrency: 1,
        server_params: None,
        threads: args.threads,
        no_prefix_cache: false,
    };
    let path = backend.ensure_model().await?;
    let engine = backend.engine().await?;
    let reward_model = match &args.reward_model {
        Some(dir) => {
            let mut rm = crate::reward::RewardModel::open(
                dir,
                None,
                args.threads,
                args.feature_cache.as_deref(),
            )
            .await?;
            // Requests bring texts that rarely recur; a long-running server
            // must not grow the cache with each one.
            rm.features.stop_caching_new_states();
            Some(rm)
        }
        None => None,
    };
    let model_id = path
        .file_stem()
        .map_or_else(|| "model".to_string(), |s| s.to_string_lossy().into_owned());
    let started = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let state = Arc::new(AppState {
        engine,
        model_id,
        started,
        api_key,
        queue: Arc::new(Semaphore::new(args.max_queue)),
        max_queue: args.max_queue,
        max_tokens_limit: args.max_tokens_limit,
        metrics: metrics::Metrics::default(),
        reward_model,
        constitution,
        next_id: AtomicU64::new(0),
        id_salt: started ^ u64::from(std::process::id()) << 32,
    });
    let inspector = match args.inspect {
        Some(dir) => Some(crate::inspect::router_for_dir(dir).await?),
        None => None,
    };
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|e| UsageError(format!("cannot listen on {addr}: {e}")))?;
    let local = listener.local_addr().context("the listening address")?;
    crate::report::Reporter::default().note(&format!("qstar serve: listening on http://{local}"));
    axum::serve(listener, router(state, args.max_body_bytes, inspector))
        .with_graceful_shutdown(shutdown_signal())
        .await
        .context("the server stopped")?;
    Ok(())
}
