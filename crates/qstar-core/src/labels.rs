//! The records a preference labeler writes: one answered question per
//! (principle, order), and the pair's soft label. Here rather than in the
//! labeling crate so that metrics and reports read them without it.

use serde::{Deserialize, Serialize};

/// One multiple-choice question's answer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Judgement {
    pub principle: usize,
    /// True when the human-chosen reply was option (A).
    pub human_chosen_first: bool,
    /// P(first option) normalized over the two options (clamped for CoT).
    pub p_a: f64,
    /// Probability mass the model put on the two option letters before
    /// normalization: a label built on a sliver of the mass is weak.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub option_mass: Option<f64>,
    /// The sampled chain of thought, for CoT labels.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rationale: Option<String>,
}

impl Judgement {
    /// Probability that the human-chosen reply is the better one.
    pub fn p_human_chosen(&self) -> f64 {
        if self.human_chosen_first {
            self.p_a
        } else {
            1.0 - self.p_a
        }
    }
}

/// The label of one pair.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PairLabel {
    /// Probability that the source's `chosen` reply is better, averaged over
    /// principles (and over both orders when debiasing).
    pub p_human_chosen: f64,
    /// Whether the source's chosen reply was shown first in the presented
    /// (seeded) order.
    pub presented_human_chosen_first: bool,
    pub judgements: Vec<Judgement>,
}
