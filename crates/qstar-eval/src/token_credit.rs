//! Credit assignment of a per-token score: in a wrong solution, does the
//! lowest score fall on the first wrong token?
//!
//! "From r to Q*" reads DPO's β·log(π/π_ref) per token as a Q-function and
//! shows, on examples, that it dips where a solution goes wrong. This
//! measures how often, against chance: a score that knew nothing would put
//! its minimum on the first wrong token of a T-token solution with
//! probability 1/T. The normalized rank of the first wrong token (0 when it
//! holds the lowest score, 1 the highest, ties counted half) says the same
//! without the all-or-nothing of an exact hit; chance is 0.5.

use serde::Serialize;

/// The index of the token whose text holds byte `at` of the text the
/// tokens spell out; `None` at the text's end or past it (an error there is
/// the token the model did not write).
pub fn token_at(token_texts: &[&str], at: usize) -> Option<usize> {
    let mut end = 0;
    for (i, text) in token_texts.iter().enumerate() {
        end += text.len();
        if at < end {
            return Some(i);
        }
    }
    None
}

/// Where `scores` is lowest (the first such token); `None` when empty or
/// when a score is not a number.
pub fn lowest(scores: &[f64]) -> Option<usize> {
    if scores.iter().any(|s| s.is_nan()) {
        return None;
    }
    let mut best: Option<usize> = None;
    for (i, &s) in scores.iter().enumerate() {
        if best.is_none_or(|b| s < scores[b]) {
            best = Some(i);
        }
    }
    best
}

/// The rank of `scores[k]` among `scores`, scaled to [0, 1]: 0 when it is
/// the strict minimum, 1 the strict maximum, ties counted half; 0.5 for a
/// single token.
pub fn normalized_rank(scores: &[f64], k: usize) -> f64 {
    if scores.len() < 2 {
        return 0.5;
    }
    let v = scores[k];
    let (mut below, mut tied) = (0.0, 0.0);
    for (i, &s) in scores.iter().enumerate() {
        if i == k {
            continue;
        }
        if s < v {
            below += 1.0;
        } else if s == v {
            tied += 1.0;
        }
    }
    (below + 0.5 * tied) / (scores.len() - 1) as f64
}

/// One wrong solution: a per-token score under each reading, and the
/// token where it first goes wrong.
pub struct CreditCase<'a> {
    /// Named per-token scores of the same tokens (e.g. the implicit reward,
    /// the policy's log-prob, the reference's).
    pub scores: &'a [(&'a str, Vec<f64>)],
    pub first_error: usize,
}

/// How one score does over all located solutions.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct CreditSummary {
    pub score: String,
    /// Share of solutions whose lowest score is the first wrong token.
    pub hit_rate: f64,
    /// Mean normalized rank of the first wrong token (chance 0.5).
    pub mean_rank: f64,
}

/// The whole measurement.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct CreditReport {
    pub solutions: usize,
    /// What an uninformed score would hit: the mean of 1/T.
    pub chance_hit_rate: f64,
    /// Mean number of tokens of a solution.
    pub mean_tokens: f64,
    pub scores: Vec<CreditSummary>,
}

/// Summarizes `cases`; every case must name the same scores in the same
/// order, each as long as its solution's tokens.
pub fn credit_report(cases: &[CreditCase<'_>]) -> CreditReport {
    let n = cases.len();
    let mean = |f: &dyn Fn(&CreditCase<'_>) -> f64| {
        if n == 0 {
            0.0
        } else {
            cases.iter().map(f).sum::<f64>() / n as f64
        }
    };
    let tokens = |c: &CreditCase<'_>| c.scores.first().map_or(0, |(_, s)| s.len());
    let names: Vec<&str> = cases
        .first()
        .map(|c| c.scores.iter().map(|(name, _)| *name).collect())
        .unwrap_or_default();
    let scores = names
        .iter()
        .enumerate()
        .map(|(j, name)| CreditSummary {
            score: name.to_string(),
            hit_rate: mean(&|c| f64::from(u8::from(lowest(&c.scores[j].1) == Some(c.first_error)))),
            mean_rank: mean(&|c| normalized_rank(&c.scores[j].1, c.first_error)),
        })
        .collect();
    CreditReport {
        solutions: n,
        chance_hit_rate: mean(&|c| 1.0 / tokens(c).max(1) as f64),
        mean_tokens: mean(&|c| tokens(c) as f64),
        scores,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bytes_map_to_the_tokens_that_hold_them() {
        let tokens = ["2", "3", " +", " 4", "5"];
        assert_eq!(token_at(&tokens, 0), Some(0));
        assert_eq!(token_at(&tokens, 2), Some(2));
        assert_eq!(token_at(&tokens, 3), Some(2));
        assert_eq!(token_at(&tokens, 5), Some(3));
        assert_eq!(token_at(&tokens, 6), Some(4));
        assert_eq!(token_at(&tokens, 7), None);
    }

    #[test]
    fn ranks_and_minima() {
        assert_eq!(lowest(&[0.3, -1.0, 2.0, -1.0]), Some(1));
        assert_eq!(lowest(&[]), None);
        assert_eq!(lowest(&[1.0, f64::NAN]), None);
        assert_eq!(normalized_rank(&[0.3, -1.0, 2.0], 1), 0.0);
        assert_eq!(normalized_rank(&[0.3, -1.0, 2.0], 2), 1.0);
        assert_eq!(normalized_rank(&[0.3, -1.0, 2.0], 0), 0.5);
        // A tie with one other token out of three: half a token below.
        assert_eq!(normalized_rank(&[1.0, 1.0, 2.0], 0), 0.25);
        assert_eq!(normalized_rank(&[5.0], 0), 0.5);
    }

    #[test]
    fn a_report_counts_hits_against_chance() {
        let a = [("reward", vec![0.0, -2.0, 1.0, 0.5])];
        let b = [("reward", vec![-3.0, 0.0])];
        let cases = [
            CreditCase {
                scores: &a,
                first_error: 1,
            },
            CreditCase {
                scores: &b,
                first_error: 1,
            },
        ];
        let r = credit_report(&cases);
        assert_eq!(r.solutions, 2);
        // 1/4 and 1/2.
        assert!((r.chance_hit_rate - 0.375).abs() < 1e-12);
        assert!((r.mean_tokens - 3.0).abs() < 1e-12);
        assert_eq!(r.scores[0].score, "reward");
        assert!((r.scores[0].hit_rate - 0.5).abs() < 1e-12);
        // Ranks 0 and 1.
        assert!((r.scores[0].mean_rank - 0.5).abs() < 1e-12);
    }
}
