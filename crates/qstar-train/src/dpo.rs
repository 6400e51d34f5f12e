//! Direct preference optimization (Rafailov et al., 2023): the policy learns
//! from pairs of replies through the log-ratio of its probabilities to a
//! frozen reference's, h = (log π(y_w) − log π_ref(y_w)) − (log π(y_l) −
//! log π_ref(y_l)), with no reward model in between. β·(log π − log π_ref)
//! is the implicit reward; per token it is the Q-function reading of
//! "From r to Q*".
//!
//! A pair's loss depends on the model only through the two summed
//! log-probabilities, so its gradient is the two replies' token gradients
//! weighted by dL/d(log π(y_w)) and dL/d(log π(y_l)): [`pair_terms`] gives
//! those, and [`Dpo`] hands them to the model's backward pass.
//!
//! The reference log-probabilities come from the same trainer forward pass
//! as the policy's (without dropout), computed once before the first step
//! and kept in the run directory, so at step 1 the implicit reward is zero
//! and the sigmoid loss ln 2, up to the last bits that depend on which
//! replies share a pass (and unless LoRA dropout perturbs the policy).
//!
//! The logged figures follow TRL's names; two differ from TRL's values: a
//! tie counts half in `rewards/accuracies` (TRL counts it as a loss), and
//! rewards are β times summed log-ratios for every loss (TRL logs IPO's on
//! per-token means).

use std::collections::BTreeMap;
use std::fs;
use std::io::Write;
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::error::TrainError;
use crate::model::{Grads, Model, Sequence, Tape, Trainable};
use crate::real::Real;
use crate::reward::{log_sigmoid, sigmoid};
use crate::run::{
    micro_batches, open_run, train_objective, Metrics, Objective, StepRecord, Summary, TrainConfig,
};

/// The losses TRL's DPO trainer names, and a per-pair soft target.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DpoLoss {
    /// −log σ(βh); with label smoothing ε, conservative DPO:
    /// −(1 − ε)·log σ(βh) − ε·log σ(−βh).
    Sigmoid,
    /// Robust DPO (Chowdhury et al., 2024), unbiased under labels flipped
    /// with probability ε: [−(1 − ε)·log σ(βh) + ε·log σ(−βh)] / (1 − 2ε).
    Robust,
    /// IPO (Azar et al., 2023): (h − 1/(2β))², on log-probabilities
    /// averaged over each reply's tokens, as TRL computes it.
    Ipo,
    /// Conservative DPO with each pair's own target p (an AI label's soft
    /// label): −p·log σ(βh) − (1 − p)·log σ(−βh).
    Soft,
}

#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct DpoConfig {
    pub beta: f64,
    pub loss: DpoLoss,
    /// ε of `sigmoid` (cDPO) and `robust`; 0 otherwise.
    pub label_smoothing: f64,
    /// Weight of the chosen reply's mean per-token negative log-likelihood
    /// added to the loss (RPO's α): it keeps the chosen reply's probability
    /// from falling with the rejected one's.
    pub nll_coef: f64,
}

impl DpoConfig {
    pub fn check(&self) -> Result<(), String> {
        if !(self.beta.is_finite() && self.beta > 0.0) {
            return Err("--beta must be a positive number".into());
        }
        if !(self.nll_coef.is_finite() && self.nll_coef >= 0.0) {
            return Err("--nll-coef must not be negative".into());
        }
        let eps = self.label_smoothing;
        match self.loss {
            DpoLoss::Sigmoid if !(0.0..=0.5).contains(&eps) => {
                Err("--label-smoothing takes a value in [0, 0.5] for the sigmoid loss".into())
            }
            DpoLoss::Robust if !(0.0..0.5).contains(&eps) => {
                Err("--label-smoothing takes a value in [0, 0.5) for the robust loss".into())
            }
            DpoLoss::Ipo | DpoLoss::Soft if eps != 0.0 => Err(
                "--label-smoothing applies to the sigmoid and robust losses only (soft takes each pair's label)"
                    .into(),
            ),
            _ => Ok(()),
        }
    }
}

/// A pair's two replies as sequences whose predicted tokens are the reply's,
/// and P(chosen is better): 1 for a hard label, the soft label for `soft`.
#[derive(Debug, Clone, PartialEq)]
pub struct PreferenceSequences {
    pub chosen: Sequence,
    pub rejected: Sequence,
    pub target: f64,
}

impl PreferenceSequences {
    /// Tokens the pair runs through the model: both sequences.
    pub fn tokens(&self) -> usize {
        self.chosen.tokens.len() + self.rejected.tokens.len()
    }
}

/// Summed log-probabilities of a pair's chosen and rejected replies.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct LogpPair {
    pub chosen: f64,
    pub rejected: f64,
}

/// One pair's loss, its derivatives with respect to the policy's summed
/// log-probabilities of the two replies, and what TRL logs.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PairTerms {
    pub loss: f64,
    pub d_chosen: f64,
    pub d_rejected: f64,
    /// β·(log π − log π_ref) of each reply (summed over its tokens).
    pub reward_chosen: f64,
    pub reward_rejected: f64,
    /// Mean per-token negative log-likelihood of the chosen reply.
    pub nll: f64,
}

/// log(1 + eˣ) = −log σ(−x), without overflow.
fn softplus(x: f64) -> f64 {
    -log_sigmoid(-x)
}

/// The loss of one pair. `lengths` are the replies' token counts (IPO and
/// the NLL term average over them); `target` is P(chosen is better), read
/// by the soft loss only.
pub fn pair_terms(
    config: &DpoConfig,
    policy: LogpPair,
    reference: LogpPair,
    lengths: (usize, usize),
    target: f64,
) -> PairTerms {
    let beta = config.beta;
    let (n_chosen, n_rejected) = (lengths.0.max(1) as f64, lengths.1.max(1) as f64);
    let chosen_ratio = policy.chosen - reference.chosen;
    let rejected_ratio = policy.rejected - reference.rejected;
    // Each loss is written as a function of z = β·h, with dL/dz, except
    // IPO, whose h is on per-token means.
    let weighted_logistic = |p: f64, z: f64| {
        // −p·log σ(z) − (1 − p)·log σ(−z) and its derivative σ(z) − p.
        (p * softplus(-z) + (1.0 - p) * softplus(z), sigmoid(z) - p)
    };
    let (loss, d_chosen, d_rejected) = match config.loss {
        DpoLoss::Ipo => {
            let h = chosen_ratio / n_chosen - rejected_ratio / n_rejected;
            let gap = h - 1.0 / (2.0 * beta);
            (gap * gap, 2.0 * gap / n_chosen, -2.0 * gap / n_rejected)
        }
        loss => {
            let z = beta * (chosen_ratio - rejected_ratio);
            let eps = config.label_smoothing;
            let (l, dz) = match loss {
                DpoLoss::Sigmoid => weighted_logistic(1.0 - eps, z),
                DpoLoss::Soft => weighted_logistic(target, z),
                _ => {
                    // Robust: [(1 − ε)·softplus(−z) − ε·softplus(z)] / (1 − 2ε).
                    let norm = 1.0 - 2.0 * eps;
                    (
                        ((1.0 - eps) * softplus(-z) - eps * softplus(z)) / norm,
                        (-(1.0 - eps) * sigmoid(-z) - eps * sigmoid(z)) / norm,
                    )
                }
            };
            (l, beta * dz, -beta * dz)
        }
    };
    let nll = -policy.chosen / n_chosen;
    PairTerms {
        loss: loss + config.nll_coef * nll,
        d_chosen: d_chosen - config.nll_coef / n_chosen,
        d_rejected,
        reward_chosen: beta * chosen_ratio,
        reward_rejected: beta * rejected_ratio,
        nll,
    }
}

/// Sums of the per-pair figures TRL logs; `mean()` turns them into a step's
/// metrics.
#[derive(Default)]
struct Tally {
    pairs: usize,
    loss: f64,
    reward_chosen: f64,
    reward_rejected: f64,
    correct: f64,
    logp_chosen: f64,
    logp_rejected: f64,
    nll: f64,
}

impl Tally {
    fn add(&mut self, t: &PairTerms, policy: LogpPair) {
        self.pairs += 1;
        self.loss += t.loss;
        self.reward_chosen += t.reward_chosen;
        self.reward_rejected += t.reward_rejected;
        // A tie counts half, as it does for a reward model's accuracy.
        self.correct += match t.reward_chosen.partial_cmp(&t.reward_rejected) {
            Some(std::cmp::Ordering::Greater) => 1.0,
            Some(std::cmp::Ordering::Equal) => 0.5,
            _ => 0.0,
        };
        self.logp_chosen += policy.chosen;
        self.logp_rejected += policy.rejected;
        self.nll += t.nll;
    }

    fn mean(&self) -> (f64, Metrics) {
        let n = self.pairs.max(1) as f64;
        let metrics: Metrics = [
            ("rewards/chosen", self.reward_chosen),
            ("rewards/rejected", self.reward_rejected),
            ("rewards/accuracies", self.correct),
            ("rewards/margins", self.reward_chosen - self.reward_rejected),
            ("logps/chosen", self.logp_chosen),
            ("logps/rejected", self.logp_rejected),
            ("nll_loss", self.nll),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v / n))
        .collect();
        (self.loss / n, metrics)
    }
}

/// Runs `pairs[batch]` through the model in one pass (chosen, rejected,
/// chosen, … in order) and sums each reply's log-probabilities; `seed`
/// draws the dropout masks, none turns dropout off.
fn pass<T: Real>(
    model: &Model<T>,
    pairs: &[PreferenceSequences],
    batch: &[usize],
    seed: Option<u64>,
) -> Result<(Vec<LogpPair>, Tape<T>), TrainError> {
    let seqs: Vec<Sequence> = batch
        .iter()
        .flat_map(|&i| [pairs[i].chosen.clone(), pairs[i].rejected.clone()])
        .collect();
    let (logps, tape) = match seed {
        Some(s) => model.forward(&seqs, s),
        None => model.forward_eval(&seqs),
    }
    .map_err(TrainError::Input)?;
    let mut sums = Vec::with_capacity(batch.len());
    let mut at = 0;
    for &i in batch {
        let mut sum = |s: &Sequence| {
            let n = s.predicted();
            let total: f64 = logps[at..at + n].iter().map(|&l| l.to_f64()).sum();
            at += n;
            total
        };
        let chosen = sum(&pairs[i].chosen);
        let rejected = sum(&pairs[i].rejected);
        sums.push(LogpPair { chosen, rejected });
    }
    Ok((sums, tape))
}

/// One pass of DPO over `pairs[batch]`: adds `scale` × the gradient of the
/// pairs' summed loss to `grads`, and returns each pair's terms with the
/// policy's log-probabilities.
#[allow(clippy::too_many_arguments)]
pub fn accumulate_pairs<T: Real>(
    model: &Model<T>,
    grads: &mut Grads<T>,
    config: &DpoConfig,
    pairs: &[PreferenceSequences],
    reference: &[LogpPair],
    batch: &[usize],
    scale: f64,
    seed: Option<u64>,
) -> Result<Vec<(PairTerms, LogpPair)>, TrainError> {
    let (sums, tape) = pass(model, pairs, batch, seed)?;
    let mut dlogp = Vec::new();
    let mut out = Vec::with_capacity(batch.len());
    for (&i, &policy) in batch.iter().zip(&sums) {
        let pair = &pairs[i];
        let t = pair_terms(config, policy, reference[i], lengths(pair), pair.target);
        let (c, r) = lengths(pair);
        dlogp.extend(std::iter::repeat_n(T::from_f64(t.d_chosen * scale), c));
        dlogp.extend(std::iter::repeat_n(T::from_f64(t.d_rejected * scale), r));
        out.push((t, policy));
    }
    model
        .backward(tape, &dlogp, grads)
        .map_err(TrainError::Internal)?;
    Ok(out)
}

fn lengths(pair: &PreferenceSequences) -> (usize, usize) {
    (pair.chosen.predicted(), pair.rejected.predicted())
}

/// DPO as a run's objective: the mean pair loss of a step.
pub struct Dpo<'a> {
    pub config: DpoConfig,
    pub train: &'a [PreferenceSequences],
    pub train_reference: &'a [LogpPair],
    pub eval: &'a [PreferenceSequences],
    pub eval_reference: &'a [LogpPair],
}

impl Objective for Dpo<'_> {
    fn lens(&self) -> Vec<usize> {
        self.train.iter().map(PreferenceSequences::tokens).collect()
    }

    fn predicted(&self, examples: &[usize]) -> usize {
        examples
            .iter()
            .map(|&i| self.train[i].chosen.predicted() + self.train[i].rejected.predicted())
            .sum()
    }

    fn step(
        &self,
        model: &Model<f32>,
        grads: &mut Grads<f32>,
        passes: &[Vec<usize>],
        seed: &dyn Fn(usize) -> u64,
    ) -> Result<(f64, Metrics), TrainError> {
        let pairs: usize = passes.iter().map(Vec::len).sum();
        let scale = 1.0 / pairs.max(1) as f64;
        let mut tally = Tally::default();
        for (m, batch) in passes.iter().enumerate() {
            let terms = accumulate_pairs(
                model,
                grads,
                &self.config,
                self.train,
                self.train_reference,
                batch,
                scale,
                Some(seed(m)),
            )?;
            for (t, policy) in &terms {
                tally.add(t, *policy);
            }
        }
        Ok(tally.mean())
    }

    fn evaluate(
        &self,
        model: &Model<f32>,
        micro_tokens: usize,
    ) -> Result<Option<(f64, Metrics)>, TrainError> {
        if self.eval.is_empty() {
            return Ok(None);
        }
        let policy = logps(model, self.eval, micro_tokens, &mut |_| {})?;
        let mut tally = Tally::default();
        for ((pair, &p), &r) in self.eval.iter().zip(&policy).zip(self.eval_reference) {
            let t = pair_terms(&self.config, p, r, lengths(pair), pair.target);
            tally.add(&t, p);
        }
        Ok(Some(tally.mean()))
    }
}

/// Summed log-probabilities of every pair's replies (no dropout), in
/// passes of `micro_tokens`; `on_pass(done)` after each pass.
pub fn logps<T: Real>(
    model: &Model<T>,
    pairs: &[PreferenceSequences],
    micro_tokens: usize,
    on_pass: &mut dyn FnMut(usize),
) -> Result<Vec<LogpPair>, TrainError> {
    let lens: Vec<usize> = pairs.iter().map(PreferenceSequences::tokens).collect();
    let all: Vec<usize> = (0..pairs.len()).collect();
    let mut out = Vec::with_capacity(pairs.len());
    for batch in micro_batches(&all, &lens, micro_tokens) {
        out.extend(pass(model, pairs, &batch, None)?.0);
        on_pass(out.len());
    }
    Ok(out)
}

/// The first line of `reference.jsonl`: the run it belongs to.
#[derive(Serialize, Deserialize, PartialEq)]
struct ReferenceHeader {
    run: String,
}

/// One line of `reference.jsonl` after the header.
#[derive(Serialize, Deserialize)]
struct ReferenceLine {
    set: String,
    pair: usize,
    chosen: f64,
    rejected: f64,
}

/// The reference's log-probabilities of `sets` (name, pairs), computed by
/// `model` as it is now and appended to `dir/reference.jsonl` pass by
/// pass, so a killed run computes only what the file lacks. The file's
/// first line names the run (`key`); a file of another run is started
/// afresh, and a torn last line is computed again. `on_pass(done, total)`
/// counts pairs.
pub fn reference_logps(
    model: &Model<f32>,
    sets: &[(&str, &[PreferenceSequences])],
    micro_tokens: usize,
    dir: &Path,
    key: &str,
    on_pass: &mut dyn FnMut(usize, usize),
) -> Result<Vec<Vec<LogpPair>>, TrainError> {
    let path = dir.join("reference.jsonl");
    let io = |source| TrainError::Io {
        path: path.clone(),
        source,
    };
    let header = serde_json::to_string(&ReferenceHeader { run: key.into() })
        .map_err(|e| TrainError::Internal(e.to_string()))?
        + "\n";
    let mut known: BTreeMap<(String, usize), LogpPair> = BTreeMap::new();
    let mut valid_bytes = 0;
    match fs::read_to_string(&path) {
        Ok(text) if text.starts_with(&header) => {
            valid_bytes = header.len();
            for line in text[header.len()..].split_inclusive('\n') {
                let Some(body) = line.strip_suffix('\n') else {
                    break; // torn by a kill: computed again
                };
                let Ok(r) = serde_json::from_str::<ReferenceLine>(body) else {
                    break;
                };
                known.insert(
                    (r.set, r.pair),
                    LogpPair {
                        chosen: r.chosen,
                        rejected: r.rejected,
                    },
                );
                valid_bytes += line.len();
            }
        }
        // Another run's file, or one torn inside its header: start afresh.
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(io(e)),
    }
    // Appends go after the last whole line: a torn one is cut off first.
    let mut file = fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&path)
        .map_err(io)?;
    file.set_len(valid_bytes as u64).map_err(io)?;
    if valid_bytes == 0 {
        file.write_all(header.as_bytes()).map_err(io)?;
    }

    let total: usize = sets.iter().map(|(_, p)| p.len()).sum();
    let mut done = known.len().min(total);
    on_pass(done, total);
    let mut out = Vec::with_capacity(sets.len());
    for (name, pairs) in sets {
        let lens: Vec<usize> = pairs.iter().map(PreferenceSequences::tokens).collect();
        // The passes are the same whatever is already known: a pair's
        // log-probabilities depend (in their last bits) on what it shares a
        // pass with, and a continued run must see the values a whole one
        // would.
        let all: Vec<usize> = (0..pairs.len()).collect();
        for batch in micro_batches(&all, &lens, micro_tokens) {
            let missing = |i: &usize| !known.contains_key(&(name.to_string(), *i));
            if !batch.iter().any(missing) {
                continue;
            }
            let (sums, _) = pass(model, pairs, &batch, None)?;
            let mut lines = String::new();
            for (&i, s) in batch.iter().zip(&sums) {
                if !missing(&i) {
                    continue;
                }
                let line = ReferenceLine {
                    set: name.to_string(),
                    pair: i,
                    chosen: s.chosen,
                    rejected: s.rejected,
                };
                lines.push_str(
                    &serde_json::to_string(&line)
                        .map_err(|e| TrainError::Internal(e.to_string()))?,
                );
                lines.push('\n');
                done += 1;
            }
            for (&i, s) in batch.iter().zip(&sums) {
                known.insert((name.to_string(), i), *s);
            }
            file.write_all(lines.as_bytes()).map_err(io)?;
            file.flush().map_err(io)?;
            on_pass(done, total);
        }
        out.push(
            (0..pairs.len())
                .map(|i| known[&(name.to_string(), i)])
                .collect(),
        );
    }
    file.sync_all().map_err(io)?;
    Ok(out)
}

/// Trains `model` with DPO in `dir` (see [`crate::run::train`] for the
/// key, the checkpoints and resuming): the reference log-probabilities of
/// `train` and `eval` are `model`'s own as it is passed in (the starting
/// point, also when the run continues: its checkpoint is loaded after),
/// computed once (`on_reference(done, total)`) and kept in the run
/// directory.
#[allow(clippy::too_many_arguments)]
pub fn train_dpo(
    model: &mut Model<f32>,
    trainable: Trainable,
    config: &DpoConfig,
    train: &[PreferenceSequences],
    eval: &[PreferenceSequences],
    run: &TrainConfig,
    dir: &Path,
    key: &str,
    on_reference: &mut dyn FnMut(usize, usize),
    on_step: &mut dyn FnMut(usize, usize, &StepRecord),
) -> Result<Summary, TrainError> {
    config.check().map_err(TrainError::Input)?;
    run.check()?;
    if trainable == Trainable::Lora && model.lora.is_none() {
        return Err(TrainError::Input(
            "LoRA training needs an adapter on the model".into(),
        ));
    }
    if train.is_empty() {
        return Err(TrainError::Input("no training pairs".into()));
    }
    for (set, pairs) in [("training", train), ("evaluation", eval)] {
        for (i, p) in pairs.iter().enumerate() {
            if p.chosen.predicted() == 0 || p.rejected.predicted() == 0 {
                return Err(TrainError::Input(format!(
                    "{set} pair {}: a reply has no token to score",
                    i + 1
                )));
            }
            if !(0.0..=1.0).contains(&p.target) {
                return Err(TrainError::Input(format!(
                    "{set} pair {}: the target {} is not a probability",
                    i + 1,
                    p.target
                )));
            }
        }
    }
    open_run(dir, key)?;
    let mut reference = reference_logps(
        model,
        &[("train", train), ("eval", eval)],
        run.micro_tokens,
        dir,
        key,
        on_reference,
    )?;
    let eval_reference = reference.pop().unwrap_or_default();
    let train_reference = reference.pop().unwrap_or_default();
    let objective = Dpo {
        config: *config,
        train,
        train_reference: &train_reference,
        eval,
        eval_reference: &eval_reference,
    };
    train_objective(model, trainable, &objective, run, dir, key, on_step)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(loss: DpoLoss) -> DpoConfig {
        DpoConfig {
            beta: 0.1,
            loss,
            label_smoothing: 0.0,
            nll_coef: 0.0,
        }
    }

    const POLICY: LogpPair = LogpPair {
        chosen: -12.5,
        rejected: -20.25,
    };
    const REFERENCE: LogpPair = LogpPair {
        chosen: -14.0,
        rejected: -18.0,
    };

    /// The loss of `config` at the policy's log-probabilities `(c, r)`.
    fn loss_at(config: &DpoConfig, c: f64, r: f64, target: f64) -> f64 {
        pair_terms(
            config,
            LogpPair {
                chosen: c,
                rejected: r,
            },
            REFERENCE,
            (5, 9),
            target,
        )
        .loss
    }

    #[test]
    fn derivatives_match_central_differences_for_every_loss() {
        let mut configs = vec![
            config(DpoLoss::Sigmoid),
            config(DpoLoss::Ipo),
            config(DpoLoss::Soft),
        ];
        configs.push(DpoConfig {
            label_smoothing: 0.2,
            ..config(DpoLoss::Sigmoid)
        });
        configs.push(DpoConfig {
            label_smoothing: 0.3,
            ..config(DpoLoss::Robust)
        });
        configs.push(DpoConfig {
            nll_coef: 0.7,
            beta: 2.0,
            ..config(DpoLoss::Sigmoid)
        });
        for c in &configs {
            for target in [1.0, 0.65] {
                let t = pair_terms(c, POLICY, REFERENCE, (5, 9), target);
                let h = 1e-5;
                let dc = (loss_at(c, POLICY.chosen + h, POLICY.rejected, target)
                    - loss_at(c, POLICY.chosen - h, POLICY.rejected, target))
                    / (2.0 * h);
                let dr = (loss_at(c, POLICY.chosen, POLICY.rejected + h, target)
                    - loss_at(c, POLICY.chosen, POLICY.rejected - h, target))
                    / (2.0 * h);
                assert!(
                    (dc - t.d_chosen).abs() < 1e-8,
                    "{c:?}: {dc} vs {}",
                    t.d_chosen
                );
                assert!(
                    (dr - t.d_rejected).abs() < 1e-8,
                    "{c:?}: {dr} vs {}",
                    t.d_rejected
                );
            }
        }
    }

    #[test]
    fn known_values() {
        // With the policy equal to the reference, h = 0: the sigmoid loss is
        // ln 2 and its derivative ±β/2.
        let c = config(DpoLoss::Sigmoid);
        let t = pair_terms(&c, REFERENCE, REFERENCE, (5, 9), 1.0);
        assert!((t.loss - std::f64::consts::LN_2).abs() < 1e-15);
        assert!((t.d_chosen + 0.05).abs() < 1e-15 && (t.d_rejected - 0.05).abs() < 1e-15);
        assert_eq!((t.reward_chosen, t.reward_rejected), (0.0, 0.0));
        // h = (−12.5 + 14) − (−20.25 + 18) = 3.75; z = 0.375.
        let t = pair_terms(&c, POLICY, REFERENCE, (5, 9), 1.0);
        let expected = (1.0 + (-0.375f64).exp()).ln();
        assert!((t.loss - expected).abs() < 1e-14);
        assert!((t.reward_chosen - 0.15).abs() < 1e-14);
        assert!((t.reward_rejected + 0.225).abs() < 1e-14);
        assert!((t.nll - 2.5).abs() < 1e-14);
        // IPO: per-token h = 1.5/5 − (−2.25)/9 = 0.55; (0.55 − 5)².
        let t = pair_terms(&config(DpoLoss::Ipo), POLICY, REFERENCE, (5, 9), 1.0);
        assert!((t.loss - 4.45f64.powi(2)).abs() < 1e-12);
        // Soft with p = 1 is the sigmoid loss; sigmoid with ε is soft with 1 − ε.
        let soft = pair_terms(&config(DpoLoss::Soft), POLICY, REFERENCE, (5, 9), 1.0);
        let hard = pair_terms(&c, POLICY, REFERENCE, (5, 9), 0.2);
        assert!((soft.loss - hard.loss).abs() < 1e-15);
        let smoothed = DpoConfig {
            label_smoothing: 0.25,
            ..c
        };
        let a = pair_terms(&smoothed, POLICY, REFERENCE, (5, 9), 1.0);
        let b = pair_terms(&config(DpoLoss::Soft), POLICY, REFERENCE, (5, 9), 0.75);
        assert!((a.loss - b.loss).abs() < 1e-15);
        // Robust with ε = 0 is the sigmoid loss; with ε = 0.2 it is
        // [0.8·ln(1 + e^−z) − 0.2·ln(1 + e^z)] / 0.6 at z = 0.375.
        let r = pair_terms(&config(DpoLoss::Robust), POLICY, REFERENCE, (5, 9), 1.0);
        assert!((r.loss - hard.loss).abs() < 1e-15);
        let robust = DpoConfig {
            label_smoothing: 0.2,
            ..config(DpoLoss::Robust)
        };
        let r = pair_terms(&robust, POLICY, REFERENCE, (5, 9), 1.0);
        let expected =
            (0.8 * (1.0 + (-0.375f64).exp()).ln() - 0.2 * (1.0 + 0.375f64.exp()).ln()) / 0.6;
        assert!(
            (r.loss - expected).abs() < 1e-14,
            "{} vs {expected}",
            r.loss
        );
        // The NLL term adds α·(mean NLL of the chosen reply).
        let with_nll = DpoConfig { nll_coef: 0.5, ..c };
        let n = pair_terms(&with_nll, POLICY, REFERENCE, (5, 9), 1.0);
        assert!((n.loss - hard.loss - 0.5 * 2.5).abs() < 1e-14);
    }

    #[test]
    fn a_soft_target_is_met_where_the_implicit_preference_equals_it() {
        // dL/dz = σ(z) − p vanishes at σ(βh) = p.
        let c = config(DpoLoss::Soft);
        let p: f64 = 0.7;
        let h = (p / (1.0 - p)).ln() / c.beta;
        let policy = LogpPair {
            chosen: REFERENCE.chosen + h,
            rejected: REFERENCE.rejected,
        };
        let t = pair_terms(&c, policy, REFERENCE, (5, 9), p);
        assert!(t.d_chosen.abs() < 1e-12 && t.d_rejected.abs() < 1e-12);
    }

    #[test]
    fn extreme_margins_stay_finite() {
        for loss in [DpoLoss::Sigmoid, DpoLoss::Robust, DpoLoss::Soft] {
            for gap in [-1e6, 1e6] {
                let policy = LogpPair {
                    chosen: gap,
                    rejected: 0.0,
                };
                let c = DpoConfig {
                    label_smoothing: if loss == DpoLoss::Robust { 0.1 } else { 0.0 },
                    ..config(loss)
                };
                let t = pair_terms(&c, policy, REFERENCE, (5, 9), 0.9);
                assert!(
                    t.loss.is_finite() && t.d_chosen.is_finite(),
                    "{loss:?} {gap}"
                );
            }
        }
    }

    #[test]
    fn bad_settings_are_refused() {
        let bad = [
            DpoConfig {
                beta: 0.0,
                ..config(DpoLoss::Sigmoid)
            },
            DpoConfig {
                beta: f64::NAN,
                ..config(DpoLoss::Sigmoid)
            },
            DpoConfig {
                label_smoothing: 0.5,
                ..config(DpoLoss::Robust)
            },
            DpoConfig {
                label_smoothing: 0.1,
                ..config(DpoLoss::Ipo)
            },
            DpoConfig {
                nll_coef: -1.0,
                ..config(DpoLoss::Sigmoid)
            },
        ];
        for c in bad {
            assert!(c.check().is_err(), "{c:?}");
        }
        assert!(config(DpoLoss::Ipo).check().is_ok());
    }
}
