//! Decode speed of the real default model with one sequence and with eight
//! decoded together (128 tokens after a short prompt, end token ignored):
//! `cargo run --release -p qstar-engine --example decode_speed [1|8] [rounds]`.
//! The first argument, 1 or 8, runs only that batch size (anything else runs
//! both). A development tool for profiling a workload of `qstar bench` on
//! its own (`perf record` on one batch size), with a thread per core (bench
//! uses 2); the benchmark itself is `qstar bench`.

use std::time::Instant;

use qstar_core::LanguageModel;
use qstar_core::{GenerateRequest, SamplingParams};
use qstar_engine::{Engine, EngineOptions, LoadedModel};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let only: Option<usize> = args.next().and_then(|a| a.parse().ok());
    let rounds: usize = args.next().and_then(|a| a.parse().ok()).unwrap_or(3);
    let model = LoadedModel::load(&qstar_engine::fetch::default_model_path())?;
    let engine = Engine::start(std::sync::Arc::new(model), EngineOptions::default());
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let time = |n: usize, max_tokens: usize| -> Result<f64, Box<dyn std::error::Error>> {
        let mut request = GenerateRequest::new(
            "Tell me a story about",
            SamplingParams {
                temperature: 0.8,
                seed: 1,
                max_tokens,
                ignore_eos: true,
                ..Default::default()
            },
        );
        request.n = n;
        let start = Instant::now();
        runtime.block_on(engine.generate(vec![request]))?;
        Ok(start.elapsed().as_secs_f64())
    };
    time(1, 4)?;
    for _ in 0..rounds {
        let short = time(1, 1)?;
        for n in [1usize, 8] {
            if only.is_some_and(|o| o != n) {
                continue;
            }
            let t = time(n, 129)? - short;
            println!("n={n}: {:.1} tok/s", n as f64 * 128.0 / t);
        }
    }
    Ok(())
}
