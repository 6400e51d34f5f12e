//! `qstar inspect`: a small web page, served by the binary, to look at
//! label and rate output (pairs, both orders, soft labels against the
//! source's choice), solve output (each question's search tree) and runs
//! (a training run's curves, a sweep's accuracy against compute). Every
//! asset is inside the binary, so the page works offline.

mod files;
mod routes;

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{Context, Result};
use clap::Args;

use crate::UsageError;

#[derive(Args)]
pub struct InspectArgs {
    /// Files to show: label or rate output, solve output, a training run's
    /// metrics.jsonl, a sweep.json (or a run or sweep directory holding them).
    #[arg(required = true, value_name = "FILE")]
    files: Vec<PathBuf>,
    #[arg(long, default_value = "127.0.0.1")]
    host: String,
    /// The port to listen on (0: any free port, printed at start).
    #[arg(long, default_value_t = 8080)]
    port: u16,
}

/// The inspector for every file in `dir` it can show (`qstar serve
/// --inspect DIR`): its JSONL and JSON files, and the run or sweep
/// directories inside it. Files it cannot show are passed over and named.
/// The files are read once, when the server starts.
pub async fn router_for_dir(dir: PathBuf) -> Result<axum::Router> {
    let (loaded, passed_over) = tokio::task::spawn_blocking(move || files::scan_dir(&dir))
        .await
        .context("reading the files")??;
    let reporter = crate::report::Reporter::default();
    for (path, why) in &passed_over {
        reporter.note(&format!("inspect: passing over {}: {why}", path.display()));
    }
    for f in &loaded {
        reporter.note(&format!(
            "inspect: {} ({}, {} records)",
            f.path.display(),
            f.kind.name(),
            f.count()
        ));
    }
    Ok(routes::router(Arc::new(routes::State { files: loaded })))
}

pub async fn inspect(args: InspectArgs) -> Result<()> {
    let mut loaded = Vec::new();
    for arg in &args.files {
        for path in files::expand(arg)? {
            let file = tokio::task::spawn_blocking(move || files::Loaded::open(&path))
                .await
                .context("reading the files")??;
            loaded.push(file);
        }
    }
    let addr = crate::serve::listen_addr(&args.host, args.port)?;
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|e| UsageError(format!("cannot listen on {addr}: {e}")))?;
    let local = listener.local_addr().context("the listening address")?;
    let reporter = crate::report::Reporter::default();
    for f in &loaded {
        reporter.note(&format!(
            "{}: {} ({} records)",
            f.path.display(),
            f.kind.name(),
            f.count()
        ));
    }
    reporter.note(&format!("qstar inspect: listening on http://{local}/"));
    let state = Arc::new(routes::State { files: loaded });
    axum::serve(listener, routes::router(state))
        .with_graceful_shutdown(crate::serve::shutdown_signal())
        .await
        .context("the server stopped")?;
    Ok(())
}
