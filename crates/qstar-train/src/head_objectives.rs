//! Reward and process-reward models trained through the backbone: the
//! score head of [`crate::score_head`] reads the final-normed state at
//! chosen positions, and the gradient of a pairwise or per-step loss flows
//! back through the head into the adapters (or every weight).
//!
//! The losses are the head-only trainers' ([`crate::reward::pair_loss`],
//! [`crate::process_reward::step_loss`]), so a head fitted on cached
//! states and then trained with LoRA keeps the same loss (on the trainer's
//! states, which differ slightly from the engine's on quantized weights).
//! Sequences here predict no token: only their states enter the loss.

use crate::error::TrainError;
use crate::model::{Grads, Model, Sequence, Tape};
use crate::process_reward::step_loss;
use crate::real::Real;
use crate::reward::{pair_loss, PairLoss};
use crate::run::{micro_batches, Metrics, Objective};

/// A preference pair as token sequences: the head reads each one's last
/// position.
#[derive(Debug, Clone, PartialEq)]
pub struct ScoredPair {
    pub chosen: Sequence,
    pub rejected: Sequence,
    /// P(chosen is better), in [0, 1].
    pub target: f64,
}

/// A solution as one token sequence, and the steps scored in it: the
/// position of each step's last token and the step's label in [0, 1].
#[derive(Debug, Clone, PartialEq)]
pub struct ScoredSteps {
    pub sequence: Sequence,
    pub ends: Vec<(usize, f64)>,
}

/// The head's score at each (sequence, position) of a forward pass.
pub fn scores<T: Real>(
    model: &Model<T>,
    tape: &Tape<T>,
    at: &[(usize, usize)],
) -> Result<Vec<f64>, String> {
    let head = model.head.as_ref().ok_or("the model has no score head")?;
    at.iter()
        .map(|&(seq, pos)| {
            tape.final_state(seq, pos)
                .map(|h| head.score(h))
                .ok_or_else(|| format!("sequence {seq} has no position {pos}"))
        })
        .collect()
}

/// Backward pass of a loss of the scores at `at`, given d(loss)/d(score)
/// of each: through the head into the model, adding to `grads`.
pub fn backward_scores<T: Real>(
    model: &Model<T>,
    tape: Tape<T>,
    at: &[(usize, usize)],
    dscores: &[f64],
    grads: &mut Grads<T>,
) -> Result<(), String> {
    let head = model.head.as_ref().ok_or("the model has no score head")?;
    let head_grads = grads
        .head
        .as_mut()
        .ok_or("the gradients have no room for the score head")?;
    let d = model.config.n_embd;
    let mut dstates = vec![T::ZERO; tape.stacked_rows() * d];
    for (&(seq, pos), &ds) in at.iter().zip(dscores) {
        let r = tape
            .row(seq, pos)
            .ok_or_else(|| format!("sequence {seq} has no position {pos}"))?;
        let h = tape.final_state(seq, pos).ok_or("a state went missing")?;
        head.backward(h, ds, &mut dstates[r * d..(r + 1) * d], head_grads);
    }
    model.backward_with_states(tape, &[], Some(&dstates), grads)
}

fn forward<T: Real>(
    model: &Model<T>,
    seqs: &[Sequence],
    seed: Option<u64>,
) -> Result<Tape<T>, String> {
    if seqs.iter().any(|s| s.predicted() > 0) {
        return Err("a scored sequence must not ask for token predictions".into());
    }
    let (_, tape) = match seed {
        Some(s) => model.forward(seqs, s)?,
        None => model.forward_eval(seqs)?,
    };
    Ok(tape)
}

/// What one pair contributed: its loss, and r(chosen) − r(rejected).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PairOutcome {
    pub loss: f64,
    pub margin: f64,
}

/// The pairs' losses and margins in one forward pass (dropout from `seed`;
/// none without one); with `backward = Some((grads, scale))`, adds the
/// gradient of scale × Σ loss.
pub fn pair_pass<T: Real>(
    model: &Model<T>,
    pairs: &[&ScoredPair],
    loss: PairLoss,
    center_coef: f64,
    seed: Option<u64>,
    backward: Option<(&mut Grads<T>, f64)>,
) -> Result<Vec<PairOutcome>, String> {
    let mut seqs = Vec::with_capacity(2 * pairs.len());
    let mut at = Vec::with_capacity(2 * pairs.len());
    for p in pairs {
        for s in [&p.chosen, &p.rejected] {
            at.push((seqs.len(), s.tokens.len().saturating_sub(1)));
            seqs.push(s.clone());
        }
    }
    let tape = forward(model, &seqs, seed)?;
    let r = scores(model, &tape, &at)?;
    let mut outcomes = Vec::with_capacity(pairs.len());
    let mut dscores = Vec::with_capacity(r.len());
    for (p, rs) in pairs.iter().zip(r.chunks_exact(2)) {
        let (value, dc, dr) = pair_loss(rs[0], rs[1], p.target, loss, center_coef);
        outcomes.push(PairOutcome {
            loss: value,
            margin: rs[0] - rs[1],
        });
        dscores.extend([dc, dr]);
    }
    if let Some((grads, scale)) = backward {
        dscores.iter_mut().for_each(|d| *d *= scale);
        backward_scores(model, tape, &at, &dscores, grads)?;
    }
    Ok(outcomes)
}

/// One scored step: its loss, and its logit.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct StepOutcome {
    pub loss: f64,
    pub logit: f64,
    pub target: f64,
}

/// The steps' losses and logits in one forward pass; with `backward`, adds
/// the gradient of scale × Σ loss.
pub fn step_pass<T: Real>(
    model: &Model<T>,
    items: &[&ScoredSteps],
    seed: Option<u64>,
    backward: Option<(&mut Grads<T>, f64)>,
) -> Result<Vec<StepOutcome>, String> {
    let seqs: Vec<Sequence> = items.iter().map(|s| s.sequence.clone()).collect();
    let mut at = Vec::new();
    let mut targets = Vec::new();
    for (i, s) in items.iter().enumerate() {
        for &(pos, target) in &s.ends {
            at.push((i, pos));
            targets.push(target);
        }
    }
    let tape = forward(model, &seqs, seed)?;
    let z = scores(model, &tape, &at)?;
    let mut outcomes = Vec::with_capacity(z.len());
    let mut dscores = Vec::with_capacity(z.len());
    for (&logit, &target) in z.iter().zip(&targets) {
        let (loss, dz) = step_loss(logit, target);
        outcomes.push(StepOutcome {
            loss,
            logit,
            target,
        });
        dscores.push(dz);
    }
    if let Some((grads, scale)) = backward {
        dscores.iter_mut().for_each(|d| *d *= scale);
        backward_scores(model, tape, &at, &dscores, grads)?;
    }
    Ok(outcomes)
}

/// A ranking counted right when it agrees with the label's side of 1/2;
/// a tie counts half.
fn right(value: f64, want_positive: bool) -> f64 {
    if value == 0.0 {
        0.5
    } else if (value > 0.0) == want_positive {
        1.0
    } else {
        0.0
    }
}

fn pair_metrics(outcomes: &[PairOutcome], pairs: &[&ScoredPair]) -> (f64, Metrics) {
    let n = outcomes.len().max(1) as f64;
    let loss = outcomes.iter().map(|o| o.loss).sum::<f64>() / n;
    let accuracy = outcomes
        .iter()
        .zip(pairs)
        .map(|(o, p)| right(o.margin, p.target >= 0.5))
        .sum::<f64>()
        / n;
    let margin = outcomes.iter().map(|o| o.margin).sum::<f64>() / n;
    let metrics = Metrics::from([
        ("accuracy".to_string(), accuracy),
        ("mean_margin".to_string(), margin),
    ]);
    (loss, metrics)
}

fn step_metrics(outcomes: &[StepOutcome]) -> (f64, Metrics) {
    let n = outcomes.len().max(1) as f64;
    let loss = outcomes.iter().map(|o| o.loss).sum::<f64>() / n;
    let accuracy = outcomes
        .iter()
        .map(|o| right(o.logit, o.target >= 0.5))
        .sum::<f64>()
        / n;
    (loss, Metrics::from([("accuracy".to_string(), accuracy)]))
}

fn input(e: String) -> TrainError {
    TrainError::Input(e)
}

/// A reward model: the pairwise loss of the head's rewards.
pub struct PairwiseReward<'a> {
    pub data: &'a [ScoredPair],
    pub eval: &'a [ScoredPair],
    pub loss: PairLoss,
    pub center_coef: f64,
}

/// Tokens each pair runs through the model: both replies.
fn pair_lens(set: &[ScoredPair]) -> Vec<usize> {
    set.iter()
        .map(|p| p.chosen.tokens.len() + p.rejected.tokens.len())
        .collect()
}

impl PairwiseReward<'_> {
    fn outcomes(
        &self,
        model: &Model<f32>,
        set: &[ScoredPair],
        micro_tokens: usize,
    ) -> Result<(Vec<PairOutcome>, Vec<usize>), TrainError> {
        let lens = pair_lens(set);
        let all: Vec<usize> = (0..set.len()).collect();
        let mut outcomes = Vec::with_capacity(set.len());
        let mut order = Vec::with_capacity(set.len());
        for batch in micro_batches(&all, &lens, micro_tokens) {
            let refs: Vec<&ScoredPair> = batch.iter().map(|&i| &set[i]).collect();
            outcomes.extend(
                pair_pass(model, &refs, self.loss, self.center_coef, None, None).map_err(input)?,
            );
            order.extend(batch);
        }
        Ok((outcomes, order))
    }
}

impl Objective for PairwiseReward<'_> {
    fn lens(&self) -> Vec<usize> {
        pair_lens(self.data)
    }

    /// The pairs (each one term of the loss).
    fn predicted(&self, examples: &[usize]) -> usize {
        examples.len()
    }

    fn step(
        &self,
        model: &Model<f32>,
        grads: &mut Grads<f32>,
        passes: &[Vec<usize>],
        seed: &dyn Fn(usize) -> u64,
    ) -> Result<(f64, Metrics), TrainError> {
        let n: usize = passes.iter().map(Vec::len).sum();
        let scale = 1.0 / n.max(1) as f64;
        let mut outcomes = Vec::with_capacity(n);
        let mut pairs = Vec::with_capacity(n);
        for (m, batch) in passes.iter().enumerate() {
            let refs: Vec<&ScoredPair> = batch.iter().map(|&i| &self.data[i]).collect();
            let pass = pair_pass(
                model,
                &refs,
                self.loss,
                self.center_coef,
                Some(seed(m)),
                Some((&mut *grads, scale)),
            )
            .map_err(input)?;
            outcomes.extend(pass);
            pairs.extend(refs);
        }
        Ok(pair_metrics(&outcomes, &pairs))
    }

    fn evaluate(
        &self,
        model: &Model<f32>,
        micro_tokens: usize,
    ) -> Result<Option<(f64, Metrics)>, TrainError> {
        if self.eval.is_empty() {
            return Ok(None);
        }
        let (outcomes, order) = self.outcomes(model, self.eval, micro_tokens)?;
        let pairs: Vec<&ScoredPair> = order.iter().map(|&i| &self.eval[i]).collect();
        Ok(Some(pair_metrics(&outcomes, &pairs)))
    }
}

/// A process reward model: the binary cross-entropy of each step's logit.
pub struct ProcessReward<'a> {
    pub data: &'a [ScoredSteps],
    pub eval: &'a [ScoredSteps],
}

impl Objective for ProcessReward<'_> {
    fn lens(&self) -> Vec<usize> {
        self.data.iter().map(|s| s.sequence.tokens.len()).collect()
    }

    /// The scored steps.
    fn predicted(&self, examples: &[usize]) -> usize {
        examples.iter().map(|&i| self.data[i].ends.len()).sum()
    }

    fn step(
        &self,
        model: &Model<f32>,
        grads: &mut Grads<f32>,
        passes: &[Vec<usize>],
        seed: &dyn Fn(usize) -> u64,
    ) -> Result<(f64, Metrics), TrainError> {
        let n: usize = passes.iter().map(|p| self.predicted(p)).sum();
        let scale = 1.0 / n.max(1) as f64;
        let mut outcomes = Vec::with_capacity(n);
        for (m, batch) in passes.iter().enumerate() {
            let refs: Vec<&ScoredSteps> = batch.iter().map(|&i| &self.data[i]).collect();
            outcomes.extend(
                step_pass(model, &refs, Some(seed(m)), Some((&mut *grads, scale)))
                    .map_err(input)?,
            );
        }
        Ok(step_metrics(&outcomes))
    }

    fn evaluate(
        &self,
        model: &Model<f32>,
        micro_tokens: usize,
    ) -> Result<Option<(f64, Metrics)>, TrainError> {
        if self.eval.is_empty() {
            return Ok(None);
        }
        let lens: Vec<usize> = self.eval.iter().map(|s| s.sequence.tokens.len()).collect();
        let all: Vec<usize> = (0..self.eval.len()).collect();
        let mut outcomes = Vec::new();
        for batch in micro_batches(&all, &lens, micro_tokens) {
            let refs: Vec<&ScoredSteps> = batch.iter().map(|&i| &self.eval[i]).collect();
            outcomes.extend(step_pass(model, &refs, None, None).map_err(input)?);
        }
        Ok(Some(step_metrics(&outcomes)))
    }
}
