//! The engine's mutation harness at full size: `cargo run --release -p
//! qstar-engine --example fuzz_model_files -- [INPUTS_PER_READER] [SEED]` (default
//! 100,000 and 1). Prints a table of inputs, inputs accepted, failures, the
//! slowest input and the process's peak memory after each reader; exits 1 when any input broke
//! a reader, after printing it.

#[path = "../tests/mutation_targets/mod.rs"]
mod mutation_targets;
#[path = "../tests/tiny_gguf/mod.rs"]
mod tiny_gguf;

use std::alloc::System;

use cap::Cap;
use mutation_targets::{chat_template_run, gguf_run, Run};

#[global_allocator]
static ALLOC: Cap<System> = Cap::new(System, usize::MAX);

/// The bound no reader may pass on these small inputs.
const ALLOWED_BYTES: usize = 1 << 30;

fn main() {
    let mut args = std::env::args().skip(1);
    let inputs: usize = args.next().and_then(|a| a.parse().ok()).unwrap_or(100_000);
    let seed: u64 = args.next().and_then(|a| a.parse().ok()).unwrap_or(1);
    let dir = std::env::temp_dir().join(format!("qstar-engine-fuzz-{}", std::process::id()));
    if let Err(e) = std::fs::create_dir_all(&dir) {
        eprintln!("cannot create {}: {e}", dir.display());
        std::process::exit(2);
    }
    let scratch = dir.join("model.gguf");
    let _ = ALLOC.set_limit(ALLOC.allocated() + ALLOWED_BYTES);
    // Panics are caught and reported by the harness; keep stderr readable.
    std::panic::set_hook(Box::new(|_| {}));
    println!("| reader | inputs | accepted | failures | slowest input (ms) | total (s) | peak memory so far (MB) |");
    println!("| --- | ---: | ---: | ---: | ---: | ---: | ---: |");
    let gguf = match gguf_run(inputs, seed, &scratch) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("scratch file {}: {e}", scratch.display());
            std::process::exit(2);
        }
    };
    let mut broken = row("gguf", &gguf);
    let chat = chat_template_run(inputs, seed.wrapping_add(1));
    broken += row("chat template", &chat);
    let _ = std::fs::remove_dir_all(&dir);
    if broken > 0 {
        std::process::exit(1);
    }
}

fn row(name: &str, run: &Run) -> usize {
    let r = &run.report;
    println!(
        "| {name} | {} | {} | {} | {:.2} | {:.1} | {:.1} |",
        r.inputs,
        run.accepted,
        r.failures.len(),
        r.slowest.as_secs_f64() * 1e3,
        r.total.as_secs_f64(),
        ALLOC.max_allocated() as f64 / 1e6
    );
    for f in r.failures.iter().take(5) {
        eprintln!(
            "{name}: {} on {:?}",
            f.what,
            String::from_utf8_lossy(&f.input[..f.input.len().min(400)])
        );
    }
    r.failures.len()
}
