//! The mutation harness at full size: `cargo run --release -p qstar-tasks
//! --example fuzz -- [INPUTS_PER_PARSER] [SEED]` (default 100,000 and 1).
//! Prints a table of inputs, failures, the slowest input and the peak memory
//! per parser; exits 1 when any input broke a parser, after printing it.

use std::alloc::System;

use cap::Cap;
use qstar_tasks::mutate::{run, Target};

#[global_allocator]
static ALLOC: Cap<System> = Cap::new(System, usize::MAX);

/// The bound no parser may pass on an input of at most 64 KiB.
const ALLOWED_BYTES: usize = 256 << 20;

fn main() {
    let mut args = std::env::args().skip(1);
    let inputs: usize = args.next().and_then(|a| a.parse().ok()).unwrap_or(100_000);
    let seed: u64 = args.next().and_then(|a| a.parse().ok()).unwrap_or(1);
    let dir = std::env::temp_dir().join(format!("qstar-fuzz-{}", std::process::id()));
    if let Err(e) = std::fs::create_dir_all(&dir) {
        eprintln!("cannot create {}: {e}", dir.display());
        std::process::exit(2);
    }
    let scratch = dir.join("input.jsonl");
    let _ = ALLOC.set_limit(ALLOC.allocated() + ALLOWED_BYTES);
    // Panics are caught and reported by the harness; keep stderr readable.
    std::panic::set_hook(Box::new(|_| {}));
    println!("| parser | inputs | failures | slowest input (ms) | total (s) | peak memory (MB) |");
    println!("| --- | ---: | ---: | ---: | ---: | ---: |");
    let mut broken = 0;
    for (i, target) in Target::ALL.into_iter().enumerate() {
        let report = match run(target, inputs, seed.wrapping_add(i as u64), 65536, &scratch) {
            Ok(r) => r,
            Err(e) => {
                eprintln!("scratch file {}: {e}", scratch.display());
                std::process::exit(2);
            }
        };
        println!(
            "| {} | {} | {} | {:.2} | {:.1} | {:.1} |",
            target.name(),
            report.inputs,
            report.failures.len(),
            report.slowest.as_secs_f64() * 1e3,
            report.total.as_secs_f64(),
            ALLOC.max_allocated() as f64 / 1e6
        );
        for f in report.failures.iter().take(5) {
            eprintln!(
                "{}: {} on {:?}",
                target.name(),
                f.what,
                String::from_utf8_lossy(&f.input)
            );
        }
        broken += report.failures.len();
    }
    let _ = std::fs::remove_dir_all(&dir);
    if broken > 0 {
        std::process::exit(1);
    }
}
