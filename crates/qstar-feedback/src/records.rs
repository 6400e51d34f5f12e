//! The records the labeling jobs write for each pair, in the layouts that
//! preference-training libraries read.

use qstar_tasks::{PreferencePair, RowLayout, TrlForm};
use serde::Serialize;
use serde_json::{json, Map, Value};

use crate::cai::{Judgement, PairLabel};
use crate::rate::Rating;

/// One labeled pair as written to the output.
#[derive(Debug, Clone, Serialize)]
pub struct LabelRecord {
    pub line: usize,
    /// TRL: `prompt` (the conversation) and the preferred and other reply as
    /// `chosen`/`rejected`; OpenRLHF: `chosen`/`rejected` as whole
    /// conversations ending in those replies.
    #[serde(flatten)]
    pub rows: Map<String, Value>,
    /// Probability that `chosen` is the better reply (≥ 0.5).
    pub soft_label: f64,
    /// Probability that the source's chosen reply is better.
    pub p_human_chosen: f64,
    pub agrees_with_human: bool,
    pub presented_human_chosen_first: bool,
    pub judgements: Vec<Judgement>,
}

impl LabelRecord {
    /// The record of `pair` under `label`: the reply the labeler prefers
    /// becomes `chosen`.
    pub fn new(pair: &PreferencePair, label: PairLabel, layout: RowLayout) -> LabelRecord {
        let human_better = label.p_human_chosen >= 0.5;
        let (chosen, rejected) = if human_better {
            (&pair.chosen, &pair.rejected)
        } else {
            (&pair.rejected, &pair.chosen)
        };
        LabelRecord {
            line: pair.line,
            rows: layout.rows(&pair.conversation, chosen, rejected),
            soft_label: label.p_human_chosen.max(1.0 - label.p_human_chosen),
            p_human_chosen: label.p_human_chosen,
            agrees_with_human: label.p_human_chosen > 0.5,
            presented_human_chosen_first: label.presented_human_chosen_first,
            judgements: label.judgements,
        }
    }
}

/// The record of a pair whose replies were rated (d-RLAIF): the TRL row in
/// `form`, each reply's reward and its whole rating.
pub fn rated_pair_record(
    pair: &PreferencePair,
    form: TrlForm,
    chosen: &Rating,
    rejected: &Rating,
) -> Map<String, Value> {
    let mut record = Map::new();
    record.insert("line".into(), json!(pair.line));
    record.extend(RowLayout::Trl(form).rows(&pair.conversation, &pair.chosen, &pair.rejected));
    record.insert("reward_chosen".into(), json!(chosen.reward));
    record.insert("reward_rejected".into(), json!(rejected.reward));
    record.insert("rating_chosen".into(), json!(chosen));
    record.insert("rating_rejected".into(), json!(rejected));
    record
}
