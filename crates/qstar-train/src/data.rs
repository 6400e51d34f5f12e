//! Supervised fine-tuning data: JSONL rows to token sequences whose prompt
//! tokens are masked, so only the reply is learned.
//!
//! Rows may be TRL's prompt–completion form (strings, or lists of messages
//! for the conversational form), TRL's `messages` form (every assistant
//! turn is learned), or GSM8K-style `question`/`answer` (what `qstar tasks
//! generate` writes: the question is the user's turn, the answer the
//! assistant's). With a task, a question is framed exactly as `qstar solve
//! --task T` frames it (the task's instruction after the question, the chat
//! template's generation prompt), and a GSM8K answer's `#### N` becomes the
//! "The answer is N." the instruction asks for, so a model is trained on
//! what it is later asked.

use std::path::Path;

use qstar_core::Message;
use qstar_engine::LoadedModel;
use qstar_tasks::Task;
use serde_json::Value;

use crate::error::TrainError;
use crate::model::Sequence;

/// What a file gave: the sequences, in file order, and their lines.
pub struct SftData {
    pub sequences: Vec<Sequence>,
    pub lines: Vec<usize>,
}

/// A row's text as spans: (text, learned).
type Spans = Vec<(String, bool)>;

fn messages(v: &Value, field: &str) -> Result<Vec<Message>, String> {
    let list = v
        .as_array()
        .ok_or_else(|| format!("`{field}` must be a string or a list of messages"))?;
    list.iter()
        .enumerate()
        .map(|(i, m)| {
            let role = m["role"]
                .as_str()
                .ok_or_else(|| format!("`{field}`[{i}] has no string `role`"))?;
            let content = m["content"]
                .as_str()
                .ok_or_else(|| format!("`{field}`[{i}] has no string `content`"))?;
            Ok(Message::new(role, content))
        })
        .collect()
}

/// GSM8K's answer as the task's instruction asks for it: calculator notes
/// `<<…>>` dropped, one step per paragraph, "The answer is N." at the end.
pub fn gsm8k_reply(answer: &str) -> Result<String, String> {
    let at = answer
        .rfind("####")
        .ok_or("the answer has no \"#### N\" line")?;
    let number = answer[at + 4..].trim();
    if number.is_empty() {
        return Err("nothing after \"####\"".into());
    }
    let mut steps = Vec::new();
    for line in answer[..at].lines() {
        let mut text = String::new();
        let mut rest = line;
        while let Some(open) = rest.find("<<") {
            text.push_str(&rest[..open]);
            match rest[open..].find(">>") {
                Some(close) => rest = &rest[open + close + 2..],
                None => {
                    rest = "";
                }
            }
        }
        text.push_str(rest);
        let text = text.trim();
        if !text.is_empty() {
            steps.push(text.to_string());
        }
    }
    steps.push(format!("The answer is {number}."));
    Ok(steps.join("\n\n"))
}

/// The user's turn for a question, as `qstar solve` words it.
pub fn framed_question(question: &str, task: Option<Task>) -> String {
    match task {
        Some(task) => task.user_turn(question),
        None => question.to_string(),
    }
}

struct Renderer<'a> {
    model: &'a LoadedModel,
}

impl Renderer<'_> {
    fn render(&self, messages: &[Message], generation_prompt: bool) -> Result<String, String> {
        let chat = self
            .model
            .chat
            .as_ref()
            .ok_or("the model has no chat template for conversational rows")?;
        chat.render(messages, generation_prompt)
            .map_err(|e| e.to_string())
    }

    /// Spans of a conversation: each assistant turn learned, the rest not.
    fn conversation(&self, messages: &[Message]) -> Result<Spans, String> {
        if !messages.iter().any(|m| m.role == "assistant") {
            return Err("no assistant turn to learn".into());
        }
        let mut spans = Vec::new();
        let mut done = String::new();
        for (i, m) in messages.iter().enumerate() {
            let before = if m.role == "assistant" {
                self.render(&messages[..i], true)?
            } else {
                done.clone()
            };
            let after = self.render(&messages[..=i], false)?;
            let (Some(prompt_part), Some(turn)) =
                (before.strip_prefix(&done), after.strip_prefix(&before))
            else {
                return Err(
                    "the chat template does not render the conversation turn by turn".into(),
                );
            };
            if !prompt_part.is_empty() {
                spans.push((prompt_part.to_string(), false));
            }
            spans.push((turn.to_string(), m.role == "assistant"));
            done = after;
        }
        Ok(spans)
    }

    fn row(&self, row: &Value, task: Option<Task>) -> Result<Spans, String> {
        if !row.is_object() {
            return Err("a row must be a JSON object".into());
        }
        if let Some(m) = row.get("messages") {
            return self.conversation(&messages(m, "messages")?);
        }
        if let Some(q) = row.get("question") {
            let question = q.as_str().ok_or("`question` must be a string")?;
            let answer = row["answer"]
                .as_str()
                .ok_or("a question row needs a string `answer`")?;
            let reply = match task {
                Some(Task::Gsm8k) => gsm8k_reply(answer)?,
                _ => answer.to_string(),
            };
            let user = Message::user(framed_question(question, task));
            return self.conversation(&[user, Message::new("assistant", reply)]);
        }
        let (Some(p), Some(c)) = (row.get("prompt"), row.get("completion")) else {
            return Err(
                "a row needs `messages`, `question` and `answer`, or `prompt` and `completion`"
                    .into(),
            );
        };
        match (p, c) {
            (Value::String(p), Value::String(c)) if task.is_some() => {
                let user = Message::user(framed_question(p, task));
                self.conversation(&[user, Message::new("assistant", c.clone())])
            }
            // TRL's standard form: plain text, the end-of-text token after it.
            (Value::String(p), Value::String(c)) => {
                let eos = self
                    .model
                    .tokenizer
                    .eos
                    .map(|id| self.model.tokenizer.token_text(id))
                    .unwrap_or_default();
                Ok(vec![(p.clone(), false), (format!("{c}{eos}"), true)])
            }
            (p, c) => {
                let mut all = messages(p, "prompt")?;
                all.extend(messages(c, "completion")?);
                self.conversation(&all)
            }
        }
    }
}

/// Tokens of spans, the first with the model's BOS when it uses one, and
/// the mask that learns the learned spans' tokens.
fn tokenize(model: &LoadedModel, spans: &Spans) -> Sequence {
    // Neighbouring spans of one kind are one text, tokenized as a whole (a
    // prompt is then exactly the tokens `qstar solve` gives it).
    let mut merged: Spans = Vec::new();
    for (text, learn) in spans {
        match merged.last_mut() {
            Some((t, l)) if l == learn => t.push_str(text),
            _ => merged.push((text.clone(), *learn)),
        }
    }
    let mut tokens = Vec::new();
    let mut learned = Vec::new();
    for (i, (text, learn)) in merged.iter().enumerate() {
        let ids = model
            .tokenizer
            .encode(text, i == 0 && model.tokenizer.add_bos);
        learned.extend(std::iter::repeat_n(*learn, ids.len()));
        tokens.extend(ids);
    }
    // Position j predicts token j + 1.
    let mut predict = vec![false; tokens.len()];
    if tokens.len() > 1 {
        predict[..tokens.len() - 1].copy_from_slice(&learned[1..]);
    }
    Sequence { tokens, predict }
}

/// A reply after its conversation, in the model's chat template, with only
/// the reply's tokens predicted (its end-of-turn marker included): what DPO
/// scores. Earlier assistant turns are context, not learned.
pub fn reply_sequence(
    model: &LoadedModel,
    conversation: &[Message],
    reply: &str,
) -> Result<Sequence, String> {
    if reply.is_empty() {
        return Err("a reply is empty".into());
    }
    let renderer = Renderer { model };
    let prompt = renderer.render(conversation, true)?;
    let mut all = conversation.to_vec();
    all.push(Message::new("assistant", reply));
    let whole = renderer.render(&all, false)?;
    let turn = whole
        .strip_prefix(&prompt)
        .ok_or("the chat template does not render the reply after its conversation")?;
    Ok(tokenize(
        model,
        &vec![(prompt.clone(), false), (turn.to_string(), true)],
    ))
}

/// Reads a JSONL file of SFT rows. A bad row is an error naming the file and
/// its line; so is a row longer than `max_len` tokens.
pub fn read_sft(
    path: &Path,
    model: &LoadedModel,
    task: Option<Task>,
    max_len: usize,
) -> Result<SftData, TrainError> {
    let text = std::fs::read_to_string(path).map_err(|source| TrainError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    let renderer = Renderer { model };
    let mut data = SftData {
        sequences: Vec::new(),
        lines: Vec::new(),
    };
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let at =
            |reason: String| TrainError::Input(format!("{}:{}: {reason}", path.display(), i + 1));
        let row: Value = serde_json::from_str(line).map_err(|e| at(format!("not JSON: {e}")))?;
        let spans = renderer.row(&row, task).map_err(&at)?;
        let seq = tokenize(model, &spans);
        if seq.predicted() == 0 {
            return Err(at("nothing to learn (the reply is empty)".into()));
        }
        if seq.tokens.len() > max_len {
            return Err(at(format!(
                "{} tokens, more than the {max_len} a sequence may have",
                seq.tokens.len()
            )));
        }
        data.sequences.push(seq);
        data.lines.push(i + 1);
    }
    if data.sequences.is_empty() {
        return Err(TrainError::Input(format!("{}: no rows", path.display())));
    }
    Ok(data)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gsm8k_answers_become_what_the_instruction_asks_for() {
        assert_eq!(
            gsm8k_reply("Natalia sold 48/2 = <<48/2=24>>24 clips in May.\nSo 48+24 = <<48+24=72>>72.\n#### 72").as_deref(),
            Ok("Natalia sold 48/2 = 24 clips in May.\n\nSo 48+24 = 72.\n\nThe answer is 72.")
        );
        assert_eq!(
            gsm8k_reply("47 + 38 = 85\n#### 85").as_deref(),
            Ok("47 + 38 = 85\n\nThe answer is 85.")
        );
        assert!(gsm8k_reply("no final line").is_err());
        assert!(gsm8k_reply("x\n####  ").is_err());
    }
}
