//! Byte-level BPE tokenizer built from a GGUF file's own vocabulary.
//!
//! It reproduces llama.cpp's tokenization: special tokens written in the text
//! are recognised first, the rest is cut into pieces by the pre-tokenizer that
//! `tokenizer.ggml.pre` names, and each piece is encoded by applying merges in
//! rank order to its bytes (mapped to printable characters, as GPT-2 does).

use std::collections::HashMap;

use fancy_regex::Regex;

use crate::error::EngineError;
use crate::gguf::GgufFile;

/// GGUF token types that are matched verbatim in text instead of BPE-encoded.
const TOKEN_TYPE_CONTROL: i64 = 3;
const TOKEN_TYPE_USER_DEFINED: i64 = 4;

/// GPT-2's pre-tokenizer: contractions, words, numbers, punctuation runs and
/// whitespace (a single space sticks to the following piece).
const GPT2_PATTERN: &str =
    r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+";
/// Llama 3 style: case-insensitive contractions, 1–3 digit numbers.
const LLAMA3_PATTERN: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

pub struct Tokenizer {
    /// Token text as stored in the GGUF (byte-level characters for BPE tokens).
    tokens: Vec<String>,
    /// Raw bytes each token stands for.
    token_bytes: Vec<Vec<u8>>,
    ids: HashMap<String, u32>,
    /// (left, right) → (rank, merged id).
    merges: HashMap<(u32, u32), (u32, u32)>,
    /// Special tokens matched in text, longest first.
    specials: Vec<(String, u32)>,
    is_special: Vec<bool>,
    /// Regexes applied one after the other; each splits the pieces of the last.
    pre: Vec<Regex>,
    byte_ids: [u32; 256],
    pub bos: Option<u32>,
    pub eos: Option<u32>,
    /// Tokens that end a generation (EOS, end-of-turn).
    end_of_generation: Vec<u32>,
    pub add_bos: bool,
    pub pre_name: String,
}

/// GPT-2's reversible map from bytes to printable characters.
fn byte_to_char() -> [char; 256] {
    let mut map = ['\0'; 256];
    let mut extra = 0u32;
    for b in 0..256u32 {
        let printable =
            (33..=126).contains(&b) || (161..=172).contains(&b) || (174..=255).contains(&b);
        let c = if printable {
            b
        } else {
            extra += 1;
            255 + extra
        };
        map[b as usize] = char::from_u32(c).unwrap_or('\0');
    }
    map
}

impl Tokenizer {
    pub fn from_gguf(gguf: &GgufFile) -> Result<Self, EngineError> {
        let model = gguf.string("tokenizer.ggml.model")?;
        if model != "gpt2" {
            return Err(EngineError::Metadata(format!(
                "tokenizer model `{model}` is not supported (qstar reads byte-level BPE, `gpt2`)"
            )));
        }
        let tokens = gguf.string_array("tokenizer.ggml.tokens")?;
        let types = if gguf.has("tokenizer.ggml.token_type") {
            gguf.int_array("tokenizer.ggml.token_type")?
        } else {
            vec![1; tokens.len()]
        };
        let merges_text = gguf.string_array("tokenizer.ggml.merges")?;
        let pre_name = if gguf.has("tokenizer.ggml.pre") {
            gguf.string("tokenizer.ggml.pre")?
        } else {
            "default".to_string()
        };
        let optional_id = |key: &str| -> Result<Option<u32>, EngineError> {
            if gguf.has(key) {
                Ok(Some(gguf.uint(key)? as u32))
            } else {
                Ok(None)
            }
        };
        let bos = optional_id("tokenizer.ggml.bos_token_id")?;
        let eos = optional_id("tokenizer.ggml.eos_token_id")?;
        let eot = optional_id("tokenizer.ggml.eot_token_id")?;
        let add_bos = gguf.bool_or("tokenizer.ggml.add_bos_token", false);
        Self::new(
            tokens,
            types,
            &merges_text,
            &pre_name,
            bos,
            eos,
            eot,
            add_bos,
        )
    }

    #[allow(clippy::too_many_arguments)]
    fn new(
        tokens: Vec<String>,
        types: Vec<i64>,
        merges_text: &[String],
        pre_name: &str,
        bos: Option<u32>,
        eos: Option<u32>,
        eot: Option<u32>,
        add_bos: bool,
    ) -> Result<Self, EngineError> {
        let to_char = byte_to_char();
        let mut from_char = HashMap::new();
        for (b, c) in to_char.iter().enumerate() {
            from_char.insert(*c, b as u8);
        }
        let ids: HashMap<String, u32> = tokens
            .iter()
            .enumerate()
            .map(|(i, t)| (t.clone(), i as u32))
            .collect();
        let mut is_special = vec![false; tokens.len()];
        let mut specials = Vec::new();
        let mut token_bytes = Vec::with_capacity(tokens.len());
        for (i, t) in tokens.iter().enumerate() {
            let ty = types.get(i).copied().unwrap_or(1);
            let special = ty == TOKEN_TYPE_CONTROL || ty == TOKEN_TYPE_USER_DEFINED;
            if special {
                is_special[i] = true;
                if !t.is_empty() {
                    specials.push((t.clone(), i as u32));
                }
                token_bytes.push(t.as_bytes().to_vec());
            } else {
                // Byte-level characters back to bytes; anything outside the
                // map stands for itself.
                let mut bytes = Vec::with_capacity(t.len());
                for c in t.chars() {
                    match from_char.get(&c) {
                        Some(b) => bytes.push(*b),
                        None => {
                            let mut buf = [0u8; 4];
                            bytes.extend_from_slice(c.encode_utf8(&mut buf).as_bytes());
                        }
                    }
                }
                token_bytes.push(bytes);
            }
        }
        specials.sort_by(|a, b| b.0.len().cmp(&a.0.len()).then(a.1.cmp(&b.1)));

        let mut merges = HashMap::with_capacity(merges_text.len());
        for (rank, m) in merges_text.iter().enumerate() {
            let Some((a, b)) = m.split_once(' ') else {
                return Err(EngineError::Metadata(format!("merge `{m}` has no space")));
            };
            let (Some(&ia), Some(&ib), Some(&iab)) =
                (ids.get(a), ids.get(b), ids.get(&format!("{a}{b}")))
            else {
                continue; // A merge whose parts are not tokens can never apply.
            };
            merges.entry((ia, ib)).or_insert((rank as u32, iab));
        }

        let mut byte_ids = [u32::MAX; 256];
        for (b, c) in to_char.iter().enumerate() {
            if let Some(&id) = ids.get(&c.to_string()) {
                byte_ids[b] = id;
            }
        }

        let patterns: Vec<&str> = match pre_name {
            // Digits one by one, then GPT-2's rules.
            "smollm" | "starcoder" | "refact" | "command-r" | "codeshell" | "exaone"
            | "minerva" => vec![r"\p{N}", GPT2_PATTERN],
            "llama3" | "llama-v3" | "llama-bpe" | "falcon3" | "smaug-bpe" => vec![LLAMA3_PATTERN],
            _ => vec![GPT2_PATTERN],
        };
        let pre = patterns
            .iter()
            .map(|p| {
                Regex::new(p).map_err(|e| EngineError::Metadata(format!("pre-tokenizer: {e}")))
            })
            .collect::<Result<Vec<_>, _>>()?;

        let mut end_of_generation: Vec<u32> = eos.into_iter().chain(eot).collect();
        // Chat models end a turn with these even when EOS is another token.
        for name in [
            "<|im_end|>",
            "<|eot_id|>",
            "<|end|>",
            "<end_of_turn>",
            "<|endoftext|>",
        ] {
            if let Some(&id) = ids.get(name) {
                if is_special[id as usize] && !end_of_generation.contains(&id) {
                    end_of_generation.push(id);
                }
            }
        }

        Ok(Tokenizer {
            tokens,
            token_bytes,
            ids,
            merges,
            specials,
            is_special,
            pre,
            byte_ids,
            bos,
            eos,
            end_of_generation,
            add_bos,
            pre_name: pre_name.to_string(),
        })
    }

    pub fn vocab_size(&self) -> usize {
        self.tokens.len()
    }

    pub fn token_id(&self, text: &str) -> Option<u32> {
        self.ids.get(text).copied()
    }

    pub fn is_end_of_generation(&self, id: u32) -> bool {
        self.end_of_generation.contains(&id)
    }

    pub fn special_tokens(&self) -> Vec<(String, u32)> {
        let mut s = self.specials.clone();
        s.sort_by_key(|(_, id)| *id);
        s
    }

    /// The token's text as stored in the vocabulary (for control tokens, the
    /// marker itself).
    pub fn token_text(&self, id: u32) -> String {
        self.token_bytes
            .get(id as usize)
            .map(|b| String::from_utf8_lossy(b).into_owned())
            .unwrap_or_default()
    }

    /// Tokenizes text, parsing special tokens written in it. `with_bos` adds
    /// BOS when the model's metadata asks for it.
    pub fn encode(&self, text: &str, with_bos: bool) -> Vec<u32> {
        let mut out = Vec::new();
        if with_bos && self.add_bos {
            if let Some(b) = self.bos {
                out.push(b);
            }
        }
        let mut plain_start = 0;
        let mut i = 0;
        let bytes = text.as_bytes();
        while i < bytes.len() {
            let hit = self
                .specials
                .iter()
                .find(|(s, _)| bytes[i..].starts_with(s.as_bytes()));
            match hit {
                Some((s, id)) => {
                    self.encode_plain(&text[plain_start..i], &mut out);
                    out.push(*id);
                    i += s.len();
                    plain_start = i;
                }
                None => i += 1,
            }
        }
        self.encode_plain(&text[plain_start..], &mut out);
        out
    }

    fn encode_plain(&self, text: &str, out: &mut Vec<u32>) {
        if text.is_empty() {
            return;
        }
        let mut pieces = vec![text];
        for re in &self.pre {
            let mut next = Vec::with_capacity(pieces.len() * 2);
            for piece in pieces {
                split_keeping_gaps(re, piece, &mut next);
            }
            pieces = next;
        }
        for piece in pieces {
            self.encode_piece(piece, out);
        }
    }

    /// BPE on one pre-tokenized piece: merge the lowest-ranked adjacent pair
    /// until no pair has a merge.
    fn encode_piece(&self, piece: &str, out: &mut Vec<u32>) {
        let mut symbols: Vec<u32> = piece.bytes().map(|b| self.byte_ids[b as usize]).collect();
        if symbols.contains(&u32::MAX) {
            // A vocabulary without some byte: drop what cannot be encoded.
            symbols.retain(|&s| s != u32::MAX);
        }
        loop {
            let mut best: Option<(u32, usize, u32)> = None;
            for i in 0..symbols.len().saturating_sub(1) {
                if let Some(&(rank, merged)) = self.merges.get(&(symbols[i], symbols[i + 1])) {
                    if best.is_none_or(|(r, _, _)| rank < r) {
                        best = Some((rank, i, merged));
                    }
                }
            }
            let Some((_, i, merged)) = best else { break };
            symbols[i] = merged;
            symbols.remove(i + 1);
        }
        out.extend_from_slice(&symbols);
    }

    /// Bytes of a token sequence (special tokens as their markers).
    pub fn decode_bytes(&self, ids: &[u32]) -> Vec<u8> {
        let mut out = Vec::new();
        for &id in ids {
            if let Some(b) = self.token_bytes.get(id as usize) {
                out.extend_from_slice(b);
            }
        }
        out
    }

    pub fn decode(&self, ids: &[u32]) -> String {
        String::from_utf8_lossy(&self.decode_bytes(ids)).into_owned()
    }

    pub fn is_special(&self, id: u32) -> bool {
        self.is_special.get(id as usize).copied().unwrap_or(false)
    }
}

/// Splits `text` into the regex's matches and the gaps between them, in order.
fn split_keeping_gaps<'t>(re: &Regex, text: &'t str, out: &mut Vec<&'t str>) {
    let mut last = 0;
    for m in re.find_iter(text) {
        let Ok(m) = m else {
            // Backtracking limit: keep the rest whole rather than lose it.
            break;
        };
        if m.start() > last {
            out.push(&text[last..m.start()]);
        }
        if m.end() > m.start() {
            out.push(m.as_str());
        }
        last = m.end();
    }
    if last < text.len() {
        out.push(&text[last..]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn toy() -> Tokenizer {
        let mut tokens: Vec<String> = vec!["<s>".into()];
        let map = byte_to_char();
        for c in map.iter() {
            tokens.push(c.to_string());
        }
        for t in ["ab", "abc", "Ġa", "Ġab"] {
            tokens.push(t.into());
        }
        let mut types = vec![1i64; tokens.len()];
        types[0] = TOKEN_TYPE_CONTROL;
        let merges: Vec<String> = ["Ġ a", "a b", "ab c", "Ġa b"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        Tokenizer::new(
            tokens,
            types,
            &merges,
            "smollm",
            Some(0),
            Some(0),
            None,
            false,
        )
        .expect("toy tokenizer")
    }

    #[test]
    fn merges_apply_in_rank_order_and_round_trip() {
        let t = toy();
        let ids = t.encode("abc ab", false);
        let texts: Vec<String> = ids.iter().map(|&i| t.tokens[i as usize].clone()).collect();
        assert_eq!(texts, vec!["abc", "Ġab"]);
        assert_eq!(t.decode(&ids), "abc ab");
    }

    #[test]
    fn special_tokens_are_parsed_and_digits_split() {
        let t = toy();
        let ids = t.encode("<s>12", false);
        assert_eq!(ids[0], 0);
        assert_eq!(ids.len(), 3);
        assert_eq!(t.decode(&ids), "<s>12");
    }

    #[test]
    fn arbitrary_bytes_round_trip() {
        let t = toy();
        let text = "héllo\n\n  wörld 😀 \t";
        assert_eq!(t.decode(&t.encode(text, false)), text);
    }
}
