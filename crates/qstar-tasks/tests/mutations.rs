//! A short bounded run of the mutation harness: thousands of broken inputs
//! per parser, none of which may panic, hang or allocate beyond a bound.
//! (`cargo run --release -p qstar-tasks --example fuzz` runs 100,000 each.)

use std::alloc::System;
use std::sync::mpsc;
use std::time::Duration;

use cap::Cap;
use qstar_tasks::mutate::{run, Target};

/// Every allocation of this test binary goes through a cap, so an input that
/// made a parser allocate without bound would fail here instead of taking
/// the machine's memory.
#[global_allocator]
static ALLOC: Cap<System> = Cap::new(System, usize::MAX);

const ALLOWED_BYTES: usize = 64 << 20;

#[test]
fn no_mutated_input_panics_hangs_or_allocates_without_bound() {
    let dir = tempfile::tempdir().expect("tmp");
    let scratch = dir.path().join("input.jsonl");
    ALLOC
        .set_limit(ALLOC.allocated() + ALLOWED_BYTES)
        .expect("limit");
    // A hang never returns: a watchdog ends the process instead.
    let (done, finished) = mpsc::channel::<()>();
    std::thread::spawn(move || {
        if finished.recv_timeout(Duration::from_secs(300)).is_err() {
            eprintln!("the mutation run did not finish in 300 s: a parser hangs");
            std::process::abort();
        }
    });
    for (i, target) in Target::ALL.into_iter().enumerate() {
        let report = run(target, 2_000, 100 + i as u64, 4096, &scratch).expect("scratch file");
        assert_eq!(report.inputs, 2_000);
        for f in report.failures.iter().take(3) {
            eprintln!(
                "{}: {} on {:?}",
                target.name(),
                f.what,
                String::from_utf8_lossy(&f.input)
            );
        }
        assert!(
            report.failures.is_empty(),
            "{} inputs broke {}",
            report.failures.len(),
            target.name()
        );
    }
    let _ = done.send(());
}
