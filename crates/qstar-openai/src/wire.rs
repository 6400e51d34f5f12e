//! The two log-prob layouts servers send: the legacy completions one
//! (`tokens`, `token_logprobs`, `top_logprobs: [{"tok": lp}]`, `text_offset`)
//! and the chat one (`content: [{token, logprob, top_logprobs: [{token,
//! logprob}]}]`), which llama-server also uses on `/v1/completions`.
//!
//! Token ids arrive in three ways, or not at all: an `id` field
//! (llama-server), or the token itself written as `token_id:123` (vLLM with
//! `return_tokens_as_token_ids`), in which case the text comes from `bytes`
//! or, for echoed prompts, from the offsets.

use serde_json::Value;

pub struct WireToken {
    /// Token id, when the server reports it.
    pub id: Option<u32>,
    pub text: String,
    pub logprob: Option<f32>,
    /// Offset of the token in the prompt+completion text, when given, in the
    /// server's unit (bytes or characters; see [`byte_offsets`]).
    pub offset: Option<usize>,
    /// The token's UTF-8 bytes, when the server sends them (`bytes`).
    pub bytes: Option<Vec<u8>>,
    pub top: Vec<WireAlternative>,
}

/// One of the most likely tokens at a position.
pub struct WireAlternative {
    pub id: Option<u32>,
    pub text: String,
    pub logprob: f32,
    pub bytes: Option<Vec<u8>>,
}

/// A token as the server wrote it: `token_id:123` is an id without text.
fn split_token(raw: &str) -> (Option<u32>, Option<&str>) {
    match raw.strip_prefix("token_id:").map(str::parse::<u32>) {
        Some(Ok(id)) => (Some(id), None),
        _ => (None, Some(raw)),
    }
}

fn bytes_of(v: &Value) -> Option<Vec<u8>> {
    v.as_array()?
        .iter()
        .map(|b| b.as_u64().and_then(|b| u8::try_from(b).ok()))
        .collect()
}

fn id_of(v: &Value) -> Option<u32> {
    v.as_u64().and_then(|i| u32::try_from(i).ok())
}

/// Id and text of one chat-layout entry (`{id?, token, bytes?, ...}`).
fn chat_entry(e: &Value) -> (Option<u32>, String, Option<Vec<u8>>) {
    let raw = e["token"].as_str().unwrap_or_default();
    let bytes = bytes_of(&e["bytes"]);
    let (named, text) = split_token(raw);
    let text = match text {
        Some(t) => t.to_string(),
        None => bytes
            .as_deref()
            .map(|b| String::from_utf8_lossy(b).into_owned())
            .unwrap_or_default(),
    };
    (id_of(&e["id"]).or(named), text, bytes)
}

pub fn parse_logprobs(v: &Value) -> Option<Vec<WireToken>> {
    if let Some(content) = v["content"].as_array() {
        return Some(
            content
                .iter()
                .map(|t| {
                    let (id, text, bytes) = chat_entry(t);
                    WireToken {
                        id,
                        text,
                        logprob: t["logprob"].as_f64().map(|x| x as f32),
                        offset: None,
                        bytes,
                        top: t["top_logprobs"]
                            .as_array()
                            .map(|a| {
                                a.iter()
                                    .filter_map(|e| {
                                        let logprob = e["logprob"].as_f64()? as f32;
                                        let (id, text, bytes) = chat_entry(e);
                                        Some(WireAlternative {
                                            id,
                                            text,
                                            logprob,
                                            bytes,
                                        })
                                    })
                                    .collect()
                            })
                            .unwrap_or_default(),
                    }
                })
                .collect(),
        );
    }
    let tokens = v["tokens"].as_array()?;
    let logprobs = v["token_logprobs"].as_array();
    let tops = v["top_logprobs"].as_array();
    let offsets = v["text_offset"].as_array();
    Some(
        tokens
            .iter()
            .enumerate()
            .map(|(i, t)| {
                let (id, text) = split_token(t.as_str().unwrap_or_default());
                WireToken {
                    id,
                    text: text.unwrap_or_default().to_string(),
                    logprob: logprobs
                        .and_then(|l| l.get(i))
                        .and_then(|x| x.as_f64())
                        .map(|x| x as f32),
                    offset: offsets
                        .and_then(|o| o.get(i))
                        .and_then(|x| x.as_u64())
                        .map(|x| x as usize),
                    bytes: None,
                    top: tops
                        .and_then(|l| l.get(i))
                        .and_then(|m| m.as_object())
                        .map(|m| {
                            let mut alternatives: Vec<WireAlternative> = m
                                .iter()
                                .filter_map(|(k, v)| {
                                    let (id, text) = split_token(k);
                                    Some(WireAlternative {
                                        id,
                                        text: text.unwrap_or_default().to_string(),
                                        logprob: v.as_f64()? as f32,
                                        bytes: None,
                                    })
                                })
                                .collect();
                            alternatives.sort_by(|a, b| b.logprob.total_cmp(&a.logprob));
                            alternatives
                        })
                        .unwrap_or_default(),
                }
            })
            .collect(),
    )
}

/// Rewrites the tokens' offsets into byte offsets of `full` (the text the
/// server echoed), whatever unit the server counted in: vLLM counts
/// characters (Python string indices), others count bytes. The unit is the
/// one under which the tokens' texts are found at their offsets; for ASCII
/// text both agree. Tokens sent as bare ids get their text from the offsets.
pub fn byte_offsets(tokens: &mut [WireToken], full: &str) {
    // Byte position of every character boundary, end included.
    let boundaries: Vec<usize> = full
        .char_indices()
        .map(|(i, _)| i)
        .chain(std::iter::once(full.len()))
        .collect();
    let agrees = |to_byte: &dyn Fn(usize) -> Option<usize>| {
        tokens
            .iter()
            .filter(|t| !t.text.is_empty())
            .filter(|t| {
                t.offset
                    .and_then(to_byte)
                    .and_then(|b| full.get(b..))
                    .is_some_and(|rest| rest.starts_with(&t.text))
            })
            .count()
    };
    let as_bytes = |o: usize| (o <= full.len()).then_some(o);
    let as_chars = |o: usize| boundaries.get(o).copied();
    let ascii = full.len() == boundaries.len() - 1;
    let (by_chars, by_bytes) = (agrees(&as_chars), agrees(&as_bytes));
    // Without any token text to go by (ids only), characters: vLLM is the
    // server that sends bare ids.
    let in_chars = !ascii && (by_chars > by_bytes || by_chars + by_bytes == 0);
    for t in tokens.iter_mut() {
        t.offset = t.offset.and_then(|o| {
            if in_chars {
                as_chars(o)
            } else {
                // An offset that is not a character boundary is no offset.
                full.is_char_boundary(o).then_some(o).and_then(as_bytes)
            }
        });
    }
    // Texts of tokens that arrived as ids only: the span up to the next one.
    for i in 0..tokens.len() {
        if tokens[i].id.is_none() || !tokens[i].text.is_empty() {
            continue;
        }
        let Some(start) = tokens[i].offset else {
            continue;
        };
        let end = tokens[i + 1..]
            .iter()
            .find_map(|t| t.offset)
            .unwrap_or(full.len());
        if let Some(span) = full.get(start..end.max(start)) {
            tokens[i].text = span.to_string();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn both_layouts_parse() {
        let legacy = json!({"tokens": ["A", "B"], "token_logprobs": [null, -0.5],
            "top_logprobs": [null, {"B": -0.5, "C": -1.0}], "text_offset": [0, 1]});
        let t = parse_logprobs(&legacy).expect("legacy");
        assert_eq!(t[0].logprob, None);
        assert_eq!(t[1].top[0].text, "B");
        assert_eq!(t[1].offset, Some(1));
        let chat = json!({"content": [{"id": 7, "token": " A", "logprob": -0.1,
            "top_logprobs": [{"id": 7, "token": " A", "logprob": -0.1}]}]});
        let t = parse_logprobs(&chat).expect("chat");
        assert_eq!(t[0].text, " A");
        assert_eq!(t[0].id, Some(7));
        assert_eq!(t[0].top.len(), 1);
        assert_eq!(t[0].top[0].id, Some(7));
    }

    #[test]
    fn tokens_written_as_ids_keep_their_ids_and_find_their_text() {
        let chat = json!({"content": [{"token": "token_id:42", "logprob": -0.1,
            "bytes": [99, 97, 102, 195, 169],
            "top_logprobs": [{"token": "token_id:42", "logprob": -0.1, "bytes": [99]}]}]});
        let t = parse_logprobs(&chat).expect("chat");
        assert_eq!((t[0].id, t[0].text.as_str()), (Some(42), "café"));
        assert_eq!(t[0].top[0].id, Some(42));
        let legacy = json!({"tokens": ["token_id:5", "token_id:6"],
            "token_logprobs": [null, -1.0], "text_offset": [0, 4],
            "top_logprobs": [null, {"token_id:6": -1.0, "token_id:9": -2.0}]});
        let mut t = parse_logprobs(&legacy).expect("legacy");
        assert_eq!(t[1].top[1].id, Some(9));
        // vLLM counts characters: "é" is one.
        byte_offsets(&mut t, "café au lait");
        assert_eq!(t[0].text, "café");
        assert_eq!(t[1].offset, Some(5));
        assert_eq!(t[1].text, " au lait");
    }

    #[test]
    fn offsets_in_characters_or_bytes_become_bytes() {
        let full = "naïve – ok";
        let pieces = ["na", "ïve", " –", " ok"];
        let chars = [0usize, 2, 5, 7];
        let bytes = [0usize, 2, 6, 10];
        for unit in [chars, bytes] {
            let mut tokens: Vec<WireToken> = pieces
                .iter()
                .zip(unit)
                .map(|(p, o)| WireToken {
                    id: None,
                    text: p.to_string(),
                    logprob: Some(-1.0),
                    offset: Some(o),
                    bytes: None,
                    top: vec![],
                })
                .collect();
            byte_offsets(&mut tokens, full);
            let got: Vec<Option<usize>> = tokens.iter().map(|t| t.offset).collect();
            assert_eq!(got, bytes.map(Some).to_vec(), "{unit:?}");
        }
    }
}
