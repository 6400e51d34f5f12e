//! The store: every finished record of a job, committed as soon as it is
//! done (SQLite in WAL mode), so a job stopped at any moment resumes without
//! losing or repeating a record.

use std::collections::BTreeMap;
use std::path::Path;

use rusqlite::{params, Connection};
use thiserror::Error;

#[derive(Debug, Error)]
pub enum StoreError {
    #[error("store error: {0}")]
    Sqlite(#[from] rusqlite::Error),
    #[error("job `{job}` was started with another configuration; use a new output or store")]
    ConfigMismatch { job: String },
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
                 PRIMARY KEY (job, key));",
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
            .ok();
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
    }
}
