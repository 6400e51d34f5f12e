//! The two log-prob layouts servers send: the legacy completions one
//! (`tokens`, `token_logprobs`, `top_logprobs`, `text_offset`) and the chat
//! one (`content: [{token, logprob, top_logprobs: [{token, logprob}]}]`).

use serde_json::Value;

pub struct WireToken {
    /// Token id, when the server reports it (llama-server does).
    pub id: Option<u32>,
    pub text: String,
    pub logprob: Option<f32>,
    /// Byte offset of the token in the prompt+completion text, when given.
    pub offset: Option<usize>,
    pub top: Vec<(String, f32)>,
}

pub fn parse_logprobs(v: &Value) -> Option<Vec<WireToken>> {
    if let Some(content) = v["content"].as_array() {
        let mut offset = 0;
        return Some(
            content
                .iter()
                .map(|t| {
                    let text = t["token"].as_str().unwrap_or_default().to_string();
                    let token = WireToken {
                        id: t["id"].as_u64().map(|i| i as u32),
                        offset: None,
                        logprob: t["logprob"].as_f64().map(|x| x as f32),
                        top: t["top_logprobs"]
                            .as_array()
                            .map(|a| {
                                a.iter()
                                    .filter_map(|e| {
                                        Some((
                                            e["token"].as_str()?.to_string(),
                                            e["logprob"].as_f64()? as f32,
                                        ))
                                    })
                                    .collect()
                            })
                            .unwrap_or_default(),
                        text,
                    };
                    offset += token.text.len();
                    token
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
            .map(|(i, t)| WireToken {
                id: None,
                text: t.as_str().unwrap_or_default().to_string(),
                logprob: logprobs
                    .and_then(|l| l.get(i))
                    .and_then(|x| x.as_f64())
                    .map(|x| x as f32),
                offset: offsets
                    .and_then(|o| o.get(i))
                    .and_then(|x| x.as_u64())
                    .map(|x| x as usize),
                top: tops
                    .and_then(|l| l.get(i))
                    .and_then(|m| m.as_object())
                    .map(|m| {
                        let mut pairs: Vec<(String, f32)> = m
                            .iter()
                            .filter_map(|(k, v)| Some((k.clone(), v.as_f64()? as f32)))
                            .collect();
                        pairs.sort_by(|a, b| b.1.total_cmp(&a.1));
                        pairs
                    })
                    .unwrap_or_default(),
            })
            .collect(),
    )
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
        assert_eq!(t[1].top[0].0, "B");
        assert_eq!(t[1].offset, Some(1));
        let chat = json!({"content": [{"id": 7, "token": " A", "logprob": -0.1,
            "top_logprobs": [{"token": " A", "logprob": -0.1}]}]});
        let t = parse_logprobs(&chat).expect("chat");
        assert_eq!(t[0].text, " A");
        assert_eq!(t[0].id, Some(7));
        assert_eq!(t[0].top.len(), 1);
    }
}
