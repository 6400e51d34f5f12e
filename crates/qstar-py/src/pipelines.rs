//! `label`, `rate` and `solve`: lists of dicts (the rows the command-line
//! program reads from JSONL) in, lists of dicts (the records it writes)
//! out. A record's `line` is its row's position in the list, 1-based, as
//! a JSONL file would number it.

use std::path::PathBuf;
use std::sync::Arc;

use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use pyo3::types::{PyList, PyString};
use qstar_core::{LanguageModel, Message, PromptFormat};
use qstar_feedback::{
    critique_and_revise, judge_prompts, judged_record, opening_prompts, rated_pair_record,
    revision_rows, CaiConfig, CaiLabeler, Constitution, JudgeConfig, LabelRecord, PrincipleChoice,
    Rater, ReviseConfig, SftKeys,
};
use qstar_search::verifier::Aggregation;
use qstar_search::{
    verifier_names, Policy, SearchConfig, SearchError, Solver, Strategy, VerifierKind,
};
use qstar_tasks::{pair_from_row, problem_from_row, PreferencePair, RowLayout, Task, TrlForm};
use serde_json::{json, Value};

use crate::convert::{from_py, to_py};
use crate::{model_error, model_or_default, qstar_error, runtime, Model, QstarError};

/// The largest search budget N.
const MAX_BUDGET: usize = 1024;

/// The rows of the list argument `name`, each a dict.
fn read_rows(name: &str, rows: &Bound<'_, PyAny>) -> PyResult<Vec<Value>> {
    if rows.cast::<PyString>().is_ok() {
        return Err(PyValueError::new_err(format!(
            "{name} is a list of dicts, not a string"
        )));
    }
    let mut out = Vec::new();
    for (i, item) in rows.try_iter()?.enumerate() {
        let item = item?;
        let row = from_py(&item).map_err(|e| PyValueError::new_err(format!("{name}[{i}]: {e}")))?;
        if !row.is_object() {
            return Err(PyValueError::new_err(format!("{name}[{i}]: not a dict")));
        }
        out.push(row);
    }
    Ok(out)
}

/// A settings value named by its string, through the name serde gives it.
fn named<T: serde::de::DeserializeOwned>(what: &str, name: &str, choices: &str) -> PyResult<T> {
    serde_json::from_value(json!(name))
        .map_err(|_| PyValueError::new_err(format!("unknown {what} {name:?}: use {choices}")))
}

/// The pairs of `rows`, a bad row naming its index.
fn read_pairs(name: &str, rows: &[Value]) -> PyResult<Vec<PreferencePair>> {
    rows.iter()
        .enumerate()
        .map(|(i, row)| {
            pair_from_row(row, i + 1, false)
                .map_err(|e| PyValueError::new_err(format!("{name}[{i}]: {e}")))
        })
        .collect()
}

/// TRL's row form: as asked, or under `auto` the first row's.
fn row_form(name: &str, rows: &[Value]) -> PyResult<TrlForm> {
    match name {
        "auto" => Ok(rows
            .first()
            .map_or(TrlForm::Conversational, TrlForm::of_row)),
        "standard" => Ok(TrlForm::Standard),
        "conversational" => Ok(TrlForm::Conversational),
        other => Err(PyValueError::new_err(format!(
            "unknown row_form {other:?}: use auto, standard or conversational"
        ))),
    }
}

/// Runs `work` with the interpreter lock released; `make` builds it on the
/// waiting thread, so the work itself need not be `Send`.
fn wait_with<T, F>(py: Python<'_>, make: impl FnOnce() -> F + Send) -> PyResult<T>
where
    T: Send,
    F: std::future::Future<Output = T>,
{
    let rt = runtime()?;
    Ok(py.detach(|| rt.block_on(make())))
}

fn records_to_py<'py>(py: Python<'py>, records: &[Value]) -> PyResult<Bound<'py, PyList>> {
    let list = PyList::empty(py);
    for r in records {
        list.append(to_py(py, r)?)?;
    }
    Ok(list)
}

/// AI preference labels for `pairs` (TRL rows, plain or conversational,
/// or HH-RLHF transcript pairs), as `qstar label` writes them: the pair
/// with the preferred reply as `chosen`, `soft_label` (the probability that
/// it is the better one), `p_human_chosen` and the judgements. `principles`
/// is a number sampled per pair or `"all"`; `both_orders` averages the two
/// orders of the replies (position debiasing).
#[pyfunction]
#[pyo3(signature = (pairs, *, model=None, principles=None, both_orders=true, seed=0, method="cai", prompt_format="chat", keys="trl", row_form="auto", constitution=None, few_shot=0, principle_last=false, batch_pairs=8))]
#[allow(clippy::too_many_arguments)] // Python's keyword arguments
pub fn label<'py>(
    py: Python<'py>,
    pairs: &Bound<'py, PyAny>,
    model: Option<&Bound<'py, Model>>,
    principles: Option<&Bound<'py, PyAny>>,
    both_orders: bool,
    seed: u64,
    method: &str,
    prompt_format: &str,
    keys: &str,
    row_form: &str,
    constitution: Option<PathBuf>,
    few_shot: usize,
    principle_last: bool,
    batch_pairs: usize,
) -> PyResult<Bound<'py, PyList>> {
    let rows = read_rows("pairs", pairs)?;
    let pairs = read_pairs("pairs", &rows)?;
    let principles = match principles {
        None => PrincipleChoice::Sample(1),
        Some(p)
            if p.cast::<PyString>()
                .is_ok_and(|s| s.to_str().ok() == Some("all")) =>
        {
            PrincipleChoice::All
        }
        Some(p) => match p.extract::<usize>() {
            Ok(k) if k > 0 => PrincipleChoice::Sample(k),
            _ => {
                return Err(PyValueError::new_err(
                    "principles is a positive number or \"all\"",
                ))
            }
        },
    };
    let constitution = match &constitution {
        Some(path) => Constitution::load(path).map_err(PyValueError::new_err)?,
        None => Constitution::default_constitution(),
    };
    if few_shot > constitution.few_shot.len() {
        return Err(PyValueError::new_err(format!(
            "few_shot {few_shot} asks for more examples than the constitution has ({})",
            constitution.few_shot.len()
        )));
    }
    let layout = match keys {
        "trl" => RowLayout::Trl(self::row_form(row_form, &rows)?),
        "openrlhf" => RowLayout::Openrlhf,
        other => {
            return Err(PyValueError::new_err(format!(
                "unknown keys {other:?}: use trl or openrlhf"
            )))
        }
    };
    let config = CaiConfig {
        method: named("method", method, "cai, rlaif or cot")?,
        format: named("prompt_format", prompt_format, "chat or plain")?,
        principles,
        debias: both_orders,
        seed,
        few_shot,
        principle_last,
        ..CaiConfig::default()
    };
    let batch = positive_batch("batch_pairs", batch_pairs)?;
    if pairs.is_empty() {
        return Ok(PyList::empty(py));
    }
    let opened = model_or_default(py, model)?;
    let records = wait_with(py, move || async move {
        let labeler =
            CaiLabeler::new(opened.model.as_ref(), &constitution, config).map_err(model_error)?;
        let mut records = Vec::with_capacity(pairs.len());
        for chunk in pairs.chunks(batch) {
            let labels = labeler.label(chunk).await.map_err(model_error)?;
            for (pair, label) in chunk.iter().zip(labels) {
                let record = LabelRecord::new(pair, label, layout);
                records.push(serde_json::to_value(record).map_err(qstar_error)?);
            }
        }
        Ok::<_, PyErr>(records)
    })??;
    records_to_py(py, &records)
}

/// Constitutional AI's supervised stage, as `qstar revise` writes it: for
/// each pair's opening human turn, a sampled reply critiqued and revised
/// under sampled critique/revision pairs, `rounds` times; each row is an
/// SFT example (`keys`: TRL `messages` or OpenRLHF `input`/`output`) of the
/// final revision with its `chain`, and with `mix_input_replies` the pair's
/// own preferred reply as a second row.
#[pyfunction]
#[pyo3(signature = (pairs, *, model=None, rounds=1, seed=0, temperature=0.7, max_tokens=128, constitution=None, keys="trl", mix_input_replies=false, batch=8))]
#[allow(clippy::too_many_arguments)] // Python's keyword arguments
pub fn revise<'py>(
    py: Python<'py>,
    pairs: &Bound<'py, PyAny>,
    model: Option<&Bound<'py, Model>>,
    rounds: usize,
    seed: u64,
    temperature: f32,
    max_tokens: usize,
    constitution: Option<PathBuf>,
    keys: &str,
    mix_input_replies: bool,
    batch: usize,
) -> PyResult<Bound<'py, PyList>> {
    let rows = read_rows("pairs", pairs)?;
    let pairs = read_pairs("pairs", &rows)?;
    let keys: SftKeys = named("keys", keys, "trl or openrlhf")?;
    if !(temperature.is_finite() && temperature >= 0.0) {
        return Err(PyValueError::new_err("temperature is a number ≥ 0"));
    }
    let constitution = match &constitution {
        Some(path) => Constitution::load(path).map_err(PyValueError::new_err)?,
        None => Constitution::default_constitution(),
    };
    let config = ReviseConfig {
        rounds,
        seed,
        temperature,
        max_tokens,
    };
    let batch = positive_batch("batch", batch)?;
    if pairs.is_empty() {
        return Ok(PyList::empty(py));
    }
    let opened = model_or_default(py, model)?;
    let records = wait_with(py, move || async move {
        let mut records = Vec::new();
        for chunk in pairs.chunks(batch) {
            let prompts = opening_prompts(chunk);
            let revisions =
                critique_and_revise(opened.model.as_ref(), &constitution, &config, &prompts)
                    .await
                    .map_err(model_error)?;
            for (pair, rev) in chunk.iter().zip(&revisions) {
                records.extend(revision_rows(pair, rev, keys, mix_input_replies));
            }
        }
        Ok::<_, PyErr>(records)
    })??;
    records_to_py(py, &records)
}

/// Self-rewarding preference pairs, as `qstar judge` writes them: for each
/// pair's opening human turn, `samples` replies, each judged by the model
/// on a 0–5 scale; every record has the samples with their judgements and
/// `unparsed` (scores that could not be read), and those whose scores
/// differ carry the best and worst reply as `chosen`/`rejected` in
/// `row_form`.
#[pyfunction]
#[pyo3(signature = (pairs, *, model=None, samples=4, seed=0, temperature=0.8, max_tokens=128, row_form="auto", batch=8))]
#[allow(clippy::too_many_arguments)] // Python's keyword arguments
pub fn judge<'py>(
    py: Python<'py>,
    pairs: &Bound<'py, PyAny>,
    model: Option<&Bound<'py, Model>>,
    samples: usize,
    seed: u64,
    temperature: f32,
    max_tokens: usize,
    row_form: &str,
    batch: usize,
) -> PyResult<Bound<'py, PyList>> {
    let rows = read_rows("pairs", pairs)?;
    let pairs = read_pairs("pairs", &rows)?;
    if !(2..=crate::MAX_SAMPLES).contains(&samples) {
        return Err(PyValueError::new_err(format!(
            "samples is from 2 to {}",
            crate::MAX_SAMPLES
        )));
    }
    if !(temperature.is_finite() && temperature >= 0.0) {
        return Err(PyValueError::new_err("temperature is a number ≥ 0"));
    }
    let form = self::row_form(row_form, &rows)?;
    let config = JudgeConfig {
        samples,
        seed,
        temperature,
        max_tokens,
        ..JudgeConfig::default()
    };
    let batch = positive_batch("batch", batch)?;
    if pairs.is_empty() {
        return Ok(PyList::empty(py));
    }
    let opened = model_or_default(py, model)?;
    let records = wait_with(py, move || async move {
        let mut records = Vec::new();
        for chunk in pairs.chunks(batch) {
            let prompts = opening_prompts(chunk);
            let judged = judge_prompts(opened.model.as_ref(), &config, &prompts)
                .await
                .map_err(model_error)?;
            for (pair, j) in chunk.iter().zip(&judged) {
                records.push(judged_record(pair.line, j, form));
            }
        }
        Ok::<_, PyErr>(records)
    })??;
    records_to_py(py, &records)
}

/// d-RLAIF rewards in [-1, 1] from the model's 1–10 rating. Preference
/// pairs give `qstar rate`'s records (`reward_chosen`, `reward_rejected`
/// and both ratings beside the TRL row); rows of TRL's prompt–completion
/// form (`prompt` and `completion`, strings or message lists) give
/// `{"line", "prompt", "completion", "reward", "rating"}`. One list holds
/// one kind of row.
#[pyfunction]
#[pyo3(signature = (pairs_or_rows, *, model=None, prompt_format="chat", row_form="auto", batch=16))]
pub fn rate<'py>(
    py: Python<'py>,
    pairs_or_rows: &Bound<'py, PyAny>,
    model: Option<&Bound<'py, Model>>,
    prompt_format: &str,
    row_form: &str,
    batch: usize,
) -> PyResult<Bound<'py, PyList>> {
    let rows = read_rows("pairs_or_rows", pairs_or_rows)?;
    let format: PromptFormat = named("prompt_format", prompt_format, "chat or plain")?;
    let is_pair = |row: &Value| !row["chosen"].is_null() || !row["rejected"].is_null();
    let pairs_given = rows.first().is_some_and(is_pair);
    for (i, row) in rows.iter().enumerate() {
        if is_pair(row) != pairs_given {
            return Err(PyValueError::new_err(format!(
                "pairs_or_rows[{i}]: a {} among {}: give one kind of row",
                if pairs_given {
                    "prompt–completion row"
                } else {
                    "preference pair"
                },
                if pairs_given {
                    "preference pairs"
                } else {
                    "prompt–completion rows"
                },
            )));
        }
    }
    // Each item: the conversation and the reply to rate.
    let (items, form): (Vec<(Vec<Message>, String)>, TrlForm) = if pairs_given {
        let pairs = read_pairs("pairs_or_rows", &rows)?;
        let items = pairs
            .into_iter()
            .flat_map(|p| {
                [
                    (p.conversation.clone(), p.chosen),
                    (p.conversation, p.rejected),
                ]
            })
            .collect();
        (items, self::row_form(row_form, &rows)?)
    } else {
        let mut items = Vec::with_capacity(rows.len());
        for (i, row) in rows.iter().enumerate() {
            let bad = |e: String| PyValueError::new_err(format!("pairs_or_rows[{i}]: {e}"));
            if row["completion"].is_null() {
                return Err(bad(
                    "needs `chosen` and `rejected`, or `prompt` and `completion`".into(),
                ));
            }
            // Read as a pair of two equal replies: the same parsing of a
            // prompt and a reply as preference rows get.
            let as_pair = json!({"prompt": row["prompt"], "chosen": row["completion"], "rejected": row["completion"]});
            let pair = pair_from_row(&as_pair, i + 1, false).map_err(bad)?;
            items.push((pair.conversation, pair.chosen));
        }
        (items, TrlForm::Conversational)
    };
    let batch = positive_batch("batch", batch)?;
    if items.is_empty() {
        return Ok(PyList::empty(py));
    }
    let opened = model_or_default(py, model)?;
    let ratings = wait_with(py, move || async move {
        let rater = Rater::new(opened.model.as_ref(), format).map_err(model_error)?;
        let mut ratings = Vec::with_capacity(items.len());
        for chunk in items.chunks(batch) {
            let asked: Vec<(&[Message], &str)> = chunk
                .iter()
                .map(|(c, r)| (c.as_slice(), r.as_str()))
                .collect();
            ratings.extend(rater.rate(&asked).await.map_err(model_error)?);
        }
        Ok::<_, PyErr>(ratings)
    })??;
    let mut records = Vec::with_capacity(rows.len());
    if pairs_given {
        let pairs = read_pairs("pairs_or_rows", &rows)?;
        for (pair, r) in pairs.iter().zip(ratings.chunks(2)) {
            let [chosen, rejected] = r else {
                return Err(QstarError::new_err("a rating is missing"));
            };
            records.push(Value::Object(rated_pair_record(
                pair, form, chosen, rejected,
            )));
        }
    } else {
        for (i, (row, rating)) in rows.iter().zip(&ratings).enumerate() {
            records.push(json!({
                "line": i + 1,
                "prompt": row["prompt"],
                "completion": row["completion"],
                "reward": rating.reward,
                "rating": rating,
            }));
        }
    }
    records_to_py(py, &records)
}

/// Test-time search over `questions` (GSM8K, MATH or generated rows), as
/// `qstar solve` writes its records: the answer, whether it is correct,
/// the compute spent and the search tree. `n` is the budget (samples,
/// beams, simulations or attempts); strategies that rank need a
/// `verifier`; `compute-optimal` needs `policy`, a sweep's policy as a dict.
#[pyfunction]
#[pyo3(signature = (questions, *, model=None, task="arithmetic", strategy="majority", n=4, verifier=None, seed=0, temperature=None, max_tokens=None, prompt_format=None, aggregation=None, ref_model=None, beta=0.1, policy=None, parallel=8))]
#[allow(clippy::too_many_arguments)] // Python's keyword arguments
pub fn solve<'py>(
    py: Python<'py>,
    questions: &Bound<'py, PyAny>,
    model: Option<&Bound<'py, Model>>,
    task: &str,
    strategy: &str,
    n: usize,
    verifier: Option<&str>,
    seed: u64,
    temperature: Option<f32>,
    max_tokens: Option<usize>,
    prompt_format: Option<&str>,
    aggregation: Option<&str>,
    ref_model: Option<PathBuf>,
    beta: f64,
    policy: Option<&Bound<'py, PyAny>>,
    parallel: usize,
) -> PyResult<Bound<'py, PyList>> {
    let task = Task::parse(task).map_err(PyValueError::new_err)?;
    let strategy = Strategy::all()
        .iter()
        .copied()
        .find(|s| s.name() == strategy)
        .ok_or_else(|| {
            let names: Vec<&str> = Strategy::all().iter().map(|s| s.name()).collect();
            PyValueError::new_err(format!(
                "unknown strategy {strategy:?}: use {}",
                names.join(", ")
            ))
        })?;
    if !(1..=MAX_BUDGET).contains(&n) {
        return Err(PyValueError::new_err(format!(
            "n must be 1 to {MAX_BUDGET}, not {n}"
        )));
    }
    let verifier: Option<VerifierKind> = match verifier {
        Some(v) => Some(named("verifier", v, &verifier_names())?),
        None => None,
    };
    if strategy.needs_verifier() && verifier.is_none() {
        return Err(PyValueError::new_err(format!(
            "strategy {} needs a verifier ({})",
            strategy.name(),
            verifier_names()
        )));
    }
    if matches!(
        verifier,
        Some(VerifierKind::OrmModel | VerifierKind::PrmModel)
    ) {
        return Err(PyValueError::new_err(
            "the orm-model and prm-model verifiers read a trained model: use the command line \
             (qstar solve --verifier orm-model:DIR or prm-model:DIR)",
        ));
    }
    if verifier == Some(VerifierKind::Dpo) && ref_model.is_none() {
        return Err(PyValueError::new_err("the dpo verifier needs ref_model"));
    }
    let aggregation: Option<Aggregation> = match aggregation {
        Some(a) => Some(named(
            "aggregation",
            a,
            "the names `qstar solve --aggregation` takes",
        )?),
        None => None,
    };
    let policy: Option<Policy> = match policy {
        Some(p) => {
            let value = from_py(p).map_err(|e| PyValueError::new_err(format!("policy: {e}")))?;
            let value = value.get("policy").cloned().unwrap_or(value);
            Some(serde_json::from_value(value).map_err(|e| {
                PyValueError::new_err(format!("policy: not a compute-optimal policy: {e}"))
            })?)
        }
        None => None,
    };
    if strategy == Strategy::ComputeOptimal && policy.is_none() {
        return Err(PyValueError::new_err(
            "compute-optimal needs policy (a sweep's policy)",
        ));
    }
    let mut config = SearchConfig {
        seed,
        ..SearchConfig::default()
    };
    if let Some(t) = temperature {
        config.temperature = t;
    }
    if let Some(m) = max_tokens {
        config.max_tokens = m;
    }
    if let Some(f) = prompt_format {
        config.format = named("prompt_format", f, "chat or plain")?;
    }
    let rows = read_rows("questions", questions)?;
    let problems = rows
        .iter()
        .enumerate()
        .map(|(i, row)| {
            problem_from_row(row, task, i + 1)
                .map_err(|e| PyValueError::new_err(format!("questions[{i}]: {e}")))
        })
        .collect::<PyResult<Vec<_>>>()?;
    if problems.is_empty() {
        return Ok(PyList::empty(py));
    }
    let opened = model_or_default(py, model)?;
    let parallel = parallel.max(1);
    let records = wait_with(py, move || async move {
        let (reference, reference_parameters): (Option<Arc<dyn LanguageModel>>, _) =
            match &ref_model {
                Some(path) => {
                    let engine = qstar_engine::Engine::load(path, Default::default())
                        .map_err(qstar_error)?;
                    let parameters = engine.info().parameters as u64;
                    (Some(Arc::new(engine)), Some(parameters))
                }
                None => (None, None),
            };
        let solver = Solver {
            model: opened.model.as_ref(),
            reference_model: reference.as_deref(),
            reference_parameters,
            parameters: opened.parameters,
            task,
            config: &config,
            verifier,
            aggregation,
            beta,
            // Trained reward models are the command line's for now.
            reward_model: None,
            step_model: None,
        };
        let mut records = Vec::with_capacity(problems.len());
        for chunk in problems.chunks(parallel) {
            let searches = chunk
                .iter()
                .map(|p| solver.solve(p, strategy, n, policy.as_ref()));
            for result in futures::future::join_all(searches).await {
                let record = result.map_err(search_error)?;
                records.push(serde_json::to_value(record).map_err(qstar_error)?);
            }
        }
        Ok::<_, PyErr>(records)
    })??;
    records_to_py(py, &records)
}

fn search_error(e: SearchError) -> PyErr {
    if e.is_input_error() {
        PyValueError::new_err(e.to_string())
    } else {
        QstarError::new_err(e.to_string())
    }
}

/// A batch size the caller gave: 0 is refused, never read as 1.
fn positive_batch(name: &str, batch: usize) -> PyResult<usize> {
    if batch == 0 {
        return Err(PyValueError::new_err(format!("{name} must be at least 1")));
    }
    Ok(batch)
}
