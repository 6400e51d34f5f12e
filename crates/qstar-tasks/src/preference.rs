//! Preference pairs: a conversation and two candidate final replies, with
//! the human's choice when the source has one.
//!
//! Reads HH-RLHF transcripts (`chosen`/`rejected` strings made of
//! "\n\nHuman: …" and "\n\nAssistant: …" turns) and TRL preference rows
//! (`prompt`/`chosen`/`rejected`, as plain strings or as message lists).

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};

use qstar_core::Message;
use serde::Serialize;
use serde_json::{json, Map, Value};
use thiserror::Error;

#[derive(Debug, Error)]
pub enum TaskError {
    #[error("{path}:{line}: {message}")]
    BadLine {
        path: PathBuf,
        line: usize,
        message: String,
    },
    #[error("cannot read {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

#[derive(Debug, Clone, PartialEq)]
pub struct PreferencePair {
    /// Line number in the input (1-based), a stable key for resuming.
    pub line: usize,
    /// The turns before the final reply.
    pub conversation: Vec<Message>,
    /// The reply the source prefers (the human label), and the other one.
    pub chosen: String,
    pub rejected: String,
    /// P(`chosen` is the better reply) when the row carries one (`qstar
    /// label` writes it as `soft_label`): an AI label's confidence.
    pub soft_label: Option<f64>,
}

/// What reading a file gave: the pairs, and the lines that were skipped.
#[derive(Debug, Default)]
pub struct ReadReport {
    pub pairs: Vec<PreferencePair>,
    pub rejected_lines: Vec<(usize, String, String)>,
}

/// Splits an HH-RLHF transcript into turns.
pub fn parse_transcript(text: &str) -> Result<Vec<Message>, String> {
    let mut turns: Vec<Message> = Vec::new();
    let mut rest = text;
    let markers = [("\n\nHuman:", "user"), ("\n\nAssistant:", "assistant")];
    loop {
        let next = markers
            .iter()
            .filter_map(|(m, role)| rest.find(m).map(|at| (at, *m, *role)))
            .min_by_key(|(at, _, _)| *at);
        let Some((at, marker, role)) = next else {
            if let Some(last) = turns.last_mut() {
                last.content.push_str(rest);
            } else if !rest.trim().is_empty() {
                return Err("the transcript has no \"Human:\" turn".into());
            }
            break;
        };
        if let Some(last) = turns.last_mut() {
            last.content.push_str(&rest[..at]);
        } else if !rest[..at].trim().is_empty() {
            return Err("text before the first turn".into());
        }
        turns.push(Message::new(role, ""));
        rest = &rest[at + marker.len()..];
    }
    for t in &mut turns {
        t.content = t.content.trim().to_string();
    }
    if turns.is_empty() {
        return Err("empty transcript".into());
    }
    Ok(turns)
}

/// Conversation turns from TRL's prompt field: a string or a message list.
fn messages_of(v: &Value) -> Result<Vec<Message>, String> {
    match v {
        Value::String(s) => Ok(vec![Message::user(s.clone())]),
        Value::Array(_) => {
            serde_json::from_value(v.clone()).map_err(|e| format!("bad messages: {e}"))
        }
        _ => Err("expected a string or a list of messages".into()),
    }
}

/// A reply from TRL's chosen/rejected: a string, or messages whose last is it.
fn reply_of(v: &Value) -> Result<String, String> {
    match v {
        Value::String(s) => Ok(s.clone()),
        Value::Array(_) => {
            let msgs: Vec<Message> =
                serde_json::from_value(v.clone()).map_err(|e| format!("bad messages: {e}"))?;
            msgs.last()
                .map(|m| m.content.clone())
                .ok_or_else(|| "empty message list".into())
        }
        _ => Err("expected a string or a list of messages".into()),
    }
}

fn parse_row(v: &Value, prompts: bool) -> Result<(Vec<Message>, String, String), String> {
    let (chosen, rejected) = (&v["chosen"], &v["rejected"]);
    if prompts && chosen.is_null() && rejected.is_null() {
        // A plain prompt row: {"prompt": text or messages} or {"question": text}.
        if !v["prompt"].is_null() {
            return Ok((messages_of(&v["prompt"])?, String::new(), String::new()));
        }
        if let Some(q) = v["question"].as_str() {
            return Ok((vec![Message::user(q)], String::new(), String::new()));
        }
        return Err("needs `prompt` (or `question`), or a preference pair".into());
    }
    if chosen.is_null() || rejected.is_null() {
        return Err("needs `chosen` and `rejected`".into());
    }
    if !v["prompt"].is_null() {
        return Ok((
            messages_of(&v["prompt"])?,
            reply_of(chosen)?,
            reply_of(rejected)?,
        ));
    }
    // HH-RLHF: two transcripts that differ only in the final reply.
    let (Some(c), Some(r)) = (chosen.as_str(), rejected.as_str()) else {
        return Err("without `prompt`, `chosen` and `rejected` must be HH-RLHF transcripts".into());
    };
    let mut c_turns = parse_transcript(c).map_err(|e| format!("chosen: {e}"))?;
    let mut r_turns = parse_transcript(r).map_err(|e| format!("rejected: {e}"))?;
    let (Some(cl), Some(rl)) = (c_turns.pop(), r_turns.pop()) else {
        return Err("empty transcript".into());
    };
    if cl.role != "assistant" || rl.role != "assistant" {
        return Err("a transcript does not end with an Assistant turn".into());
    }
    if c_turns != r_turns {
        return Err("chosen and rejected differ before their final reply".into());
    }
    Ok((c_turns, cl.content, rl.content))
}

/// A row's `soft_label`, when it has one: a probability in [0, 1].
fn soft_label_of(v: &Value) -> Result<Option<f64>, String> {
    match &v["soft_label"] {
        Value::Null => Ok(None),
        Value::Number(n) => match n.as_f64() {
            Some(p) if (0.0..=1.0).contains(&p) => Ok(Some(p)),
            _ => Err(format!("`soft_label` {n} is not a probability in [0, 1]")),
        },
        other => Err(format!("`soft_label` must be a number, not {other}")),
    }
}

/// The pair one JSON row holds (a TRL row or two HH-RLHF transcripts), read
/// as the file readers read a line; `prompts` also accepts plain prompt
/// rows (`prompt` or `question`), whose replies are then empty. `line` is
/// the pair's key (1-based).
pub fn pair_from_row(row: &Value, line: usize, prompts: bool) -> Result<PreferencePair, String> {
    let (conversation, chosen, rejected) = parse_row(row, prompts)?;
    Ok(PreferencePair {
        line,
        conversation,
        chosen,
        rejected,
        soft_label: soft_label_of(row)?,
    })
}

/// TRL's two forms of a preference row: standard (`prompt`, `chosen` and
/// `rejected` as strings) or conversational (all three as lists of
/// messages).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum TrlForm {
    Standard,
    Conversational,
}

impl TrlForm {
    /// The form of an input row: conversational when its prompt or a reply
    /// is a list of messages, or when it is an HH-RLHF transcript pair (no
    /// text prompt); standard when the prompt is text.
    pub fn of_row(row: &Value) -> TrlForm {
        let listed = ["prompt", "chosen", "rejected"]
            .iter()
            .any(|k| row[*k].is_array());
        let text_prompt = row["prompt"].is_string() || row["question"].is_string();
        if listed || !text_prompt {
            TrlForm::Conversational
        } else {
            TrlForm::Standard
        }
    }
}

/// Where the replies of a written preference pair go: a TRL row in one of
/// its forms, or OpenRLHF's `chosen`/`rejected` as whole conversations
/// ending in those replies.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RowLayout {
    Trl(TrlForm),
    Openrlhf,
}

impl RowLayout {
    /// The preference columns of `conversation` followed by `chosen` or
    /// `rejected`, in this layout.
    pub fn rows(
        self,
        conversation: &[Message],
        chosen: &str,
        rejected: &str,
    ) -> Map<String, Value> {
        let mut rows = Map::new();
        match self {
            RowLayout::Trl(TrlForm::Standard) => {
                rows.insert("prompt".into(), json!(prompt_text(conversation)));
                rows.insert("chosen".into(), json!(chosen));
                rows.insert("rejected".into(), json!(rejected));
            }
            RowLayout::Trl(TrlForm::Conversational) => {
                let reply = |text: &str| json!([Message::assistant(text)]);
                rows.insert("prompt".into(), json!(conversation));
                rows.insert("chosen".into(), reply(chosen));
                rows.insert("rejected".into(), reply(rejected));
            }
            RowLayout::Openrlhf => {
                let whole = |reply: &str| {
                    let mut c = conversation.to_vec();
                    c.push(Message::assistant(reply));
                    json!(c)
                };
                rows.insert("chosen".into(), whole(chosen));
                rows.insert("rejected".into(), whole(rejected));
            }
        }
        rows
    }
}

/// A prompt in TRL's standard form: the text of a lone user turn, or the
/// conversation as an HH-RLHF transcript ending where the reply starts.
pub fn prompt_text(conversation: &[Message]) -> String {
    if let [only] = conversation {
        if only.role == "user" {
            return only.content.clone();
        }
    }
    let mut text = transcript(conversation);
    text.push_str("\n\nAssistant:");
    text
}

/// Messages as an HH-RLHF transcript: "\n\nHuman: …\n\nAssistant: …".
pub fn transcript(messages: &[Message]) -> String {
    let mut text = String::new();
    for m in messages {
        let speaker = match m.role.as_str() {
            "user" => "Human",
            "assistant" => "Assistant",
            "system" => "System",
            other => other,
        };
        text.push_str(&format!("\n\n{speaker}: {}", m.content));
    }
    text
}

/// Reads preference pairs from JSONL, stopping after `limit` pairs. A
/// malformed line is an error naming the file and line, unless
/// `skip_invalid`, where it is reported and skipped.
pub fn read_pairs(
    path: &Path,
    skip_invalid: bool,
    limit: Option<usize>,
) -> Result<ReadReport, TaskError> {
    read_rows(path, skip_invalid, limit, false)
}

/// Like [`read_pairs`], but also accepts plain prompt rows (`prompt` or
/// `question`), read as pairs whose replies are empty: for jobs that only
/// need the prompt (critique→revision, self-judging).
pub fn read_prompts(
    path: &Path,
    skip_invalid: bool,
    limit: Option<usize>,
) -> Result<ReadReport, TaskError> {
    read_rows(path, skip_invalid, limit, true)
}

fn read_rows(
    path: &Path,
    skip_invalid: bool,
    limit: Option<usize>,
    prompts: bool,
) -> Result<ReadReport, TaskError> {
    let io = |source| TaskError::Io {
        path: path.to_path_buf(),
        source,
    };
    let file = std::fs::File::open(path).map_err(io)?;
    let mut report = ReadReport::default();
    for (i, line) in BufReader::new(file).lines().enumerate() {
        if limit.is_some_and(|n| report.pairs.len() >= n) {
            break;
        }
        let line_no = i + 1;
        let text = line.map_err(io)?;
        if text.trim().is_empty() {
            continue;
        }
        let parsed = serde_json::from_str::<Value>(&text)
            .map_err(|e| format!("not JSON: {e}"))
            .and_then(|v| pair_from_row(&v, line_no, prompts));
        match parsed {
            Ok(pair) => report.pairs.push(pair),
            Err(message) if skip_invalid => report.rejected_lines.push((line_no, text, message)),
            Err(message) => {
                return Err(TaskError::BadLine {
                    path: path.to_path_buf(),
                    line: line_no,
                    message,
                })
            }
        }
    }
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_prompts_are_read_only_when_asked() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("p.jsonl");
        std::fs::write(
            &path,
            "{\"prompt\":\"hi\"}\n{\"question\":\"why?\"}\n{\"prompt\":[{\"role\":\"user\",\"content\":\"yo\"}]}\n",
        )
        .unwrap();
        let r = read_prompts(&path, false, None).unwrap();
        let firsts: Vec<&str> = r
            .pairs
            .iter()
            .map(|p| p.conversation[0].content.as_str())
            .collect();
        assert_eq!(firsts, ["hi", "why?", "yo"]);
        assert!(r.pairs.iter().all(|p| p.chosen.is_empty()));
        let err = read_pairs(&path, false, None).unwrap_err().to_string();
        assert!(err.contains("p.jsonl:1"), "{err}");
    }

    #[test]
    fn hh_transcripts_split_into_conversation_and_replies() {
        let row = serde_json::json!({
            "chosen": "\n\nHuman: Hi\n\nAssistant: Hello!\n\nHuman: How are you?\n\nAssistant: Fine, thanks.",
            "rejected": "\n\nHuman: Hi\n\nAssistant: Hello!\n\nHuman: How are you?\n\nAssistant: Go away."
        });
        let (conv, c, r) = parse_row(&row, false).expect("parse");
        assert_eq!(conv.len(), 3);
        assert_eq!(conv[2], Message::user("How are you?"));
        assert_eq!((c.as_str(), r.as_str()), ("Fine, thanks.", "Go away."));
    }

    #[test]
    fn soft_labels_are_read_and_checked() {
        let dir = tempfile::tempdir().expect("tmp");
        let path = dir.path().join("labels.jsonl");
        let row = |extra: &str| {
            format!("{{\"prompt\":\"a\",\"chosen\":\"b\",\"rejected\":\"c\"{extra}}}\n")
        };
        std::fs::write(&path, row(",\"soft_label\":0.75") + &row("")).expect("write");
        let pairs = read_pairs(&path, false, None).expect("read").pairs;
        assert_eq!(pairs[0].soft_label, Some(0.75));
        assert_eq!(pairs[1].soft_label, None);
        for bad in [",\"soft_label\":1.5", ",\"soft_label\":\"high\""] {
            std::fs::write(&path, row("") + &row(bad)).expect("write");
            let err = read_pairs(&path, false, None)
                .expect_err("bad label")
                .to_string();
            assert!(
                err.contains("labels.jsonl:2") && err.contains("soft_label"),
                "{err}"
            );
        }
    }

    #[test]
    fn trl_rows_plain_and_conversational() {
        let plain = serde_json::json!({"prompt": "Q?", "chosen": "yes", "rejected": "no"});
        assert_eq!(parse_row(&plain, false).expect("plain").1, "yes");
        let conv = serde_json::json!({
            "prompt": [{"role": "user", "content": "Q?"}],
            "chosen": [{"role": "assistant", "content": "yes"}],
            "rejected": [{"role": "assistant", "content": "no"}]
        });
        let (p, c, r) = parse_row(&conv, false).expect("conversational");
        assert_eq!((p.len(), c.as_str(), r.as_str()), (1, "yes", "no"));
    }

    #[test]
    fn rows_are_written_in_each_layout_and_forms_are_recognised() {
        let conversation = vec![
            Message::user("Hi"),
            Message::assistant("Hello!"),
            Message::user("Help?"),
        ];
        let standard = RowLayout::Trl(TrlForm::Standard).rows(&conversation, "yes", "no");
        assert_eq!(
            standard["prompt"],
            "\n\nHuman: Hi\n\nAssistant: Hello!\n\nHuman: Help?\n\nAssistant:"
        );
        assert_eq!(
            (standard["chosen"].as_str(), standard["rejected"].as_str()),
            (Some("yes"), Some("no"))
        );
        // A lone user turn is the prompt's text itself.
        let lone = RowLayout::Trl(TrlForm::Standard).rows(&conversation[..1], "a", "b");
        assert_eq!(lone["prompt"], "Hi");
        let listed = RowLayout::Trl(TrlForm::Conversational).rows(&conversation, "yes", "no");
        assert_eq!(listed["prompt"].as_array().map(Vec::len), Some(3));
        assert_eq!(
            listed["chosen"],
            json!([{"role": "assistant", "content": "yes"}])
        );
        let whole = RowLayout::Openrlhf.rows(&conversation, "yes", "no");
        assert!(whole.get("prompt").is_none());
        assert_eq!(whole["rejected"].as_array().map(Vec::len), Some(4));
        // Written rows read back as the same pair, in the form they were written.
        for rows in [standard, listed] {
            let row = Value::Object(rows);
            let pair = pair_from_row(&row, 7, false).expect("reads back");
            assert_eq!((pair.line, pair.chosen.as_str()), (7, "yes"));
        }
        assert_eq!(
            TrlForm::of_row(&json!({"prompt": "q", "chosen": "a", "rejected": "b"})),
            TrlForm::Standard
        );
        assert_eq!(
            TrlForm::of_row(&json!({"chosen": "\n\nHuman: q\n\nAssistant: a", "rejected": "x"})),
            TrlForm::Conversational
        );
    }

    #[test]
    fn malformed_lines_name_file_and_line_or_are_skipped() {
        let dir = tempfile::tempdir().expect("tmp");
        let path = dir.path().join("pairs.jsonl");
        std::fs::write(
            &path,
            "{\"prompt\":\"a\",\"chosen\":\"b\",\"rejected\":\"c\"}\n{oops\n{\"prompt\":\"a\"}\n",
        )
        .expect("write");
        let err = read_pairs(&path, false, None).expect_err("bad line");
        assert!(err.to_string().contains("pairs.jsonl:2: not JSON"), "{err}");
        let report = read_pairs(&path, true, None).expect("skip");
        assert_eq!(report.pairs.len(), 1);
        assert_eq!(
            report
                .rejected_lines
                .iter()
                .map(|r| r.0)
                .collect::<Vec<_>>(),
            vec![2, 3]
        );
    }
}
