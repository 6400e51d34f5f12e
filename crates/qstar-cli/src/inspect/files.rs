//! The files `qstar inspect` shows, told apart by their records: label and
//! rate output (pairs), solve output (searched questions with their trees),
//! a training run's `metrics.jsonl` and a sweep's `sweep.json`.
//!
//! A JSONL file is read once at start to check every record and remember
//! where each one starts; the page then asks for records a page at a time,
//! and only those are read again from the disk. A file is never held whole.

use std::fs::File;
use std::io::{BufRead, BufReader, Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use qstar_core::labels::Judgement;
use qstar_search::{Compute, Tree};
use serde::Deserialize;
use serde_json::Value;

use crate::UsageError;

/// The largest `sweep.json` read (it is parsed whole; real ones are a few KiB).
const MAX_DOCUMENT_BYTES: u64 = 64 << 20;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// `qstar label` output: soft labels over principles and both orders.
    Labels,
    /// `qstar rate` output: a reward for each reply of a pair.
    Ratings,
    /// `qstar solve` output: each question's answer, compute and tree.
    Search,
    /// A training run's `metrics.jsonl`: one row per optimizer step.
    Metrics,
    /// A sweep's `sweep.json`: accuracy and compute per strategy and budget.
    Sweep,
}

impl Kind {
    pub fn name(self) -> &'static str {
        match self {
            Kind::Labels => "labels",
            Kind::Ratings => "ratings",
            Kind::Search => "search",
            Kind::Metrics => "metrics",
            Kind::Sweep => "sweep",
        }
    }

    /// What the record of this kind is called in an error.
    fn record(self) -> &'static str {
        match self {
            Kind::Labels => "a label record",
            Kind::Ratings => "a rate record",
            Kind::Search => "a solve record",
            Kind::Metrics => "a training-metrics row",
            Kind::Sweep => "a sweep",
        }
    }

    /// The kind a record's keys say, if any.
    fn of(record: &Value) -> Option<Kind> {
        let has = |k: &str| record.get(k).is_some();
        if has("soft_label") && has("judgements") {
            Some(Kind::Labels)
        } else if has("reward_chosen") && has("rating_chosen") {
            Some(Kind::Ratings)
        } else if has("tree") && has("question") {
            Some(Kind::Search)
        } else if has("step") && has("loss") {
            Some(Kind::Metrics)
        } else {
            None
        }
    }
}

/// What the filters and the sort of a record need, kept in memory.
#[derive(Debug, Clone, Copy, Default)]
pub struct Summary {
    /// Whether the labeler sided with the source's choice (pairs only).
    pub agrees: Option<bool>,
    /// How much the label follows the position instead of the reply: the
    /// mean over principles judged in both orders of
    /// |P(A | source's choice first) + P(A | source's choice second) − 1|
    /// (0: the answer flips with the order; 1: the same letter wins fully
    /// both times). `None` without both orders.
    pub position_bias: Option<f64>,
}

#[derive(Debug, Clone, Copy)]
struct Entry {
    offset: u64,
    len: usize,
    line: usize,
    summary: Summary,
}

/// One file given on the command line, checked and indexed.
pub struct Loaded {
    pub path: PathBuf,
    pub kind: Kind,
    /// The constitution's principles, for labels whose job wrote
    /// `FILE.config.json` beside them (the judgements name them by index).
    pub principles: Vec<String>,
    entries: Vec<Entry>,
    /// The parsed document of a sweep.
    document: Option<Value>,
}

#[derive(Deserialize)]
#[allow(dead_code)] // the fields are read to check that they are there
struct LabelCheck {
    soft_label: f64,
    p_human_chosen: f64,
    agrees_with_human: bool,
    judgements: Vec<Judgement>,
    chosen: Value,
    rejected: Value,
}

#[derive(Deserialize)]
#[allow(dead_code)]
struct RatingCheck {
    reward_chosen: f64,
    reward_rejected: f64,
    rating_chosen: RatingDistribution,
    rating_rejected: RatingDistribution,
    chosen: Value,
    rejected: Value,
}

#[derive(Deserialize)]
#[allow(dead_code)]
struct RatingDistribution {
    distribution: Vec<f64>,
    expected_score: f64,
}

/// The parts of a solve record the page draws.
#[derive(Deserialize)]
#[allow(dead_code)]
pub struct SearchCheck {
    question: String,
    correct: bool,
    answer: Option<String>,
    compute: Compute,
    solution: String,
    tree: Tree,
}

#[derive(Deserialize)]
#[allow(dead_code)]
struct MetricsCheck {
    step: u64,
    loss: f64,
    lr: f64,
    #[serde(default)]
    eval_loss: Option<f64>,
}

#[derive(Deserialize)]
#[allow(dead_code)]
struct SweepCheck {
    rows: Vec<SweepRow>,
}

#[derive(Deserialize)]
#[allow(dead_code)]
struct SweepRow {
    strategy: String,
    budget: u64,
    accuracy: f64,
    tokens_per_question: f64,
}

fn bad(path: &Path, line: usize, message: impl std::fmt::Display) -> anyhow::Error {
    UsageError(format!("{}:{line}: {message}", path.display())).into()
}

/// A serde error without its own "at line 1 column N" (the line is the
/// file's, given before it), with the column kept.
fn describe(e: &serde_json::Error) -> String {
    let text = e.to_string();
    let plain = match text.rfind(" at line ") {
        Some(at) => &text[..at],
        None => &text,
    };
    if e.is_syntax() || e.is_eof() {
        format!("not JSON ({plain}, column {})", e.column())
    } else {
        plain.to_string()
    }
}

/// Checks a tree's links so that walking it can neither index past its
/// nodes nor loop: node i has id i, the root has no parent, every other
/// node's parent comes before it, and children name nodes that point back.
fn check_tree(tree: &Tree) -> Result<(), String> {
    if tree.nodes.is_empty() {
        return Err("the tree has no root".into());
    }
    for (i, n) in tree.nodes.iter().enumerate() {
        if n.id != i {
            return Err(format!("tree node {i} has id {}", n.id));
        }
        match (i, n.parent) {
            (0, None) => {}
            (0, Some(_)) => return Err("the tree's root has a parent".into()),
            (_, Some(p)) if p < i => {}
            (_, _) => return Err(format!("tree node {i} has no parent before it")),
        }
        for &c in &n.children {
            if c >= tree.nodes.len() || tree.nodes[c].parent != Some(i) {
                return Err(format!(
                    "tree node {i} lists child {c}, which is not its child"
                ));
            }
        }
    }
    Ok(())
}

fn position_bias(judgements: &[Judgement]) -> Option<f64> {
    let mut principles: Vec<usize> = judgements.iter().map(|j| j.principle).collect();
    principles.sort_unstable();
    principles.dedup();
    let leans: Vec<f64> = principles
        .iter()
        .filter_map(|&p| {
            let first = judgements
                .iter()
                .find(|j| j.principle == p && j.human_chosen_first)?;
            let second = judgements
                .iter()
                .find(|j| j.principle == p && !j.human_chosen_first)?;
            Some((first.p_a + second.p_a - 1.0).abs())
        })
        .collect();
    (!leans.is_empty()).then(|| leans.iter().sum::<f64>() / leans.len() as f64)
}

/// Why a line is not a record: it is not JSON, or not of its file's kind.
enum Bad {
    Syntax(String),
    Shape(String),
}

impl From<String> for Bad {
    fn from(s: String) -> Self {
        Bad::Shape(s)
    }
}

/// Checks one record of `kind` and returns what the filters need.
fn check(kind: Kind, text: &str) -> Result<Summary, Bad> {
    let describe = |e: serde_json::Error| {
        if e.is_syntax() || e.is_eof() {
            Bad::Syntax(describe(&e))
        } else {
            Bad::Shape(describe(&e))
        }
    };
    match kind {
        Kind::Labels => {
            let r: LabelCheck = serde_json::from_str(text).map_err(describe)?;
            Ok(Summary {
                agrees: Some(r.agrees_with_human),
                position_bias: position_bias(&r.judgements),
            })
        }
        Kind::Ratings => {
            let r: RatingCheck = serde_json::from_str(text).map_err(describe)?;
            Ok(Summary {
                agrees: Some(r.reward_chosen > r.reward_rejected),
                position_bias: None,
            })
        }
        Kind::Search => {
            let r: SearchCheck = serde_json::from_str(text).map_err(describe)?;
            check_tree(&r.tree)?;
            Ok(Summary::default())
        }
        Kind::Metrics => {
            let _: MetricsCheck = serde_json::from_str(text).map_err(describe)?;
            Ok(Summary::default())
        }
        Kind::Sweep => Err(Bad::Shape("a sweep is one JSON document, not JSONL".into())),
    }
}

/// The files to show for one command-line argument: the file itself, or
/// a run or sweep directory's `metrics.jsonl` and `sweep.json`.
pub fn expand(arg: &Path) -> anyhow::Result<Vec<PathBuf>> {
    if arg.is_dir() {
        let found: Vec<PathBuf> = ["metrics.jsonl", "sweep.json"]
            .iter()
            .map(|name| arg.join(name))
            .filter(|p| p.is_file())
            .collect();
        if found.is_empty() {
            return Err(UsageError(format!(
                "{}: a directory without metrics.jsonl or sweep.json",
                arg.display()
            ))
            .into());
        }
        return Ok(found);
    }
    if !arg.exists() {
        return Err(UsageError(format!("{}: no such file", arg.display())).into());
    }
    Ok(vec![arg.to_path_buf()])
}

/// A file the inspector could not show, and why.
pub type PassedOver = (PathBuf, String);

/// Every file in `dir` the inspector can show, in name order, and the ones
/// it passed over with the reason. A directory that does not exist or
/// cannot be read is an error.
pub fn scan_dir(dir: &Path) -> anyhow::Result<(Vec<Loaded>, Vec<PassedOver>)> {
    let entries = std::fs::read_dir(dir)
        .map_err(|e| UsageError(format!("--inspect {}: {e}", dir.display())))?;
    let mut paths: Vec<PathBuf> = entries.filter_map(|e| e.ok().map(|e| e.path())).collect();
    paths.sort();
    let mut loaded = Vec::new();
    let mut passed_over = Vec::new();
    for path in paths {
        let candidates = if path.is_dir() {
            expand(&path).unwrap_or_default()
        } else if path
            .extension()
            .is_some_and(|e| e == "jsonl" || e == "json")
        {
            vec![path]
        } else {
            continue;
        };
        for p in candidates {
            match Loaded::open(&p) {
                Ok(f) => loaded.push(f),
                Err(e) => passed_over.push((p, format!("{e:#}"))),
            }
        }
    }
    Ok((loaded, passed_over))
}

impl Loaded {
    /// Reads and checks `path`: a `.json` file is a sweep, anything else
    /// JSONL whose first record says its kind.
    pub fn open(path: &Path) -> anyhow::Result<Loaded> {
        let file = File::open(path)
            .map_err(|e| UsageError(format!("{}: cannot open: {e}", path.display())))?;
        if path.extension().is_some_and(|e| e == "json") {
            return Self::open_document(path, file);
        }
        let mut reader = BufReader::new(file);
        let mut entries = Vec::new();
        let mut kind = None;
        let mut offset = 0u64;
        let mut line = 0usize;
        let mut buf = Vec::new();
        loop {
            buf.clear();
            let read = reader
                .read_until(b'\n', &mut buf)
                .map_err(|e| UsageError(format!("{}: cannot read: {e}", path.display())))?;
            if read == 0 {
                break;
            }
            line += 1;
            let start = offset;
            offset += read as u64;
            let text = std::str::from_utf8(&buf).map_err(|_| bad(path, line, "not UTF-8"))?;
            let text = text.trim_end_matches(['\n', '\r']);
            if text.trim().is_empty() {
                continue;
            }
            let k = match kind {
                Some(k) => k,
                None => {
                    let value: Value =
                        serde_json::from_str(text).map_err(|e| bad(path, line, describe(&e)))?;
                    let k = Kind::of(&value).ok_or_else(|| {
                        bad(
                            path,
                            line,
                            "not a record qstar inspect knows (label, rate or solve \
                             output, or a training run's metrics.jsonl)",
                        )
                    })?;
                    kind = Some(k);
                    k
                }
            };
            let summary = check(k, text).map_err(|e| match e {
                Bad::Syntax(e) => bad(path, line, e),
                Bad::Shape(e) => bad(path, line, format!("{}: {e}", k.record())),
            })?;
            entries.push(Entry {
                offset: start,
                len: text.len(),
                line,
                summary,
            });
        }
        let kind = kind.ok_or_else(|| UsageError(format!("{}: no records", path.display())))?;
        let principles = if kind == Kind::Labels {
            principles_beside(path)
        } else {
            Vec::new()
        };
        Ok(Loaded {
            path: path.to_path_buf(),
            kind,
            principles,
            entries,
            document: None,
        })
    }

    fn open_document(path: &Path, file: File) -> anyhow::Result<Loaded> {
        let size = file.metadata().map(|m| m.len()).unwrap_or(0);
        if size > MAX_DOCUMENT_BYTES {
            return Err(UsageError(format!(
                "{}: {size} bytes; a sweep.json is read whole, up to {MAX_DOCUMENT_BYTES}",
                path.display()
            ))
            .into());
        }
        let mut text = String::new();
        BufReader::new(file)
            .read_to_string(&mut text)
            .map_err(|e| UsageError(format!("{}: cannot read: {e}", path.display())))?;
        let value: Value =
            serde_json::from_str(&text).map_err(|e| bad(path, e.line(), describe(&e)))?;
        if value.get("rows").is_none() {
            return Err(bad(
                path,
                1,
                "not a sweep.json (no \"rows\"); JSONL files end in .jsonl",
            ));
        }
        let _: SweepCheck = serde_json::from_value(value.clone())
            .map_err(|e| bad(path, 1, format!("a sweep: {}", describe(&e))))?;
        Ok(Loaded {
            path: path.to_path_buf(),
            kind: Kind::Sweep,
            principles: Vec::new(),
            entries: Vec::new(),
            document: Some(value),
        })
    }

    /// Records in the file (rows of a sweep).
    pub fn count(&self) -> usize {
        match &self.document {
            Some(d) => d["rows"].as_array().map_or(0, Vec::len),
            None => self.entries.len(),
        }
    }

    pub fn document(&self) -> Option<&Value> {
        self.document.as_ref()
    }

    pub fn summary(&self, index: usize) -> Summary {
        self.entries[index].summary
    }

    pub fn line(&self, index: usize) -> usize {
        self.entries[index].line
    }

    /// Indices of the records that pass the filters, in the order asked.
    pub fn select(&self, query: &Query) -> std::io::Result<Vec<usize>> {
        let mut picked: Vec<usize> = (0..self.entries.len())
            .filter(|&i| !query.disagree || self.entries[i].summary.agrees == Some(false))
            .collect();
        let needle = query.text.trim().to_lowercase();
        if !needle.is_empty() {
            let mut file = File::open(&self.path)?;
            let mut kept = Vec::new();
            for i in picked {
                let record = self.read_with(&mut file, i)?;
                if strings_contain(&record, &needle) {
                    kept.push(i);
                }
            }
            picked = kept;
        }
        if query.by_bias {
            picked.sort_by(|&a, &b| {
                let (x, y) = (
                    self.entries[a].summary.position_bias,
                    self.entries[b].summary.position_bias,
                );
                match (x, y) {
                    (Some(x), Some(y)) => y.total_cmp(&x),
                    (Some(_), None) => std::cmp::Ordering::Less,
                    (None, Some(_)) => std::cmp::Ordering::Greater,
                    (None, None) => std::cmp::Ordering::Equal,
                }
            });
        }
        Ok(picked)
    }

    /// The records at `indices`, as the file has them.
    pub fn read(&self, indices: &[usize]) -> std::io::Result<Vec<Value>> {
        let mut file = File::open(&self.path)?;
        indices
            .iter()
            .map(|&i| self.read_with(&mut file, i))
            .collect()
    }

    fn read_with(&self, file: &mut File, index: usize) -> std::io::Result<Value> {
        let e = self.entries[index];
        file.seek(SeekFrom::Start(e.offset))?;
        let mut buf = vec![0u8; e.len];
        file.read_exact(&mut buf)?;
        serde_json::from_slice(&buf).map_err(|err| {
            std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                format!(
                    "{}:{}: the file changed since it was opened ({err})",
                    self.path.display(),
                    e.line
                ),
            )
        })
    }
}

/// The principles of the constitution in the label job's
/// `FILE.config.json`, when it is there and holds them (it is optional:
/// without it the page names principles by their index).
fn principles_beside(path: &Path) -> Vec<String> {
    let mut name = path.as_os_str().to_owned();
    name.push(".config.json");
    let Ok(text) = std::fs::read_to_string(PathBuf::from(name)) else {
        return Vec::new();
    };
    let Ok(config) = serde_json::from_str::<Value>(&text) else {
        return Vec::new();
    };
    config["constitution"]["principles"]
        .as_array()
        .map(|ps| {
            ps.iter()
                .map(|p| p.as_str().unwrap_or_default().to_string())
                .collect()
        })
        .unwrap_or_default()
}

/// What the page asks of a file's records.
#[derive(Debug, Default, Clone)]
pub struct Query {
    /// Only pairs where the labeler did not side with the source.
    pub disagree: bool,
    /// Most position-biased pairs first.
    pub by_bias: bool,
    /// Only records with a string holding this text (any case).
    pub text: String,
}

fn strings_contain(value: &Value, needle: &str) -> bool {
    match value {
        Value::String(s) => s.to_lowercase().contains(needle),
        Value::Array(items) => items.iter().any(|v| strings_contain(v, needle)),
        Value::Object(map) => map.values().any(|v| strings_contain(v, needle)),
        _ => false,
    }
}

/// The nodes of the solution a solve record chose, root first: the path to
/// the finished node whose text is the record's solution (one with the
/// record's answer first), or to any node with that text; empty when none
/// has it. Records that pass [`Loaded::open`] have sound trees.
pub fn chosen_path(record: &Value) -> Vec<usize> {
    let Ok(r) = serde_json::from_value::<SearchCheck>(record.clone()) else {
        return Vec::new();
    };
    if check_tree(&r.tree).is_err() || r.solution.is_empty() {
        return Vec::new();
    }
    let tree = &r.tree;
    let matches = |n: &&qstar_search::Node| tree.text(n.id) == r.solution;
    let end = tree
        .nodes
        .iter()
        .filter(matches)
        .filter(|n| n.finished)
        .find(|n| r.answer.is_some() && n.answer == r.answer)
        .or_else(|| tree.nodes.iter().filter(matches).find(|n| n.finished))
        .or_else(|| tree.nodes.iter().find(matches));
    match end {
        Some(n) => {
            let mut path = vec![Tree::ROOT];
            // A path that starts at a restart (a revision) still hangs off
            // the nodes above it; mark the whole way down from the root.
            let mut up = Vec::new();
            let mut at = Some(n.id);
            while let Some(i) = at {
                if i == Tree::ROOT {
                    break;
                }
                up.push(i);
                at = tree.nodes[i].parent;
            }
            up.reverse();
            path.extend(up);
            path
        }
        None => Vec::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn judgement(principle: usize, first: bool, p_a: f64) -> Judgement {
        Judgement {
            principle,
            human_chosen_first: first,
            p_a,
            option_mass: None,
            rationale: None,
        }
    }

    #[test]
    fn a_label_that_always_says_a_is_fully_position_biased() {
        let always_a = [judgement(0, true, 1.0), judgement(0, false, 1.0)];
        assert_eq!(position_bias(&always_a), Some(1.0));
        let follows_reply = [judgement(0, true, 0.8), judgement(0, false, 0.2)];
        assert!(position_bias(&follows_reply).is_some_and(|b| b.abs() < 1e-12));
        let one_order = [judgement(0, true, 0.8), judgement(1, false, 0.8)];
        assert_eq!(position_bias(&one_order), None);
    }

    #[test]
    fn a_tree_whose_links_loop_or_dangle_is_refused() {
        let mut tree = Tree::new();
        let a = tree.add(Tree::ROOT, "one".into(), vec![]);
        tree.add(a, "two".into(), vec![]);
        assert!(check_tree(&tree).is_ok());
        let mut looped = tree.clone();
        looped.nodes[1].parent = Some(2);
        assert!(check_tree(&looped).is_err());
        let mut dangling = tree.clone();
        dangling.nodes[2].children.push(9);
        assert!(check_tree(&dangling).is_err());
    }

    #[test]
    fn the_chosen_path_ends_at_the_node_whose_text_is_the_solution() {
        let mut tree = Tree::new();
        let a = tree.add(Tree::ROOT, "one\n\n".into(), vec![]);
        let b = tree.add(a, "two".into(), vec![]);
        let c = tree.add(a, "three".into(), vec![]);
        tree.node_mut(b).finished = true;
        tree.node_mut(c).finished = true;
        let record = serde_json::json!({
            "question": "q", "correct": true, "answer": null, "solution": "one\n\nthree",
            "compute": Compute::default(), "tree": tree,
        });
        assert_eq!(chosen_path(&record), vec![0, a, c]);
    }
}
