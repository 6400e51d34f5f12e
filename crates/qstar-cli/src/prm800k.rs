//! PRM800K's raw labelling records read as stepwise rows, so that
//! `qstar train prm` learns from human step labels the way it learns from
//! `qstar label-steps` output.
//!
//! A PRM800K record is one labeller's walk through a solution: at each step
//! the labeller rated one or more candidate steps (1 good, 0 neutral, −1
//! wrong) and then continued with the candidate at `chosen_completion`, or
//! wrote a step of their own (`human_completion`) when none was right. The
//! walk ends at a step with neither (a found error, a give-up, the end).
//!
//! Every rated candidate that the walk did not continue with becomes a row
//! of its own: the walk so far (as context, not trained on), then that
//! candidate, its one target. The walk itself is the last row, every step a
//! target. So each rating of the record is trained on exactly once, and a
//! candidate is scored after the steps the labeller saw before it.
//!
//! Labels: the hard label says "not an error" (rating ≥ 0: neutral steps are
//! not mistakes); the soft label grades it, (rating + 1) / 2, so neutral is
//! 1/2. A step the labeller wrote is right (hard true, soft 1).

use serde_json::Value;

use crate::prm::StepRow;

/// Whether a JSON row is a PRM800K record rather than a stepwise row.
pub fn is_prm800k_record(value: &Value) -> bool {
    value.pointer("/label/steps").is_some() && value.pointer("/question/problem").is_some()
}

/// One rated candidate step.
struct Rated {
    text: String,
    hard: bool,
    soft: f64,
}

fn rated(candidate: &Value, rating_required: bool) -> Result<Option<Rated>, String> {
    let text = candidate
        .get("text")
        .and_then(Value::as_str)
        .ok_or("a completion without a string \"text\"")?;
    let rating = match candidate.get("rating") {
        None | Some(Value::Null) if rating_required => {
            return Err("the chosen completion has no rating".into())
        }
        None | Some(Value::Null) => return Ok(None),
        Some(r) => r
            .as_i64()
            .filter(|r| (-1..=1).contains(r))
            .ok_or_else(|| format!("rating {r} is not -1, 0 or 1"))?,
    };
    Ok(Some(Rated {
        text: text.to_string(),
        hard: rating >= 0,
        soft: (rating as f64 + 1.0) / 2.0,
    }))
}

/// The rows of one PRM800K record (see the module's doc). A record with no
/// rated step gives none, and so does one whose labeller called the
/// problem itself bad (`finish_reason` "bad_problem").
pub fn rows_from_record(value: &Value, line: usize) -> Result<Vec<StepRow>, String> {
    if value
        .pointer("/label/finish_reason")
        .and_then(Value::as_str)
        == Some("bad_problem")
    {
        return Ok(Vec::new());
    }
    let problem = value
        .pointer("/question/problem")
        .and_then(Value::as_str)
        .ok_or("\"question.problem\" must be a string")?;
    let steps = value
        .pointer("/label/steps")
        .and_then(Value::as_array)
        .ok_or("\"label.steps\" must be an array")?;
    let mut walk: Vec<Rated> = Vec::new();
    let mut rows = Vec::new();
    let row = |walk: &[Rated], last: Option<&Rated>| {
        let all: Vec<&Rated> = walk.iter().chain(last).collect();
        StepRow {
            line,
            prompt: problem.to_string(),
            completions: all.iter().map(|r| r.text.clone()).collect(),
            labels: all.iter().map(|r| r.hard).collect(),
            soft_labels: Some(all.iter().map(|r| r.soft).collect()),
            scored_from: if last.is_some() { walk.len() } else { 0 },
        }
    };
    for (i, step) in steps.iter().enumerate() {
        let at = |message: String| format!("step {}: {message}", i + 1);
        let candidates: &[Value] = match step.get("completions") {
            None | Some(Value::Null) => &[],
            Some(c) => c
                .as_array()
                .ok_or_else(|| at("\"completions\" must be an array".into()))?,
        };
        let chosen = match step.get("chosen_completion") {
            None | Some(Value::Null) => None,
            Some(c) => Some(
                c.as_u64()
                    .and_then(|c| usize::try_from(c).ok())
                    .filter(|&c| c < candidates.len())
                    .ok_or_else(|| {
                        at(format!(
                            "chosen_completion {c} is not one of the {} completions",
                            candidates.len()
                        ))
                    })?,
            ),
        };
        for (j, candidate) in candidates.iter().enumerate() {
            if Some(j) == chosen {
                continue;
            }
            if let Some(r) = rated(candidate, false).map_err(at)? {
                rows.push(row(&walk, Some(&r)));
            }
        }
        let next = match (chosen, step.get("human_completion")) {
            (Some(j), _) => rated(&candidates[j], true).map_err(at)?,
            (None, Some(human)) if !human.is_null() => {
                let text = human
                    .get("text")
                    .and_then(Value::as_str)
                    .ok_or_else(|| at("a human completion without a string \"text\"".into()))?;
                Some(Rated {
                    text: text.to_string(),
                    hard: true,
                    soft: 1.0,
                })
            }
            _ => None,
        };
        match next {
            Some(r) => walk.push(r),
            None => break,
        }
    }
    if !walk.is_empty() {
        rows.push(row(&walk, None));
    }
    Ok(rows)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn candidate(text: &str, rating: Value) -> Value {
        json!({"text": text, "rating": rating, "flagged": false})
    }

    /// A walk of three steps written for this test: a good step, a step the
    /// labeller rewrote after rejecting two candidates, a neutral step chosen
    /// over a wrong one, and an unrated step that ends it.
    fn record() -> Value {
        json!({
            "question": {"problem": "What is 2 + 3 + 4?", "ground_truth_answer": "9"},
            "label": {"steps": [
                {"completions": [candidate("2 + 3 = 5.", json!(1))],
                 "human_completion": null, "chosen_completion": 0},
                {"completions": [candidate("5 + 4 = 10.", json!(-1)), candidate("5 + 4 = 8.", json!(-1))],
                 "human_completion": {"text": "5 + 4 = 9.", "rating": null, "source": "human", "flagged": false},
                 "chosen_completion": null},
                {"completions": [candidate("So it is 10.", json!(-1)), candidate("So the sum is 9.", json!(0))],
                 "human_completion": null, "chosen_completion": 1},
                {"completions": [candidate("Done.", Value::Null)],
                 "human_completion": null, "chosen_completion": null}
            ], "finish_reason": "solution"}
        })
    }

    #[test]
    fn every_rated_branch_is_a_row_and_the_walk_is_the_last() {
        let value = record();
        assert!(is_prm800k_record(&value));
        let rows = rows_from_record(&value, 7).expect("a good record");
        let shapes: Vec<(Vec<&str>, Vec<bool>, Vec<f64>)> = rows
            .iter()
            .map(|r| {
                (
                    r.completions.iter().map(String::as_str).collect(),
                    r.labels.clone(),
                    r.soft_labels.clone().expect("soft labels"),
                )
            })
            .collect();
        assert_eq!(
            shapes,
            vec![
                (
                    vec!["2 + 3 = 5.", "5 + 4 = 10."],
                    vec![true, false],
                    vec![1.0, 0.0]
                ),
                (
                    vec!["2 + 3 = 5.", "5 + 4 = 8."],
                    vec![true, false],
                    vec![1.0, 0.0]
                ),
                (
                    vec!["2 + 3 = 5.", "5 + 4 = 9.", "So it is 10."],
                    vec![true, true, false],
                    vec![1.0, 1.0, 0.0]
                ),
                (
                    vec!["2 + 3 = 5.", "5 + 4 = 9.", "So the sum is 9."],
                    vec![true, true, true],
                    vec![1.0, 1.0, 0.5]
                ),
            ]
        );
        assert!(rows
            .iter()
            .all(|r| r.line == 7 && r.prompt == "What is 2 + 3 + 4?"));
        // Branches train on their last step only, the walk on all of its.
        let scored: Vec<usize> = rows.iter().map(|r| r.scored_from).collect();
        assert_eq!(scored, vec![1, 1, 2, 0]);
        assert!(!is_prm800k_record(
            &json!({"prompt": "q", "completions": [], "labels": []})
        ));
    }

    #[test]
    fn a_broken_record_says_which_step() {
        let mut bad_rating = record();
        bad_rating["label"]["steps"][0]["completions"][0]["rating"] = json!(2);
        let mut bad_choice = record();
        bad_choice["label"]["steps"][2]["chosen_completion"] = json!(5);
        let mut unrated_choice = record();
        unrated_choice["label"]["steps"][0]["completions"][0]["rating"] = Value::Null;
        for (value, words) in [
            (bad_rating, "step 1: rating 2"),
            (bad_choice, "step 3: chosen_completion 5"),
            (
                unrated_choice,
                "step 1: the chosen completion has no rating",
            ),
        ] {
            let err = rows_from_record(&value, 1).expect_err("refused");
            assert!(err.contains(words), "{err}");
        }
    }
}
