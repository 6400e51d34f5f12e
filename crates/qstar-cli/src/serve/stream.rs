//! `"stream": true`: an answer as server-sent events in OpenAI's chunk
//! layout, ending with `data: [DONE]`.
//!
//! The engine hands back a completion when it is finished, so each choice
//! goes out as one chunk once the whole answer is ready (then a chunk with
//! the usage and no choices, as OpenAI sends with `include_usage`). Clients
//! that ask for a stream get a well-formed one; the first token arrives no
//! sooner than without streaming.

use std::convert::Infallible;

use axum::response::sse::{Event, Sse};
use axum::response::{IntoResponse, Response};
use qstar_core::Usage;
use serde_json::{json, Value};

use super::metrics::Tokens;

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
