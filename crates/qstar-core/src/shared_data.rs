//! Where tests and benchmarks find the public development data and the
//! llama.cpp reference files, which the project does not ship.
//!
//! `QSTAR_SHARED` names a folder holding `data/` and `golden/`; without it
//! the folder `shared` beside the repository is used. A test that needs a
//! file that is not there is skipped with its reason (printed, and appended
//! to the file `QSTAR_SKIP_LOG` names, so a test run can list its skips at
//! the end) — unless `QSTAR_REQUIRE_SHARED` is set, as CI sets it, and then
//! the missing file is a failure.

use std::io::Write;
use std::path::PathBuf;

/// The shared folder: `QSTAR_SHARED`, or `../shared` from the repository.
pub fn shared_dir() -> PathBuf {
    match std::env::var_os("QSTAR_SHARED") {
        Some(dir) => PathBuf::from(dir),
        None => PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../../shared"),
    }
}

/// The shared file `relative` (e.g. `data/gsm8k/train_first1000.jsonl`),
/// or `None` after recording that `test` was skipped without it.
///
/// # Panics
/// When the file is missing and `QSTAR_REQUIRE_SHARED` is set: a required
/// data test must not pass by skipping.
pub fn shared_file_or_skip(test: &str, relative: &str) -> Option<PathBuf> {
    let path = shared_dir().join(relative);
    if path.exists() {
        return Some(path);
    }
    let reason = format!(
        "skipped {test}: {} is missing (set QSTAR_SHARED to the folder holding data/ and golden/)",
        path.display()
    );
    if std::env::var_os("QSTAR_REQUIRE_SHARED").is_some() {
        panic!("{reason}; QSTAR_REQUIRE_SHARED is set, so this is a failure");
    }
    eprintln!("{reason}");
    if let Some(log) = std::env::var_os("QSTAR_SKIP_LOG") {
        if let Ok(mut f) = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
        {
            let _ = writeln!(f, "{reason}");
        }
    }
    None
}
