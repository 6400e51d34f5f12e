//! `qstar export gguf`: the model with a LoRA adapter merged into its
//! weights, as a GGUF file llama.cpp (and qstar) load.

use std::path::PathBuf;

use anyhow::Result;
use clap::{Args, ValueEnum};
use qstar_engine::gguf_write::{export_peft, ExportType};

use crate::report::{Reporter, Text};
use crate::UsageError;

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum TensorType {
    #[value(name = "q8_0")]
    Q8_0,
    #[value(name = "f16")]
    F16,
}

#[derive(Args)]
pub struct GgufArgs {
    /// The base GGUF model (default: the fetched SmolLM2-135M-Instruct).
    #[arg(long)]
    model: Option<PathBuf>,
    /// LoRA adapter directory in PEFT's layout to merge; without it the
    /// model is only re-encoded.
    #[arg(long)]
    adapter: Option<PathBuf>,
    /// The GGUF file to write (written to a temporary name, then renamed).
    #[arg(long)]
    out: PathBuf,
    /// Storage type of the matrices; norms stay F32.
    #[arg(long = "type", value_enum, default_value = "q8_0")]
    tensor_type: TensorType,
    /// Print a JSON summary on stdout.
    #[arg(long)]
    json: bool,
}

pub async fn gguf(args: GgufArgs) -> Result<()> {
    let reporter = Reporter::new(args.json);
    let source = match &args.model {
        Some(path) => path.clone(),
        None => {
            let path = qstar_engine::fetch::default_model_path();
            if !path.exists() {
                reporter.note("the default model is not in the cache yet; fetching it");
                qstar_engine::fetch::fetch_default(&|_, _| {}).await?;
            }
            path
        }
    };
    if args.out.is_dir() {
        return Err(UsageError(format!("--out {} is a directory", args.out.display())).into());
    }
    let ty = match args.tensor_type {
        TensorType::Q8_0 => ExportType::Q8_0,
        TensorType::F16 => ExportType::F16,
    };
    let summary = export_peft(&source, args.adapter.as_deref(), &args.out, ty)?;
    if reporter.is_json() {
        reporter.summary_pretty(&summary, &Text::new())
    } else {
        // Without --json the summary is a note: stdout stays empty.
        reporter.note(&format!(
            "wrote {} ({:.1} MB, {} tensors, {} with the adapter merged, {})",
            summary.path,
            summary.bytes as f64 / 1e6,
            summary.tensors,
            summary.merged,
            summary.tensor_type
        ));
        Ok(())
    }
}
