//! Compute-optimal test-time search (Snell et al. 2024): estimate how hard a
//! question is from a few cheap samples, then spend the budget with the
//! strategy that worked best for questions of that difficulty on a
//! development set.

use std::collections::HashMap;

use serde::{Deserialize, Serialize};

use crate::searcher::Searcher;
use crate::strategy::{run, Outcome, Scorer, Strategy};
use crate::tree::Tree;
use crate::SearchError;

/// Upper edges of the difficulty bins (difficulty in [0, 1]).
pub const DIFFICULTY_BINS: [f64; 4] = [0.25, 0.5, 0.75, 1.0];

/// Samples drawn to estimate a question's difficulty.
pub const PROBES: usize = 4;

pub fn bin_of(difficulty: f64) -> usize {
    DIFFICULTY_BINS
        .iter()
        .position(|&edge| difficulty <= edge + 1e-9)
        .unwrap_or(DIFFICULTY_BINS.len() - 1)
}

/// Difficulty without an oracle: one minus the share of `probes` sampled
/// solutions that agree with the most common answer (unanswered samples
/// agree with nothing). The samples are metered like any other work.
pub async fn estimate_difficulty(s: &Searcher<'_>, probes: usize) -> Result<f64, SearchError> {
    let mut scratch = Tree::new();
    let leaves = s
        .sample_solutions(&mut scratch, probes.max(1), false)
        .await?;
    let mut counts: HashMap<String, usize> = HashMap::new();
    for &l in &leaves {
        if let Some(a) = &scratch.node(l).answer {
            *counts.entry(a.clone()).or_default() += 1;
        }
    }
    let mode = counts.values().copied().max().unwrap_or(0);
    Ok(1.0 - mode as f64 / leaves.len().max(1) as f64)
}

/// The strategy to use per budget and difficulty bin.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Policy {
    pub probes: usize,
    pub bins: Vec<f64>,
    pub choices: Vec<PolicyChoice>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PolicyChoice {
    pub budget: usize,
    pub bin: usize,
    pub strategy: Strategy,
    /// Development-set accuracy of that strategy in that bin.
    pub accuracy: f64,
    pub questions: usize,
}

/// One development result: a question's difficulty bin and whether a
/// strategy at a budget got it right.
#[derive(Debug, Clone, Copy)]
pub struct DevResult {
    pub bin: usize,
    pub strategy: Strategy,
    pub budget: usize,
    pub correct: bool,
}

impl Policy {
    /// For every (budget, bin) seen, the strategy with the best accuracy
    /// (ties go to the strategy listed first in `results`, so put the
    /// cheaper ones first).
    pub fn fit(results: &[DevResult]) -> Policy {
        // (budget, bin) → strategy → (correct, total), in first-seen order.
        type Tally = Vec<(Strategy, usize, usize)>;
        let mut table: Vec<((usize, usize), Tally)> = Vec::new();
        for r in results {
            let key = (r.budget, r.bin);
            let slot = match table.iter().position(|(k, _)| *k == key) {
                Some(i) => i,
                None => {
                    table.push((key, Vec::new()));
                    table.len() - 1
                }
            };
            let per = &mut table[slot].1;
            let i = match per.iter().position(|(s, _, _)| *s == r.strategy) {
                Some(i) => i,
                None => {
                    per.push((r.strategy, 0, 0));
                    per.len() - 1
                }
            };
            per[i].1 += usize::from(r.correct);
            per[i].2 += 1;
        }
        let mut choices = Vec::new();
        for ((budget, bin), per) in table {
            let mut best: Option<(Strategy, f64, usize)> = None;
            for (strategy, correct, total) in per {
                let acc = correct as f64 / total.max(1) as f64;
                if best.is_none_or(|(_, b, _)| acc > b) {
                    best = Some((strategy, acc, total));
                }
            }
            if let Some((strategy, accuracy, questions)) = best {
                choices.push(PolicyChoice {
                    budget,
                    bin,
                    strategy,
                    accuracy,
                    questions,
                });
            }
        }
        choices.sort_by_key(|c| (c.budget, c.bin));
        Policy {
            probes: PROBES,
            bins: DIFFICULTY_BINS.to_vec(),
            choices,
        }
    }

    /// The strategy for a bin at the largest fitted budget not above
    /// `budget` (or the smallest one), falling back to majority voting for a
    /// bin the development set never saw.
    pub fn choose(&self, budget: usize, bin: usize) -> Strategy {
        let fitted = self
            .choices
            .iter()
            .filter(|c| c.budget <= budget)
            .map(|c| c.budget)
            .max()
            .or_else(|| self.choices.iter().map(|c| c.budget).min());
        fitted
            .and_then(|b| self.choices.iter().find(|c| c.budget == b && c.bin == bin))
            .map(|c| c.strategy)
            .unwrap_or(Strategy::Majority)
    }
}

/// Compute-optimal search for one question: probe, bin, then run the
/// policy's strategy with the whole budget. Returns the outcome, the chosen
/// strategy and the estimated difficulty.
pub async fn solve(
    s: &Searcher<'_>,
    policy: &Policy,
    budget: usize,
    scorer: Option<Scorer<'_>>,
) -> Result<(Outcome, Strategy, f64), SearchError> {
    let difficulty = estimate_difficulty(s, policy.probes).await?;
    let strategy = policy.choose(budget, bin_of(difficulty));
    let strategy = if strategy.needs_verifier() && scorer.is_none() {
        Strategy::Majority
    } else {
        strategy
    };
    let outcome = run(strategy, s, budget, scorer).await?;
    Ok((outcome, strategy, difficulty))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bins_cover_the_unit_interval() {
        assert_eq!(bin_of(0.0), 0);
        assert_eq!(bin_of(0.25), 0);
        assert_eq!(bin_of(0.5), 1);
        assert_eq!(bin_of(0.75), 2);
        assert_eq!(bin_of(1.0), 3);
    }

    #[test]
    fn policy_picks_the_best_strategy_per_bin_and_budget() {
        let r = |bin, strategy, budget, correct| DevResult {
            bin,
            strategy,
            budget,
            correct,
        };
        let results = vec![
            r(0, Strategy::Majority, 4, true),
            r(0, Strategy::Beam, 4, false),
            r(3, Strategy::Majority, 4, false),
            r(3, Strategy::Beam, 4, true),
            r(0, Strategy::Majority, 16, true),
            r(0, Strategy::Beam, 16, true),
        ];
        let p = Policy::fit(&results);
        assert_eq!(p.choose(4, 0), Strategy::Majority);
        assert_eq!(p.choose(4, 3), Strategy::Beam);
        // A tie goes to the strategy listed first.
        assert_eq!(p.choose(16, 0), Strategy::Majority);
        // Budget 8 uses the budget-4 choices; bin 2 was never seen.
        assert_eq!(p.choose(8, 3), Strategy::Beam);
        assert_eq!(p.choose(8, 2), Strategy::Majority);
        assert_eq!(p.choose(1, 3), Strategy::Beam);
    }
}
