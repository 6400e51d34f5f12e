//! `"stream": true`: an answer as server-sent events in OpenAI's chunk
//! layout, ending with `data: [DONE]`.
//!
//! Without log-probs or echo, text goes out as the engine samples it
//! ([`live`]); text that could still turn out to start a stop string is
//! held back until it cannot. With log-probs or echo, each choice goes out
//! as one chunk once the whole answer is ready ([`events`]). Either way a
//! chunk with the usage and no choices comes last, as OpenAI sends with
//! `include_usage`.

use std::convert::Infallible;
use std::sync::Arc;

use axum::response::sse::{Event, Sse};
use axum::response::{IntoResponse, Response};
use qstar_core::{GenerateRequest, Usage};
use serde_json::{json, Value};
use tokio::sync::{mpsc, OwnedSemaphorePermit};

use super::metrics::Tokens;
use super::routes::finish_reason;
use super::wire::{usage_json, ApiError};
use super::AppState;

/// The chunks of a finished answer `body` (a completions or chat answer).
pub fn chunks(body: &Value, chat: bool) -> Vec<Value> {
    let object = if chat {
        "chat.completion.chunk"
    } else {
        "text_completion"
    };
    let head = |choices: Value| {
        json!({
            "id": body["id"],
            "object": object,
            "created": body["created"],
            "model": body["model"],
            "choices": choices,
        })
    };
    let mut out = Vec::new();
    for c in body["choices"].as_array().into_iter().flatten() {
        let mut choice = c.clone();
        if chat {
            if let Some(map) = choice.as_object_mut() {
                if let Some(message) = map.remove("message") {
                    map.insert("delta".into(), message);
                }
            }
        }
        out.push(head(json!([choice])));
    }
    let mut last = head(json!([]));
    last["usage"] = body["usage"].clone();
    out.push(last);
    out
}

pub fn events(body: Value, chat: bool, usage: &Usage) -> Response {
    let mut events: Vec<Result<Event, Infallible>> = chunks(&body, chat)
        .into_iter()
        .map(|c| Ok(Event::default().data(c.to_string())))
        .collect();
    events.push(Ok(Event::default().data("[DONE]")));
    let mut response = Sse::new(futures::stream::iter(events)).into_response();
    response.extensions_mut().insert(Tokens {
        prompt: usage.prompt_tokens,
        generated: usage.completion_tokens,
    });
    response
}

/// A chunk of a live stream: `text` is the new text of choice `index`.
fn live_chunk(head: &Head, index: usize, text: &str, finish: Value) -> Value {
    let choice = if head.chat {
        json!({"index": index, "delta": {"content": text}, "logprobs": null,
               "finish_reason": finish})
    } else {
        json!({"index": index, "text": text, "logprobs": null, "finish_reason": finish})
    };
    head.chunk(json!([choice]))
}

/// What every chunk of one answer repeats.
pub struct Head {
    pub id: String,
    pub created: u64,
    pub model: String,
    pub chat: bool,
}

impl Head {
    fn chunk(&self, choices: Value) -> Value {
        json!({
            "id": self.id,
            "object": if self.chat { "chat.completion.chunk" } else { "text_completion" },
            "created": self.created,
            "model": self.model,
            "choices": choices,
        })
    }
}

/// The longest prefix of `text` that is safe to send: it leaves out what
/// could still become the start of a stop string (`hold` bytes) and an
/// unfinished character at the end (decoded as U+FFFD).
fn safe_prefix(text: &str, hold: usize) -> &str {
    let mut end = text.len().saturating_sub(hold);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    text[..end].trim_end_matches('\u{FFFD}')
}

/// Streams `requests` (one per prompt, `n` samples each) as their tokens
/// are sampled: each choice's text goes out as it grows, then its finish
/// reason, a chunk with the usage, and `[DONE]`. `slot` (the request's
/// queue slot) is held until the stream ends.
pub fn live(
    state: Arc<AppState>,
    requests: Vec<GenerateRequest>,
    n: usize,
    head: Head,
    slot: Option<OwnedSemaphorePermit>,
) -> Response {
    let (events, rx) = mpsc::unbounded_channel::<Event>();
    let done_events = events.clone();
    let send = move |v: &Value| {
        let _ = events.send(Event::default().data(v.to_string()));
    };
    // Every prompt of a request has the same stop strings.
    let stops: Vec<String> = requests
        .first()
        .map(|r| r.params.stop.clone())
        .unwrap_or_default();
    let hold = stops
        .iter()
        .map(String::len)
        .max()
        .map_or(0, |l| l.saturating_sub(1));
    tokio::spawn(async move {
        let _slot = slot;
        let choices = requests.len() * n;
        if head.chat {
            for k in 0..choices {
                send(&head.chunk(json!([{"index": k,
                    "delta": {"role": "assistant", "content": ""},
                    "logprobs": null, "finish_reason": null}])));
            }
        }
        let (all_tx, mut all_rx) = mpsc::unbounded_channel::<(usize, u32)>();
        let mut pending = Vec::new();
        for (i, request) in requests.into_iter().enumerate() {
            let (tx, mut rx) = mpsc::unbounded_channel::<(usize, u32)>();
            let all = all_tx.clone();
            tokio::spawn(async move {
                while let Some((j, token)) = rx.recv().await {
                    let _ = all.send((i * n + j, token));
                }
            });
            let engine = state.engine.clone();
            pending.push(async move { engine.generate_with_progress(request, tx).await });
        }
        drop(all_tx);
        let done = futures::future::try_join_all(pending);
        tokio::pin!(done);
        let mut ids: Vec<Vec<u32>> = vec![Vec::new(); choices];
        let mut sent: Vec<String> = vec![String::new(); choices];
        let result = loop {
            tokio::select! {
                Some((k, token)) = all_rx.recv() => {
                    let Some(seq) = ids.get_mut(k) else { continue };
                    seq.push(token);
                    let mut text = state.engine.decode(seq);
                    // The answer ends before the first stop string.
                    if let Some(at) = stops.iter().filter_map(|s| text.find(s.as_str())).min() {
                        text.truncate(at);
                    }
                    let safe = safe_prefix(&text, hold);
                    if safe.len() > sent[k].len() && safe.starts_with(sent[k].as_str()) {
                        send(&live_chunk(&head, k, &safe[sent[k].len()..], Value::Null));
                        sent[k] = safe.to_string();
                    }
                }
                result = &mut done => break Some(result),
                // The client went away: dropping the engine's futures
                // cancels their work there.
                _ = done_events.closed() => break None,
            }
        };
        let Some(result) = result else {
            return;
        };
        match result {
            Ok(answers) => {
                let mut usage = Usage::default();
                let mut k = 0;
                for answer in &answers {
                    usage.add(&answer.usage);
                    for c in &answer.completions {
                        let rest = c.text.strip_prefix(sent[k].as_str()).unwrap_or_else(|| {
                            tracing::warn!("a streamed choice's text diverged from its answer");
                            ""
                        });
                        send(&live_chunk(
                            &head,
                            k,
                            rest,
                            json!(finish_reason(c.finish_reason)),
                        ));
                        k += 1;
                    }
                }
                let mut last = head.chunk(json!([]));
                last["usage"] = usage_json(&usage);
                send(&last);
                state.metrics.add_tokens(Tokens {
                    prompt: usage.prompt_tokens,
                    generated: usage.completion_tokens,
                });
            }
            Err(e) => {
                let error = ApiError::from(e);
                send(
                    &json!({"error": {"message": error.message, "type": error.kind,
                    "param": null, "code": error.code}}),
                );
            }
        }
        let _ = done_events.send(Event::default().data("[DONE]"));
    });
    let stream = futures::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|e| (Ok::<Event, Infallible>(e), rx))
    });
    Sse::new(stream).into_response()
}
