//! The job runner behind every resumable command (label, rate, revise,
//! judge, solve, sweep). A job is a resolved configuration, a store that
//! keeps its finished records, and keyed items; running it processes the
//! items the store does not hold yet, commits each record as soon as it is
//! done, and hands back every record of these items in input order, which
//! [`Job::export`] writes atomically with the configuration beside it.
//!
//! A job's name is its scope (the command and its output) and a digest of
//! its resolved configuration, which holds every setting the records depend
//! on and the SHA-256 of the model file and of the input file. A run with
//! another setting, model or input is therefore another job: it starts
//! afresh and never reuses records made under different conditions, while
//! the records of the earlier job stay in the store. Settings that change
//! only the speed (batch size, threads, questions in flight) are left out.

use std::collections::HashSet;
use std::future::Future;
use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use futures::StreamExt;
use qstar_store::Store;
use serde_json::{json, Value};

use crate::backend::{BackendArgs, BackendKind};
use crate::report::Reporter;

/// `path` with `suffix` appended to its file name.
pub fn sibling(path: &Path, suffix: &str) -> PathBuf {
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(suffix);
    path.with_file_name(name)
}

/// The store at `store`, or beside `out` (`OUT.store.sqlite`).
pub fn open_store(store: Option<&Path>, out: &Path) -> Result<Store> {
    let path = store.map_or_else(|| sibling(out, ".store.sqlite"), Path::to_path_buf);
    Store::open(&path).with_context(|| format!("opening the store {}", path.display()))
}

/// Adds what the records depend on besides the settings: the model file's
/// SHA-256 (`null` for a server, whose description is under `backend`),
/// the LoRA adapter's files' (when there is one) and the input's, with the
/// input's canonical path.
pub fn add_fingerprint(
    resolved: &mut Value,
    store: &Store,
    backend: &BackendArgs,
    input: &Path,
) -> Result<()> {
    let model_sha256 = match backend.backend {
        BackendKind::Embedded => Some(store.file_sha256(&backend.model_path())?),
        BackendKind::Openai => None,
    };
    // Inputs are small: hashed on every run, never taken from a cache.
    let input_sha256 = qstar_store::sha256_of(input)
        .with_context(|| format!("cannot read {}", input.display()))?;
    resolved["input"] = json!(input.canonicalize().unwrap_or(input.to_path_buf()));
    resolved["model_sha256"] = json!(model_sha256);
    resolved["input_sha256"] = json!(input_sha256);
    // Only with an adapter, so the keys of jobs without one stay as they were.
    if let Some(adapter) = backend.adapter_sha256(store)? {
        if backend.backend == BackendKind::Openai {
            return Err(crate::UsageError(
                "--adapter applies to the embedded engine, not to --backend openai".into(),
            )
            .into());
        }
        resolved["adapter_sha256"] = adapter;
    }
    // Records count the prompt tokens the cache saved: a run without it is
    // another job (only then in the key, so other keys stay as they were).
    if backend.no_prefix_cache {
        resolved["prefix_cache"] = json!(false);
    }
    Ok(())
}

/// What a run of a job did.
#[derive(Debug)]
pub struct Finished {
    /// Every record of the job's items, in input order.
    pub records: Vec<String>,
    /// How many of them the store already held when the run started.
    pub resumed: usize,
}

pub struct Job<'s> {
    store: &'s Store,
    name: String,
    resolved: String,
    reporter: Reporter,
    label: String,
    unit: &'static str,
}

impl<'s> Job<'s> {
    /// Registers the job `scope` under `resolved` in the store. `label`
    /// names it in progress lines, `unit` names its items ("pairs").
    pub fn begin(
        store: &'s Store,
        scope: &str,
        resolved: &Value,
        reporter: Reporter,
        label: &str,
        unit: &'static str,
    ) -> Result<Self> {
        let text = serde_json::to_string_pretty(resolved)?;
        let digest = qstar_store::sha256_hex(text.as_bytes());
        let name = format!("{scope}#{}", &digest[..16]);
        let earlier = store
            .jobs()?
            .into_iter()
            .any(|j| j != name && j.strip_prefix(scope).is_some_and(|r| r.starts_with('#')));
        let known = store.jobs()?.contains(&name);
        if earlier && !known {
            reporter.note(&format!(
                "{label}: the settings, model or input differ from the earlier run; \
                 starting afresh (its records stay in the store)"
            ));
        }
        store.begin(&name, &text)?;
        Ok(Job {
            store,
            name,
            resolved: text,
            reporter,
            label: label.to_string(),
            unit,
        })
    }

    /// The job's name in the store.
    #[cfg(test)]
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Runs `work` over the items the store does not hold yet, `chunk`
    /// items per call and `parallel` calls at once, committing each record
    /// as soon as its call returns. `work` returns one record per item, in
    /// the order of its chunk.
    pub async fn run<T, K, F, Fut>(
        &self,
        items: &[T],
        key: K,
        chunk: usize,
        parallel: usize,
        mut work: F,
    ) -> Result<Finished>
    where
        T: Clone,
        K: Fn(&T) -> u64,
        F: FnMut(Vec<T>) -> Fut,
        Fut: Future<Output = Result<Vec<String>>>,
    {
        let done = self.store.records(&self.name)?;
        let pending: Vec<T> = items
            .iter()
            .filter(|i| !done.contains_key(&key(i)))
            .cloned()
            .collect();
        let resumed = items.len() - pending.len();
        if resumed > 0 {
            self.reporter.note(&format!(
                "{}: resuming, {resumed} of {} {} already done",
                self.label,
                items.len(),
                self.unit
            ));
        }
        let bar = self
            .reporter
            .progress(items.len(), resumed, &self.label, self.unit);
        let chunks: Vec<Vec<T>> = pending.chunks(chunk.max(1)).map(<[T]>::to_vec).collect();
        let mut calls = futures::stream::iter(chunks)
            .map(|c| {
                let keys: Vec<u64> = c.iter().map(&key).collect();
                let call = work(c);
                async move { (keys, call.await) }
            })
            .buffer_unordered(parallel.max(1));
        while let Some((keys, result)) = calls.next().await {
            let records = result?;
            anyhow::ensure!(
                records.len() == keys.len(),
                "{}: {} records came back for {} items",
                self.label,
                records.len(),
                keys.len()
            );
            for (k, record) in keys.iter().zip(records) {
                self.store.put(&self.name, *k, &record)?;
                bar.inc(1);
            }
        }
        drop(calls);
        bar.finish_and_clear();
        let wanted: HashSet<u64> = items.iter().map(&key).collect();
        let records = self
            .store
            .records(&self.name)?
            .into_iter()
            .filter(|(k, _)| wanted.contains(k))
            .map(|(_, v)| v)
            .collect();
        Ok(Finished { records, resumed })
    }

    /// Writes `lines` to `out` atomically and the resolved configuration to
    /// `OUT.config.json`.
    pub fn export<'a>(
        &self,
        out: &Path,
        lines: impl IntoIterator<Item = &'a String>,
    ) -> Result<()> {
        write_lines(out, lines)?;
        let config = sibling(out, ".config.json");
        std::fs::write(&config, &self.resolved)
            .with_context(|| format!("writing {}", config.display()))?;
        Ok(())
    }
}

/// Writes lines to `path` through a temporary file, so a reader never sees
/// half a file.
pub fn write_lines<'a>(path: &Path, lines: impl IntoIterator<Item = &'a String>) -> Result<()> {
    let tmp = sibling(path, ".part");
    {
        let mut f = std::io::BufWriter::new(
            std::fs::File::create(&tmp).with_context(|| format!("creating {}", tmp.display()))?,
        );
        for l in lines {
            writeln!(f, "{l}")?;
        }
        f.flush()?;
    }
    std::fs::rename(&tmp, path).with_context(|| format!("writing {}", path.display()))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    fn run_once(store: &Store, resolved: &Value, items: &[u64], calls: &AtomicUsize) -> Finished {
        let job = Job::begin(store, "t:out", resolved, Reporter::new(false), "t", "items")
            .expect("begin");
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("runtime");
        rt.block_on(job.run(
            items,
            |i| *i,
            2,
            2,
            |chunk: Vec<u64>| {
                calls.fetch_add(chunk.len(), Ordering::SeqCst);
                async move { Ok(chunk.iter().map(|i| format!("r{i}")).collect()) }
            },
        ))
        .expect("run")
    }

    #[test]
    fn a_job_resumes_under_its_configuration_and_starts_afresh_under_another() {
        let dir = tempfile::tempdir().expect("tmp");
        let store = Store::open(&dir.path().join("s.sqlite")).expect("store");
        let calls = AtomicUsize::new(0);
        let a = json!({"beta": 0.1});
        let first = run_once(&store, &a, &[5, 1, 3], &calls);
        assert_eq!(
            first.records,
            ["r1", "r3", "r5"],
            "input order is key order"
        );
        assert_eq!((first.resumed, calls.load(Ordering::SeqCst)), (0, 3));

        // The same configuration with one more item: only that one runs.
        let second = run_once(&store, &a, &[5, 1, 3, 7], &calls);
        assert_eq!(second.resumed, 3);
        assert_eq!(second.records, ["r1", "r3", "r5", "r7"]);
        assert_eq!(calls.load(Ordering::SeqCst), 4);

        // Another configuration reuses nothing.
        let third = run_once(&store, &json!({"beta": 0.2}), &[5, 1, 3], &calls);
        assert_eq!(third.resumed, 0);
        assert_eq!(calls.load(Ordering::SeqCst), 7);
        assert_eq!(store.jobs().expect("jobs").len(), 2);
    }

    #[test]
    fn a_short_answer_from_the_work_is_an_error_not_a_silent_loss() {
        let dir = tempfile::tempdir().expect("tmp");
        let store = Store::open(&dir.path().join("s.sqlite")).expect("store");
        let job = Job::begin(
            &store,
            "t:out",
            &json!({}),
            Reporter::new(false),
            "t",
            "items",
        )
        .expect("begin");
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("runtime");
        let result = rt.block_on(job.run(
            &[1u64, 2],
            |i| *i,
            2,
            1,
            |_chunk: Vec<u64>| async { Ok(vec!["only one".to_string()]) },
        ));
        assert!(result.is_err());
        assert!(store.records(job.name()).expect("records").is_empty());
    }

    #[test]
    fn export_writes_the_lines_and_the_configuration() {
        let dir = tempfile::tempdir().expect("tmp");
        let store = Store::open(&dir.path().join("s.sqlite")).expect("store");
        let resolved = json!({"model_sha256": "ab", "input_sha256": "cd"});
        let job = Job::begin(
            &store,
            "t:out",
            &resolved,
            Reporter::new(false),
            "t",
            "items",
        )
        .expect("begin");
        let out = dir.path().join("o.jsonl");
        job.export(&out, &["a".to_string(), "b".to_string()])
            .expect("export");
        assert_eq!(std::fs::read_to_string(&out).expect("out"), "a\nb\n");
        let config: Value = serde_json::from_str(
            &std::fs::read_to_string(dir.path().join("o.jsonl.config.json")).expect("config"),
        )
        .expect("json");
        assert_eq!(config, resolved);
        assert!(!dir.path().join("o.jsonl.part").exists());
    }
}
