//! The store: every finished record of a job, committed as soon as it is
//! done (SQLite in WAL mode), so a job stopped at any moment resumes without
//! losing or repeating a record. It also caches the SHA-256 of the files
//! jobs are keyed on (models, inputs), keyed on their path, size and
//! modification time, so a large model is hashed once.

use std::collections::BTreeMap;
use std::io::Read;
use std::path::{Path, PathBuf};

use rusqlite::{params, Connection, OptionalExtension};
use sha2::{Digest, Sha256};
use thiserror::Error;

#[derive(Debug, Error)]
pub enum StoreError {
    #[error("store error: {0}")]
    Sqlite(#[from] rusqlite::Error),
    #[error("job `{job}` was started with another configuration; use a new output or store")]
    ConfigMismatch { job: String },
    #[error("cannot read {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

pub struct Store {
    conn: Connection,
}

impl Store {
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        let conn = Connection::open(path)?;
        conn.pragma_update(None, "journal_mode", "WAL")?;
        conn.pragma_update(None, "synchronous", "NORMAL")?;
        conn.execute_batch(
            "CREATE TABLE IF NOT EXISTS jobs (job TEXT PRIMARY KEY, config TEXT NOT NULL);
             CREATE TABLE IF NOT EXISTS records (
                 job TEXT NOT NULL, key INTEGER NOT NULL, data TEXT NOT NULL,
                 PRIMARY KEY (job, key));
             CREATE TABLE IF NOT EXISTS file_hashes (
                 path TEXT NOT NULL, size INTEGER NOT NULL, mtime_ns INTEGER NOT NULL,
                 sha256 TEXT NOT NULL, PRIMARY KEY (path));",
        )?;
        Ok(Store { conn })
    }

    /// Registers a job with its configuration, or checks that a resumed job
    /// has the same one.
    pub fn begin(&self, job: &str, config: &str) -> Result<(), StoreError> {
        let existing: Option<String> = self
            .conn
            .query_row(
                "SELECT config FROM jobs WHERE job = ?1",
                params![job],
                |r| r.get(0),
            )
            .optional()?;
        match existing {
            Some(c) if c != config => Err(StoreError::ConfigMismatch { job: job.into() }),
            Some(_) => Ok(()),
            None => {
                self.conn.execute(
                    "INSERT INTO jobs (job, config) VALUES (?1, ?2)",
                    params![job, config],
                )?;
                Ok(())
            }
        }
    }

    /// Commits one record (replacing a record with the same key).
    pub fn put(&self, job: &str, key: u64, data: &str) -> Result<(), StoreError> {
        self.conn.execute(
            "INSERT OR REPLACE INTO records (job, key, data) VALUES (?1, ?2, ?3)",
            params![job, key as i64, data],
        )?;
        Ok(())
    }

    /// The names of the jobs registered in this store.
    pub fn jobs(&self) -> Result<Vec<String>, StoreError> {
        let mut stmt = self.conn.prepare("SELECT job FROM jobs ORDER BY job")?;
        let rows = stmt.query_map([], |r| r.get::<_, String>(0))?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// The SHA-256 of a file (lowercase hex). A digest computed before is
    /// reused while the file keeps its canonical path, size and
    /// modification time; otherwise the file is read again.
    pub fn file_sha256(&self, path: &Path) -> Result<String, StoreError> {
        let io = |source| StoreError::Io {
            path: path.to_path_buf(),
            source,
        };
        let canonical = path.canonicalize().map_err(io)?;
        let meta = std::fs::metadata(&canonical).map_err(io)?;
        let size = meta.len() as i64;
        let mtime_ns = meta
            .modified()
            .ok()
            .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
            .map_or(-1, |d| d.as_nanos() as i64);
        let key = canonical.to_string_lossy().into_owned();
        let cached: Option<String> = self
            .conn
            .query_row(
                "SELECT sha256 FROM file_hashes WHERE path = ?1 AND size = ?2 AND mtime_ns = ?3",
                params![key, size, mtime_ns],
                |r| r.get(0),
            )
            .optional()?;
        if let Some(digest) = cached {
            return Ok(digest);
        }
        let digest = sha256_of(&canonical).map_err(io)?;
        // A file without a modification time is hashed on every run.
        if mtime_ns >= 0 {
            self.conn.execute(
                "INSERT OR REPLACE INTO file_hashes (path, size, mtime_ns, sha256)
                 VALUES (?1, ?2, ?3, ?4)",
                params![key, size, mtime_ns, digest],
            )?;
        }
        Ok(digest)
    }

    /// The record of a job under `key`, when there is one.
    pub fn get(&self, job: &str, key: u64) -> Result<Option<String>, StoreError> {
        Ok(self
            .conn
            .query_row(
                "SELECT data FROM records WHERE job = ?1 AND key = ?2",
                params![job, key as i64],
                |r| r.get(0),
            )
            .optional()?)
    }

    /// All records of a job, by key.
    pub fn records(&self, job: &str) -> Result<BTreeMap<u64, String>, StoreError> {
        let mut stmt = self
            .conn
            .prepare("SELECT key, data FROM records WHERE job = ?1 ORDER BY key")?;
        let rows = stmt.query_map(params![job], |r| {
            Ok((r.get::<_, i64>(0)? as u64, r.get(1)?))
        })?;
        let mut out = BTreeMap::new();
        for row in rows {
            let (k, v) = row?;
            out.insert(k, v);
        }
        Ok(out)
    }
}

/// The SHA-256 of a file's bytes, in lowercase hex.
pub fn sha256_of(path: &Path) -> Result<String, std::io::Error> {
    let mut file = std::fs::File::open(path)?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = file.read(&mut buf)?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    Ok(hex(&hasher.finalize()))
}

/// The SHA-256 of `bytes`, in lowercase hex.
pub fn sha256_hex(bytes: &[u8]) -> String {
    hex(&Sha256::digest(bytes))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_survive_reopening_and_configs_are_checked() {
        let dir = tempfile::tempdir().expect("tmp");
        let path = dir.path().join("s.sqlite");
        {
            let s = Store::open(&path).expect("open");
            s.begin("j", "{a}").expect("begin");
            s.put("j", 3, "three").expect("put");
            s.put("j", 1, "one").expect("put");
        }
        let s = Store::open(&path).expect("reopen");
        s.begin("j", "{a}").expect("same config resumes");
        assert!(matches!(
            s.begin("j", "{b}"),
            Err(StoreError::ConfigMismatch { .. })
        ));
        let recs = s.records("j").expect("records");
        assert_eq!(
            recs.into_iter().collect::<Vec<_>>(),
            vec![(1, "one".into()), (3, "three".into())]
        );
        // One record by key, without reading the job's others.
        assert_eq!(s.get("j", 3).expect("get").as_deref(), Some("three"));
        assert_eq!(s.get("j", 2).expect("get"), None);
        assert_eq!(s.get("other", 3).expect("get"), None);
    }

    #[test]
    fn file_digests_match_a_known_vector_and_follow_changes() {
        let dir = tempfile::tempdir().expect("tmp");
        let s = Store::open(&dir.path().join("s.sqlite")).expect("open");
        let file = dir.path().join("f.txt");
        std::fs::write(&file, "abc").expect("write");
        // FIPS 180-2, appendix B.1.
        let abc = "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad";
        assert_eq!(s.file_sha256(&file).expect("hash"), abc);
        assert_eq!(s.file_sha256(&file).expect("cached"), abc);
        // Another content (and size) is hashed again, not taken from the cache.
        std::fs::write(&file, "").expect("write");
        let empty = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";
        assert_eq!(s.file_sha256(&file).expect("rehash"), empty);
        assert!(matches!(
            s.file_sha256(&dir.path().join("missing")),
            Err(StoreError::Io { .. })
        ));
    }

    #[test]
    fn jobs_are_listed() {
        let dir = tempfile::tempdir().expect("tmp");
        let s = Store::open(&dir.path().join("s.sqlite")).expect("open");
        s.begin("b", "{}").expect("begin");
        s.begin("a", "{}").expect("begin");
        assert_eq!(s.jobs().expect("jobs"), ["a", "b"]);
    }
}
