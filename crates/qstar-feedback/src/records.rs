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

/// The key layout of supervised fine-tuning rows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SftKeys {
    /// TRL's `messages`.
    Trl,
    /// OpenRLHF's `input`/`output`.
    Openrlhf,
}

/// One SFT example in the chosen key layout.
pub fn sft_row(keys: SftKeys, prompt: &str, reply: &str) -> Value {
    match keys {
        SftKeys::Trl => json!({"messages": [
            {"role": "user", "content": prompt},
            {"role": "assistant", "content": reply},
        ]}),
        SftKeys::Openrlhf => json!({"input": prompt, "output": reply}),
    }
}

/// The opening human turn of each pair, keyed by its line: what the
/// self-improvement jobs (revise, judge) start from.
pub fn opening_prompts(pairs: &[PreferencePair]) -> Vec<(u64, String)> {
    pairs
        .iter()
        .map(|p| {
            let opening = p.conversation.iter().find(|m| m.role == "user");
            (
                p.line as u64,
                opening.map(|m| m.content.clone()).unwrap_or_default(),
            )
        })
        .collect()
}

/// The SL-CAI rows of one pair's critique→revision chain: the final
/// revision (with the chain), then, with `mix_input`, the input's own
/// preferred reply as a second example.
pub fn revision_rows(
    pair: &PreferencePair,
    revision: &crate::revise::Revision,
    keys: SftKeys,
    mix_input: bool,
) -> Vec<Value> {
    let mut row = sft_row(keys, &revision.prompt, revision.final_reply());
    row["line"] = json!(pair.line);
    row["source"] = json!("revision");
    row["chain"] = json!(revision);
    let mut rows = vec![row];
    if mix_input && !pair.chosen.is_empty() {
        let mut input = sft_row(keys, &revision.prompt, &pair.chosen);
        input["line"] = json!(pair.line);
        input["source"] = json!("input");
        rows.push(input);
    }
    rows
}

/// The record of one judged prompt (self-rewarding): every sample with its
/// judgement and score, how many scores did not parse, and, when the
/// scores differ, the best and worst replies as a DPO pair in `form`.
pub fn judged_record(line: usize, judged: &crate::judge::JudgedPrompt, form: TrlForm) -> Value {
    let unparsed = judged.samples.iter().filter(|s| s.score.is_none()).count();
    let standard = form == TrlForm::Standard;
    let prompt = match standard {
        true => json!(judged.prompt),
        false => json!([{"role": "user", "content": judged.prompt}]),
    };
    let reply = |text: &str| match standard {
        true => json!(text),
        false => json!([{"role": "assistant", "content": text}]),
    };
    let mut record = json!({
        "line": line,
        "prompt": prompt,
        "unparsed": unparsed,
        "samples": judged.samples,
    });
    if let Some((best, worst)) = judged.pair {
        record["chosen"] = reply(&judged.samples[best].response);
        record["rejected"] = reply(&judged.samples[worst].response);
        record["score_chosen"] = json!(judged.samples[best].score);
        record["score_rejected"] = json!(judged.samples[worst].score);
    }
    record
}
