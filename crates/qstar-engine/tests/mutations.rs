//! A short bounded run of the mutation harness on the engine's readers of
//! untrusted files: GGUF model files (header, metadata, tensor table and
//! shapes) and the chat templates they carry. No mutated input may panic,
//! hang or allocate beyond a bound. (`cargo run --release -p qstar-engine
//! --example fuzz_model_files` runs 100,000 of each.)

mod mutation_targets;
mod tiny_gguf;

use std::alloc::System;
use std::sync::mpsc;
use std::time::Duration;

use cap::Cap;
use mutation_targets::{chat_template_run, gguf_run};

/// Every allocation of this test binary goes through a cap, so an input that
/// made a reader allocate by a lying size would fail here instead of taking
/// the machine's memory.
#[global_allocator]
static ALLOC: Cap<System> = Cap::new(System, usize::MAX);

const ALLOWED_BYTES: usize = 512 << 20;

#[test]
fn no_mutated_model_file_or_chat_template_panics_hangs_or_allocates_without_bound() {
    let dir = tempfile::tempdir().expect("tmp");
    ALLOC
        .set_limit(ALLOC.allocated() + ALLOWED_BYTES)
        .expect("limit");
    let (done, finished) = mpsc::channel::<()>();
    std::thread::spawn(move || {
        // Only a timeout is a hang; a dropped sender is the test failing
        // otherwise, and its own message says why.
        if let Err(mpsc::RecvTimeoutError::Timeout) =
            finished.recv_timeout(Duration::from_secs(300))
        {
            eprintln!("the mutation run did not finish in 300 s: a reader hangs");
            std::process::abort();
        }
    });
    let gguf = gguf_run(2_000, 7, &dir.path().join("model.gguf")).expect("scratch file");
    let chat = chat_template_run(2_000, 8);
    let _ = done.send(());
    for (name, run) in [("gguf", &gguf), ("chat template", &chat)] {
        let report = &run.report;
        assert_eq!(report.inputs, 2_000);
        for f in report.failures.iter().take(3) {
            eprintln!(
                "{name}: {} on {:?}",
                f.what,
                String::from_utf8_lossy(&f.input[..f.input.len().min(400)])
            );
        }
        assert!(
            report.failures.is_empty(),
            "{} inputs broke the {name} reader",
            report.failures.len()
        );
    }
    // The run reached past the first checks: some mutated files still load
    // (a flipped bit in a weight), and some templates still render.
    for (name, run) in [("gguf", &gguf), ("chat template", &chat)] {
        assert!(
            run.accepted > 0 && run.accepted < run.report.inputs,
            "{name}: {} of {} accepted",
            run.accepted,
            run.report.inputs
        );
    }
}
