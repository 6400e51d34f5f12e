//! A training run: a seeded plan of steps over the data, gradient
//! accumulation to a token budget per step, AdamW, clipping, evaluation,
//! `metrics.jsonl`, and checkpoints from which a killed run continues as if
//! it had never stopped.

use std::collections::BTreeMap;
use std::fs;
use std::io::Write;
use std::path::Path;
use std::time::Instant;

use serde::{Deserialize, Serialize};

use crate::checkpoint::{self, write_atomic};
use crate::error::TrainError;
use crate::model::{cross_entropy, Grads, Model, Sequence, Trainable};
use crate::optim::{clip, AdamW, AdamWConfig, Decay, Schedule};
use crate::rng::SplitMix;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrainConfig {
    pub epochs: usize,
    /// Stop after this many steps (the schedule still spans the whole plan).
    pub max_steps: Option<usize>,
    /// Tokens per optimizer step (sequences are added while they fit).
    pub batch_tokens: usize,
    /// Tokens per forward/backward pass; a step is accumulated over passes.
    pub micro_tokens: usize,
    pub lr: f64,
    pub warmup_steps: usize,
    pub decay: Decay,
    pub min_lr_ratio: f64,
    /// 0 turns clipping off.
    pub max_grad_norm: f64,
    pub adamw: AdamWConfig,
    pub seed: u64,
    pub checkpoint_every: usize,
    /// Evaluate every this many steps (and at the end); 0: only at the end.
    pub eval_every: usize,
}

impl TrainConfig {
    pub fn check(&self) -> Result<(), TrainError> {
        let bad = |m: &str| Err(TrainError::Input(m.into()));
        if self.epochs == 0 {
            return bad("--epochs must be at least 1");
        }
        if self.batch_tokens == 0 || self.micro_tokens == 0 {
            return bad("--batch-tokens and --micro-tokens must be positive");
        }
        if !(self.lr.is_finite() && self.lr > 0.0) {
            return bad("--lr must be a positive number");
        }
        if self.checkpoint_every == 0 {
            return bad("--checkpoint-every must be at least 1");
        }
        if !(0.0..=1.0).contains(&self.min_lr_ratio) {
            return bad("the final learning-rate ratio must be in [0, 1]");
        }
        Ok(())
    }
}

/// One optimizer step of the plan: which epoch, and which sequences.
#[derive(Debug, Clone, PartialEq)]
pub struct PlannedStep {
    pub epoch: usize,
    pub examples: Vec<usize>,
}

/// Each epoch visits the sequences in an order drawn from the seed, packed
/// greedily into steps of at most `batch_tokens` tokens (a longer sequence
/// makes a step of its own).
pub fn plan(lens: &[usize], epochs: usize, batch_tokens: usize, seed: u64) -> Vec<PlannedStep> {
    let mut steps = Vec::new();
    for epoch in 0..epochs {
        let mut order: Vec<usize> = (0..lens.len()).collect();
        SplitMix::new(
            seed.wrapping_add(epoch as u64)
                .wrapping_mul(0x5851_f42d_4c95_7f2d),
        )
        .shuffle(&mut order);
        let mut current = Vec::new();
        let mut tokens = 0;
        for i in order {
            if !current.is_empty() && tokens + lens[i] > batch_tokens {
                steps.push(PlannedStep {
                    epoch,
                    examples: std::mem::take(&mut current),
                });
                tokens = 0;
            }
            tokens += lens[i];
            current.push(i);
        }
        if !current.is_empty() {
            steps.push(PlannedStep {
                epoch,
                examples: current,
            });
        }
    }
    steps
}

/// Splits a step's sequences into passes of at most `micro_tokens` tokens.
pub fn micro_batches(examples: &[usize], lens: &[usize], micro_tokens: usize) -> Vec<Vec<usize>> {
    let mut out: Vec<Vec<usize>> = Vec::new();
    let mut tokens = 0;
    for &i in examples {
        if out
            .last()
            .is_none_or(|b| !b.is_empty() && tokens + lens[i] > micro_tokens)
        {
            out.push(Vec::new());
            tokens = 0;
        }
        tokens += lens[i];
        if let Some(b) = out.last_mut() {
            b.push(i);
        }
    }
    out
}

/// One line of `metrics.jsonl`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StepRecord {
    pub step: usize,
    pub epoch: usize,
    pub loss: f64,
    pub eval_loss: Option<f64>,
    pub lr: f64,
    pub grad_norm: f64,
    /// Tokens run through the model in this step, and how many were predicted.
    pub tokens: usize,
    pub predicted: usize,
    pub tok_s: f64,
    /// What the objective reports beyond the loss (DPO's rewards and
    /// log-probabilities; `eval_`-prefixed on evaluation steps); none for
    /// SFT, whose lines keep their form.
    #[serde(flatten, default)]
    pub metrics: Metrics,
}

/// Named figures of a step, in a stable order.
pub type Metrics = BTreeMap<String, f64>;

/// What a run optimizes. The run owns the plan, the optimizer, the
/// checkpoints and the metrics file; an objective turns a step's examples
/// into a loss and its gradient.
pub trait Objective {
    /// Tokens each example runs through the model: the plan packs steps
    /// and passes by them.
    fn lens(&self) -> Vec<usize>;
    /// Tokens of `examples` whose log-probability enters the loss.
    fn predicted(&self, examples: &[usize]) -> usize;
    /// Adds to `grads` the gradient of the step's loss over the examples
    /// of `passes` (the step split into forward/backward passes by the run;
    /// `seed(m)` seeds pass m's dropout); returns the loss and the step's
    /// metrics.
    fn step(
        &self,
        model: &Model<f32>,
        grads: &mut Grads<f32>,
        passes: &[Vec<usize>],
        seed: &dyn Fn(usize) -> u64,
    ) -> Result<(f64, Metrics), TrainError>;
    /// Loss and metrics on the held-out examples; `None` when there are none.
    fn evaluate(
        &self,
        model: &Model<f32>,
        micro_tokens: usize,
    ) -> Result<Option<(f64, Metrics)>, TrainError>;
}

/// Supervised fine-tuning: the mean cross-entropy of the predicted tokens.
pub struct Sft<'a> {
    pub data: &'a [Sequence],
    pub eval: &'a [Sequence],
}

impl Objective for Sft<'_> {
    fn lens(&self) -> Vec<usize> {
        self.data.iter().map(|s| s.tokens.len()).collect()
    }

    fn predicted(&self, examples: &[usize]) -> usize {
        examples.iter().map(|&i| self.data[i].predicted()).sum()
    }

    fn step(
        &self,
        model: &Model<f32>,
        grads: &mut Grads<f32>,
        passes: &[Vec<usize>],
        seed: &dyn Fn(usize) -> u64,
    ) -> Result<(f64, Metrics), TrainError> {
        let predicted: usize = passes.iter().map(|p| self.predicted(p)).sum();
        let mut loss = 0.0;
        for (m, batch) in passes.iter().enumerate() {
            let seqs: Vec<Sequence> = batch.iter().map(|&i| self.data[i].clone()).collect();
            loss += accumulate(model, grads, &seqs, predicted, seed(m))?;
        }
        Ok((loss, Metrics::new()))
    }

    fn evaluate(
        &self,
        model: &Model<f32>,
        micro_tokens: usize,
    ) -> Result<Option<(f64, Metrics)>, TrainError> {
        if self.eval.is_empty() {
            return Ok(None);
        }
        Ok(Some((
            evaluate(model, self.eval, micro_tokens)?,
            Metrics::new(),
        )))
    }
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Summary {
    pub steps: usize,
    pub tokens: usize,
    pub final_loss: Option<f64>,
    pub eval_loss: Option<f64>,
    /// Tokens per second over the steps run by this call.
    pub tok_s: f64,
    /// The checkpoint this call continued from.
    pub resumed_from: Option<usize>,
}

#[derive(Serialize, Deserialize)]
struct RunState {
    step: usize,
    optimizer_steps: u64,
}

/// What the optimizer updates, in the order of [`Grads::tensors`]: every
/// weight or the adapters, then the score head when the model has one.
fn trainable_tensors(
    model: &mut Model<f32>,
    trainable: Trainable,
) -> Vec<(String, Vec<usize>, &mut [f32])> {
    let mut out = match trainable {
        Trainable::Full => model.base.tensors_mut(),
        Trainable::Lora => model
            .lora
            .as_mut()
            .map(|l| l.tensors_mut())
            .unwrap_or_default(),
    };
    if let Some(h) = model.head.as_mut() {
        out.extend(h.params.tensors_mut());
    }
    out
}

/// Whether a trainable tensor takes weight decay: matrices do; norms and
/// the score head's bias do not.
fn decays(name: &str) -> bool {
    !name.ends_with("norm.weight") && name != "score.bias"
}

/// Forward and backward of one pass: adds the gradient of the pass's share
/// of the step's mean cross-entropy (`predicted` tokens in the whole step)
/// and returns that share.
pub fn accumulate(
    model: &Model<f32>,
    grads: &mut Grads<f32>,
    seqs: &[Sequence],
    predicted: usize,
    seed: u64,
) -> Result<f64, TrainError> {
    let (logps, tape) = model.forward(seqs, seed).map_err(TrainError::Input)?;
    let (loss, dlogp) = cross_entropy(&logps, predicted);
    model
        .backward(tape, &dlogp, grads)
        .map_err(TrainError::Internal)?;
    Ok(loss)
}

/// Clips the gradients and takes one AdamW step; returns the norm before
/// clipping. A norm that is not finite leaves the weights alone.
pub fn update(
    model: &mut Model<f32>,
    trainable: Trainable,
    grads: &mut Grads<f32>,
    optimizer: &mut AdamW,
    decay: &[bool],
    lr: f64,
    max_grad_norm: f64,
) -> f64 {
    let norm = {
        let mut g: Vec<&mut [f32]> = grads.tensors_mut().into_iter().map(|(_, _, t)| t).collect();
        clip(&mut g, max_grad_norm)
    };
    if norm.is_finite() {
        let g: Vec<&[f32]> = grads.tensors().into_iter().map(|(_, _, t)| t).collect();
        let mut p: Vec<&mut [f32]> = trainable_tensors(model, trainable)
            .into_iter()
            .map(|(_, _, t)| t)
            .collect();
        optimizer.step(&mut p, &g, decay, lr);
    }
    norm
}

/// Which trainable tensors take weight decay (matrices, not norms).
pub fn decay_mask(model: &mut Model<f32>, trainable: Trainable) -> Vec<bool> {
    trainable_tensors(model, trainable)
        .iter()
        .map(|(n, _, _)| decays(n))
        .collect()
}

/// Sizes of the trainable tensors, in the optimizer's order.
pub fn trainable_sizes(model: &mut Model<f32>, trainable: Trainable) -> Vec<usize> {
    trainable_tensors(model, trainable)
        .iter()
        .map(|(_, _, t)| t.len())
        .collect()
}

/// Mean cross-entropy over `data`, in passes of `micro_tokens`.
pub fn evaluate(
    model: &Model<f32>,
    data: &[Sequence],
    micro_tokens: usize,
) -> Result<f64, TrainError> {
    let lens: Vec<usize> = data.iter().map(|s| s.tokens.len()).collect();
    let all: Vec<usize> = (0..data.len()).collect();
    let (mut sum, mut count) = (0.0, 0);
    for batch in micro_batches(&all, &lens, micro_tokens) {
        let seqs: Vec<Sequence> = batch.iter().map(|&i| data[i].clone()).collect();
        let (logps, _) = model.forward_eval(&seqs).map_err(TrainError::Input)?;
        sum -= logps.iter().map(|&l| l as f64).sum::<f64>();
        count += logps.len();
    }
    Ok(sum / count.max(1) as f64)
}

/// Trains `model` on `data` in `dir`, continuing from the last checkpoint
/// there when one exists for the same `key` (which names the model, the
/// data and every setting). `on_step(done, total, record)` sees each step.
#[allow(clippy::too_many_arguments)]
pub fn train(
    model: &mut Model<f32>,
    trainable: Trainable,
    data: &[Sequence],
    eval: &[Sequence],
    config: &TrainConfig,
    dir: &Path,
    key: &str,
    on_step: &mut dyn FnMut(usize, usize, &StepRecord),
) -> Result<Summary, TrainError> {
    if data.is_empty() {
        return Err(TrainError::Input("no training sequences".into()));
    }
    if data.iter().all(|s| s.predicted() == 0) {
        return Err(TrainError::Input(
            "no sequence has a token to learn (all are masked)".into(),
        ));
    }
    let objective = Sft { data, eval };
    train_objective(model, trainable, &objective, config, dir, key, on_step)
}

fn io_error(path: &Path) -> impl Fn(std::io::Error) -> TrainError {
    let path = path.to_path_buf();
    move |source| TrainError::Io {
        path: path.clone(),
        source,
    }
}

/// Makes `dir` the directory of the run named by `key`: a new directory
/// records the key, and one that holds another run is refused, so nothing
/// a run keeps there (checkpoints, cached reference log-probabilities) is
/// ever read by a different run.
pub fn open_run(dir: &Path, key: &str) -> Result<(), TrainError> {
    fs::create_dir_all(dir.join("checkpoints")).map_err(io_error(dir))?;
    let run_file = dir.join("run.json");
    match fs::read_to_string(&run_file) {
        Ok(text) => {
            let stored: serde_json::Value =
                serde_json::from_str(&text).map_err(|e| TrainError::Format {
                    path: run_file.clone(),
                    reason: e.to_string(),
                })?;
            if stored["key"].as_str() != Some(key) {
                return Err(TrainError::OtherRun {
                    dir: dir.to_path_buf(),
                    reason: "the model, the data or a setting differs".into(),
                });
            }
            Ok(())
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => write_atomic(
            &run_file,
            serde_json::json!({ "key": key }).to_string().as_bytes(),
        ),
        Err(e) => Err(TrainError::Io {
            path: run_file,
            source: e,
        }),
    }
}

/// The run loop for any objective: see [`train`].
#[allow(clippy::too_many_arguments)]
pub fn train_objective(
    model: &mut Model<f32>,
    trainable: Trainable,
    objective: &dyn Objective,
    config: &TrainConfig,
    dir: &Path,
    key: &str,
    on_step: &mut dyn FnMut(usize, usize, &StepRecord),
) -> Result<Summary, TrainError> {
    config.check()?;
    let lens = objective.lens();
    if lens.is_empty() {
        return Err(TrainError::Input("no training examples".into()));
    }
    if trainable == Trainable::Lora && model.lora.is_none() {
        return Err(TrainError::Input(
            "LoRA training needs an adapter on the model".into(),
        ));
    }
    let io = io_error;
    open_run(dir, key)?;

    let steps = plan(&lens, config.epochs, config.batch_tokens, config.seed);
    let total = config.max_steps.map_or(steps.len(), |m| m.min(steps.len()));
    let schedule = Schedule {
        lr: config.lr,
        warmup: config.warmup_steps,
        total: steps.len(),
        decay: config.decay,
        min_ratio: config.min_lr_ratio,
    };
    let names: Vec<(String, usize)> = trainable_tensors(model, trainable)
        .iter()
        .map(|(n, _, t)| (n.clone(), t.len()))
        .collect();
    let sizes: Vec<usize> = names.iter().map(|(_, n)| *n).collect();
    let decay: Vec<bool> = names.iter().map(|(n, _)| decays(n)).collect();
    let mut optimizer = AdamW::new(config.adamw, &sizes);

    // Continue from the last checkpoint, forgetting metrics written after it.
    let metrics_path = dir.join("metrics.jsonl");
    let resumed_from = checkpoint::latest(dir)?;
    let mut history: Vec<StepRecord> = Vec::new();
    if let Some(step) = resumed_from {
        let ck = checkpoint::checkpoint_dir(dir, step);
        let path = ck.join("trainable.safetensors");
        let mut tensors = checkpoint::read_tensors(&path)?;
        checkpoint::load_into(&path, &mut tensors, trainable_tensors(model, trainable))?;
        let path = ck.join("optimizer.safetensors");
        let mut moments = checkpoint::read_tensors(&path)?;
        for (i, (name, _)) in names.iter().enumerate() {
            for (which, into) in [("m", &mut optimizer.m[i]), ("v", &mut optimizer.v[i])] {
                let (_, values) = moments.remove(&format!("{which}.{name}")).ok_or_else(|| {
                    TrainError::Format {
                        path: path.clone(),
                        reason: format!("moment `{which}.{name}` is missing"),
                    }
                })?;
                if values.len() != into.len() {
                    return Err(TrainError::Format {
                        path: path.clone(),
                        reason: format!("moment `{which}.{name}` has another size"),
                    });
                }
                into.copy_from_slice(&values);
            }
        }
        let state_path = ck.join("state.json");
        let state: RunState =
            serde_json::from_str(&fs::read_to_string(&state_path).map_err(io(&state_path))?)
                .map_err(|e| TrainError::Format {
                    path: state_path.clone(),
                    reason: e.to_string(),
                })?;
        optimizer.steps = state.optimizer_steps;
        if let Ok(text) = fs::read_to_string(&metrics_path) {
            for line in text.lines() {
                if let Ok(r) = serde_json::from_str::<StepRecord>(line) {
                    if r.step <= step {
                        history.push(r);
                    }
                }
            }
        }
    }
    let mut lines = String::new();
    for r in &history {
        lines.push_str(&serde_json::to_string(r).map_err(|e| TrainError::Internal(e.to_string()))?);
        lines.push('\n');
    }
    write_atomic(&metrics_path, lines.as_bytes())?;
    let mut metrics = fs::OpenOptions::new()
        .append(true)
        .open(&metrics_path)
        .map_err(io(&metrics_path))?;

    let start = resumed_from.unwrap_or(0);
    let mut grads = model.grads(trainable);
    let began = Instant::now();
    let mut tokens_here = 0usize;
    let mut last_eval = None;
    for (index, planned) in steps.iter().enumerate().take(total).skip(start) {
        let t0 = Instant::now();
        grads.fill_zero();
        let predicted = objective.predicted(&planned.examples);
        let tokens: usize = planned.examples.iter().map(|&i| lens[i]).sum();
        let seed = |m: usize| {
            config.seed ^ ((index as u64) << 20 | m as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15)
        };
        let passes = micro_batches(&planned.examples, &lens, config.micro_tokens);
        let (loss, mut step_metrics) = objective.step(model, &mut grads, &passes, &seed)?;
        let lr = schedule.at(index);
        let grad_norm = update(
            model,
            trainable,
            &mut grads,
            &mut optimizer,
            &decay,
            lr,
            config.max_grad_norm,
        );
        if !grad_norm.is_finite() || !loss.is_finite() {
            return Err(TrainError::Input(format!(
                "step {}: the loss or the gradient is not finite (loss {loss}, gradient norm {grad_norm}); lower --lr",
                index + 1
            )));
        }
        let done = index + 1;
        let eval_loss = if done == total || (config.eval_every > 0 && done % config.eval_every == 0)
        {
            match objective.evaluate(model, config.micro_tokens)? {
                Some((e, eval_metrics)) => {
                    last_eval = Some(e);
                    step_metrics.extend(
                        eval_metrics
                            .into_iter()
                            .map(|(name, value)| (format!("eval_{name}"), value)),
                    );
                    Some(e)
                }
                None => None,
            }
        } else {
            None
        };
        tokens_here += tokens;
        let record = StepRecord {
            step: done,
            epoch: planned.epoch,
            loss,
            eval_loss,
            lr,
            grad_norm,
            tokens,
            predicted,
            tok_s: tokens as f64 / t0.elapsed().as_secs_f64(),
            metrics: step_metrics,
        };
        let line =
            serde_json::to_string(&record).map_err(|e| TrainError::Internal(e.to_string()))? + "\n";
        metrics
            .write_all(line.as_bytes())
            .map_err(io(&metrics_path))?;
        metrics.flush().map_err(io(&metrics_path))?;
        on_step(done, total, &record);
        history.push(record);
        if done % config.checkpoint_every == 0 || done == total {
            save_checkpoint(model, trainable, &optimizer, &names, dir, done)?;
        }
    }
    let final_loss = history.last().map(|r| r.loss);
    let eval_loss = last_eval.or_else(|| history.iter().rev().find_map(|r| r.eval_loss));
    Ok(Summary {
        steps: total,
        tokens: history.iter().map(|r| r.tokens).sum(),
        final_loss,
        eval_loss,
        tok_s: tokens_here as f64 / began.elapsed().as_secs_f64().max(1e-9),
        resumed_from,
    })
}

fn save_checkpoint(
    model: &mut Model<f32>,
    trainable: Trainable,
    optimizer: &AdamW,
    names: &[(String, usize)],
    dir: &Path,
    step: usize,
) -> Result<(), TrainError> {
    let ck = checkpoint::checkpoint_dir(dir, step);
    fs::create_dir_all(&ck).map_err(|source| TrainError::Io {
        path: ck.clone(),
        source,
    })?;
    {
        let tensors: Vec<(String, Vec<usize>, &[f32])> = trainable_tensors(model, trainable)
            .into_iter()
            .map(|(n, s, t)| (n, s, &*t))
            .collect();
        checkpoint::write_tensors(&ck.join("trainable.safetensors"), &tensors)?;
    }
    let mut moments = Vec::with_capacity(names.len() * 2);
    for (i, (name, n)) in names.iter().enumerate() {
        moments.push((format!("m.{name}"), vec![*n], &optimizer.m[i][..]));
        moments.push((format!("v.{name}"), vec![*n], &optimizer.v[i][..]));
    }
    checkpoint::write_tensors(&ck.join("optimizer.safetensors"), &moments)?;
    let state = RunState {
        step,
        optimizer_steps: optimizer.steps,
    };
    write_atomic(
        &ck.join("state.json"),
        serde_json::to_string(&state)
            .map_err(|e| TrainError::Internal(e.to_string()))?
            .as_bytes(),
    )?;
    checkpoint::commit(dir, step)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_plan_visits_every_sequence_once_per_epoch_within_the_budget() {
        let lens = [5, 9, 3, 12, 7, 1, 4];
        let steps = plan(&lens, 3, 12, 7);
        for epoch in 0..3 {
            let mut seen: Vec<usize> = steps
                .iter()
                .filter(|s| s.epoch == epoch)
                .flat_map(|s| s.examples.clone())
                .collect();
            seen.sort();
            assert_eq!(seen, (0..lens.len()).collect::<Vec<_>>());
        }
        for s in &steps {
            let tokens: usize = s.examples.iter().map(|&i| lens[i]).sum();
            assert!(tokens <= 12 || s.examples.len() == 1);
        }
        assert_eq!(steps, plan(&lens, 3, 12, 7), "same seed, same plan");
        assert_ne!(steps, plan(&lens, 3, 12, 8), "another seed, another order");
    }

    #[test]
    fn micro_batches_split_a_step_without_losing_a_sequence() {
        let lens = [5, 9, 3, 12, 7];
        let b = micro_batches(&[0, 1, 2, 3, 4], &lens, 10);
        assert_eq!(b, vec![vec![0], vec![1], vec![2], vec![3], vec![4]]);
        let b = micro_batches(&[2, 4, 0], &lens, 10);
        assert_eq!(b, vec![vec![2, 4], vec![0]]);
    }
}
