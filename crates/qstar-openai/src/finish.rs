//! Why a completion ended. `finish_reason: "stop"` covers both an
//! end-of-generation token and a requested stop string; the search needs to
//! tell them apart (a stop string ends a step, the end of generation ends
//! the solution), and servers say which in different ways, or not at all.

use qstar_core::FinishReason;
use serde_json::Value;

use crate::wire::WireToken;

/// Classifies a choice of a completions or chat answer `response`.
/// `stops_requested` is whether the request had stop strings; `tokens` are
/// the completion's parsed log-probs, when the server sent them.
///
/// In order, the first that applies:
/// - vLLM's `stop_reason` and SGLang's `matched_stop`: the stop string
///   (Stop), or a token id or null (the end of generation);
/// - llama-server's `stop_type` (`"word"` or `"eos"`), where it is present;
/// - the log-probs: fewer tokens than `usage.completion_tokens` means the
///   server dropped the stop string's tokens (llama-server does); a last
///   token with no text, or one written like a special token (`<|im_end|>`,
///   `</s>`), is the end of generation; any other last token is not, so the
///   stop was at a stop string;
/// - with nothing to go by, Stop: taking the end of the answer for a step
///   boundary costs one more request that ends at once, while the opposite
///   mistake would cut the solution short.
pub fn classify(
    response: &Value,
    choice: &Value,
    stops_requested: bool,
    tokens: Option<&[WireToken]>,
) -> FinishReason {
    match choice["finish_reason"].as_str() {
        Some("stop") => {}
        _ => return FinishReason::Length,
    }
    if !stops_requested {
        return FinishReason::Eos;
    }
    for field in ["stop_reason", "matched_stop"] {
        match choice.get(field) {
            Some(Value::String(_)) => return FinishReason::Stop,
            Some(Value::Null) if field == "stop_reason" => return FinishReason::Eos,
            Some(Value::Number(_)) => return FinishReason::Eos,
            _ => {}
        }
    }
    for stop_type in [
        &choice["stop_type"],
        &response["stop_type"],
        &response["__verbose"]["stop_type"],
    ] {
        match stop_type.as_str() {
            Some("word") => return FinishReason::Stop,
            Some("eos") => return FinishReason::Eos,
            _ => {}
        }
    }
    let Some(tokens) = tokens else {
        return FinishReason::Stop;
    };
    let generated = response["usage"]["completion_tokens"].as_u64();
    if generated.is_some_and(|n| (tokens.len() as u64) < n) {
        return FinishReason::Stop;
    }
    match tokens.last() {
        Some(last) if ends_generation(last) => FinishReason::Eos,
        _ => FinishReason::Stop,
    }
}

/// Whether a token looks like an end-of-generation token: no text at all
/// (servers do not render special tokens), or written like one.
fn ends_generation(t: &WireToken) -> bool {
    // The chosen token's text may have been cut by the server's stop-string
    // handling; its entry among the alternatives, found by id, is whole.
    let (text, bytes) =
        t.id.and_then(|id| t.top.iter().find(|a| a.id == Some(id)))
            .map_or((t.text.as_str(), t.bytes.as_deref()), |a| {
                (a.text.as_str(), a.bytes.as_deref())
            });
    if text.is_empty() {
        return bytes.is_none_or(|b| b.is_empty());
    }
    (text.starts_with("<|") && text.ends_with("|>") && !text.contains(char::is_whitespace))
        || ["</s>", "<eos>", "<end_of_turn>"].contains(&text)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::parse_logprobs;
    use serde_json::json;

    fn classify_one(response: Value, stops: bool) -> FinishReason {
        let choice = response["choices"][0].clone();
        let tokens = parse_logprobs(&choice["logprobs"]);
        classify(&response, &choice, stops, tokens.as_deref())
    }

    #[test]
    fn length_and_stops_without_stop_strings() {
        let r = json!({"choices": [{"text": "x", "finish_reason": "length"}]});
        assert_eq!(classify_one(r, true), FinishReason::Length);
        let r = json!({"choices": [{"text": "x", "finish_reason": "stop"}]});
        assert_eq!(classify_one(r, false), FinishReason::Eos);
    }

    #[test]
    fn sglang_matched_stop() {
        let r =
            json!({"choices": [{"text": "x", "finish_reason": "stop", "matched_stop": "\n\n"}]});
        assert_eq!(classify_one(r, true), FinishReason::Stop);
        let r = json!({"choices": [{"text": "x", "finish_reason": "stop", "matched_stop": 2}]});
        assert_eq!(classify_one(r, true), FinishReason::Eos);
    }

    #[test]
    fn special_token_texts_end_generation() {
        for (text, eos) in [
            ("<|im_end|>", true),
            ("</s>", true),
            ("", true),
            ("<|a b|>", false),
            (" <", false),
            ("\n", false),
        ] {
            let t = WireToken {
                id: None,
                text: text.into(),
                logprob: None,
                offset: None,
                bytes: None,
                top: vec![],
            };
            assert_eq!(ends_generation(&t), eos, "{text:?}");
        }
    }
}
