//! Byte-level BPE tokenizer built from a GGUF file's own vocabulary.
//!
//! It reproduces llama.cpp's tokenization: special tokens written in the text
//! are recognised first, the rest is cut into pieces by the pre-tokenizer that
//! `tokenizer.ggml.pre` names, and each piece is encoded by applying merges in
//! rank order to its bytes (mapped to printable characters, as GPT-2 does).
//!
//! Every step is linear or n·log n in the text's length, whatever the text:
//! special tokens are found with one Aho-Corasick pass, the pre-tokenizer
//! runs on a finite automaton (the one look-ahead of the reference patterns,
//! `\s+(?!\S)`, is applied by hand), and merging uses a priority queue
//! instead of rescanning the piece after every merge.

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};
use std::path::Path;

use aho_corasick::{AhoCorasick, MatchKind};
use regex::Regex;

use crate::error::EngineError;
use crate::gguf::GgufFile;

/// GGUF token types that are matched verbatim in text instead of BPE-encoded.
const TOKEN_TYPE_CONTROL: i64 = 3;
const TOKEN_TYPE_USER_DEFINED: i64 = 4;

/// GPT-2's pre-tokenizer: contractions, words, numbers, punctuation runs and
/// whitespace (a single space sticks to the following piece). The reference
/// pattern has `\s+(?!\S)` before the final `\s+`; see [`Splitter`].
const GPT2_PATTERN: &str = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+";
/// Llama 3 style: case-insensitive contractions, 1–3 digit numbers (the
/// reference has `\s+(?!\S)` before the final `\s+`, too).
const LLAMA3_PATTERN: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+";
/// Digits one by one.
const DIGIT_PATTERN: &str = r"\p{N}";

/// One pre-tokenizer pass: a regex whose matches and gaps become pieces.
///
/// The reference patterns end in `\s+(?!\S)|\s+`: a whitespace run followed by
/// more text gives up its last character, which then starts the next piece
/// (" word" keeps its space). A finite automaton cannot look ahead, so the
/// pattern here ends in `\s+` alone and a whitespace-only match is shortened
/// by its last character when (1) text follows it, (2) it has two characters
/// or more, and (3) it did not come from an earlier branch that also matches
/// whitespace only (Llama 3's `\s*[\r\n]+`, recognised by its line break).
struct Splitter {
    re: Regex,
    /// Whether the pattern ends in the emulated `\s+(?!\S)|\s+`.
    lookahead: bool,
    /// Whether an earlier branch matches whitespace runs with line breaks.
    newline_branch: bool,
}

impl Splitter {
    fn new(pattern: &str, lookahead: bool, newline_branch: bool) -> Result<Self, EngineError> {
        let re = Regex::new(pattern)
            .map_err(|e| EngineError::Metadata(format!("pre-tokenizer: {e}")))?;
        Ok(Splitter {
            re,
            lookahead,
            newline_branch,
        })
    }

    /// Splits `text` into the matches and the gaps between them, in order.
    fn split<'t>(&self, text: &'t str, out: &mut Vec<&'t str>) {
        let mut last = 0; // end of what has been pushed
        let mut at = 0; // where the next search starts
        while at < text.len() {
            let Some(m) = self.re.find_at(text, at) else {
                break;
            };
            let mut end = m.end();
            if end == m.start() {
                // An empty match (none of the patterns has one): step over
                // one character and leave it to the gap.
                at = text[at..]
                    .chars()
                    .next()
                    .map_or(text.len(), |c| at + c.len_utf8());
                continue;
            }
            if self.lookahead && end < text.len() {
                let piece = m.as_str();
                let blank = piece.chars().all(char::is_whitespace);
                let from_newline_branch = self.newline_branch && piece.contains(['\r', '\n']);
                if blank && !from_newline_branch {
                    if let Some(c) = piece.chars().next_back() {
                        if c.len_utf8() < piece.len() {
                            end -= c.len_utf8();
                        }
                    }
                }
            }
            if m.start() > last {
                out.push(&text[last..m.start()]);
            }
            out.push(&text[m.start()..end]);
            last = end;
            at = end;
        }
        if last < text.len() {
            out.push(&text[last..]);
        }
    }
}

/// Bits of a merge-tree key that hold the position; the rank takes the rest.
const POS_BITS: u32 = 40;
const POS_MASK: u64 = (1 << POS_BITS) - 1;
/// Pieces are merged in parts of less than this many bytes.
const MAX_PIECE_BYTES: usize = 1 << (POS_BITS - 1);
/// Ranks must fit the rest of a merge-tree key.
const MAX_MERGES: usize = 1 << (64 - POS_BITS);

/// (left, right) → (rank, merged id), looked up once per candidate pair.
type PairMap = HashMap<(u32, u32), (u32, u32), BuildHasherDefault<PairHasher>>;

/// A multiplicative hash for pairs of token ids: the keys are not chosen by
/// an adversary (they come from the model file), and merging calls this
/// millions of times on long inputs.
#[derive(Default)]
struct PairHasher(u64);

impl Hasher for PairHasher {
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.write_u8(b);
        }
    }

    fn write_u8(&mut self, b: u8) {
        self.write_u64(b as u64);
    }

    fn write_u32(&mut self, x: u32) {
        self.write_u64(x as u64);
    }

    fn write_u64(&mut self, x: u64) {
        self.0 = (self.0.rotate_left(29) ^ x).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    }

    fn finish(&self) -> u64 {
        self.0 ^ (self.0 >> 32)
    }
}

pub struct Tokenizer {
    /// Token text as stored in the GGUF (byte-level characters for BPE tokens).
    tokens: Vec<String>,
    /// Raw bytes each token stands for.
    token_bytes: Vec<Vec<u8>>,
    ids: HashMap<String, u32>,
    /// (left, right) → (rank, merged id).
    merges: PairMap,
    /// Special tokens matched in text, longest first.
    specials: Vec<(String, u32)>,
    /// Finds the leftmost-longest special token; pattern i is `specials[i]`.
    special_finder: Option<AhoCorasick>,
    is_special: Vec<bool>,
    /// Passes applied one after the other; each splits the pieces of the last.
    pre: Vec<Splitter>,
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
    /// Reads only the tokenizer of a GGUF model (no weights): the entry point
    /// for tokenizing without an engine, e.g. to time the tokenizer alone.
    pub fn load(path: &Path) -> Result<Self, EngineError> {
        let gguf = GgufFile::open(path)?;
        Self::from_gguf(&gguf).map_err(|e| e.in_file(path))
    }

    pub fn from_gguf(gguf: &GgufFile) -> Result<Self, EngineError> {
        let model = gguf.string("tokenizer.ggml.model")?;
        if model != "gpt2" {
            return Err(EngineError::Metadata(format!(
                "tokenizer model `{model}` is not supported (qstar reads byte-level BPE, `gpt2`)"
            )));
        }
        let tokens = gguf.string_array("tokenizer.ggml.tokens")?;
        if tokens.is_empty() || tokens.len() > u32::MAX as usize {
            return Err(EngineError::Metadata(format!(
                "the vocabulary has {} tokens",
                tokens.len()
            )));
        }
        let types = if gguf.has("tokenizer.ggml.token_type") {
            let types = gguf.int_array("tokenizer.ggml.token_type")?;
            if types.len() != tokens.len() {
                return Err(EngineError::Metadata(format!(
                    "`tokenizer.ggml.token_type` has {} entries for {} tokens",
                    types.len(),
                    tokens.len()
                )));
            }
            types
        } else {
            vec![1; tokens.len()]
        };
        let merges_text = gguf.string_array("tokenizer.ggml.merges")?;
        let pre_name = if gguf.has("tokenizer.ggml.pre") {
            gguf.string("tokenizer.ggml.pre")?
        } else {
            "default".to_string()
        };
        // Special-token ids index the vocabulary: each must be inside it.
        let optional_id = |key: &str| -> Result<Option<u32>, EngineError> {
            if !gguf.has(key) {
                return Ok(None);
            }
            let id = gguf.uint(key)?;
            if id >= tokens.len() as u64 {
                return Err(EngineError::Metadata(format!(
                    "`{key}` is {id}, outside the vocabulary of {} tokens",
                    tokens.len()
                )));
            }
            Ok(Some(id as u32))
        };
        let bos = optional_id("tokenizer.ggml.bos_token_id")?;
        let eos = optional_id("tokenizer.ggml.eos_token_id")?;
        let eot = optional_id("tokenizer.ggml.eot_token_id")?;
        for key in [
            "tokenizer.ggml.unknown_token_id",
            "tokenizer.ggml.padding_token_id",
            "tokenizer.ggml.seperator_token_id",
            "tokenizer.ggml.eom_token_id",
        ] {
            optional_id(key)?;
        }
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
        // The same text twice: the lower id wins, as it did when searched in order.
        specials.dedup_by(|later, earlier| later.0 == earlier.0);
        let special_finder = if specials.is_empty() {
            None
        } else {
            Some(
                AhoCorasick::builder()
                    .match_kind(MatchKind::LeftmostLongest)
                    .build(specials.iter().map(|(s, _)| s.as_str()))
                    .map_err(|e| EngineError::Metadata(format!("special tokens: {e}")))?,
            )
        };

        if merges_text.len() >= MAX_MERGES {
            return Err(EngineError::Metadata(format!(
                "{} merges (at most {MAX_MERGES} supported)",
                merges_text.len()
            )));
        }
        let mut merges = PairMap::with_capacity_and_hasher(merges_text.len(), Default::default());
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

        let pre = match pre_name {
            // Digits one by one, then GPT-2's rules.
            "smollm" | "starcoder" | "refact" | "command-r" | "codeshell" | "exaone"
            | "minerva" => vec![
                Splitter::new(DIGIT_PATTERN, false, false)?,
                Splitter::new(GPT2_PATTERN, true, false)?,
            ],
            "llama3" | "llama-v3" | "llama-bpe" | "falcon3" | "smaug-bpe" => {
                vec![Splitter::new(LLAMA3_PATTERN, true, true)?]
            }
            _ => vec![Splitter::new(GPT2_PATTERN, true, false)?],
        };

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
            special_finder,
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
        if let Some(finder) = &self.special_finder {
            for m in finder.find_iter(text) {
                self.encode_plain(&text[plain_start..m.start()], &mut out);
                out.push(self.specials[m.pattern().as_usize()].1);
                plain_start = m.end();
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
        for splitter in &self.pre {
            let mut next = Vec::with_capacity(pieces.len() * 2);
            for piece in pieces {
                splitter.split(piece, &mut next);
            }
            pieces = next;
        }
        for piece in pieces {
            self.encode_piece(piece, out);
        }
    }

    /// BPE on one pre-tokenized piece: merge the lowest-ranked adjacent pair
    /// (the leftmost of equals) until no pair has a merge.
    ///
    /// The symbols form a linked list; a tournament tree over their positions
    /// holds, for each live symbol, the rank of the pair it starts, so the
    /// next merge is the tree's root and a merge updates three leaves. That
    /// is O(n log n) for a piece of n bytes, and merges that proceed left to
    /// right (a long run of one character) touch neighbouring leaves.
    fn encode_piece(&self, piece: &str, out: &mut Vec<u32>) {
        if piece.len() >= MAX_PIECE_BYTES {
            // Positions must fit the tree's keys: split a piece of a
            // terabyte (which no memory holds anyway) at a character.
            let mut cut = MAX_PIECE_BYTES / 2;
            while !piece.is_char_boundary(cut) {
                cut -= 1;
            }
            self.encode_piece(&piece[..cut], out);
            self.encode_piece(&piece[cut..], out);
            return;
        }
        let mut sym: Vec<u32> = piece
            .bytes()
            .map(|b| self.byte_ids[b as usize])
            // A vocabulary without some byte: drop what cannot be encoded.
            .filter(|&s| s != u32::MAX)
            .collect();
        let n = sym.len();
        if n < 2 {
            out.extend_from_slice(&sym);
            return;
        }
        const NONE: usize = usize::MAX;
        const EMPTY: u64 = u64::MAX;
        let mut prev: Vec<usize> = (0..n).map(|i| i.wrapping_sub(1)).collect();
        let mut next: Vec<usize> = (1..=n).map(|i| if i == n { NONE } else { i }).collect();
        // Key of the pair starting at i: rank, then position (leftmost wins).
        let key = |sym: &[u32], next: &[usize], i: usize| -> u64 {
            match next[i] {
                NONE => EMPTY,
                j => self
                    .merges
                    .get(&(sym[i], sym[j]))
                    .map_or(EMPTY, |&(rank, _)| (rank as u64) << POS_BITS | i as u64),
            }
        };
        let leaves = n.next_power_of_two();
        let mut tree = vec![EMPTY; 2 * leaves];
        for i in 0..n {
            tree[leaves + i] = key(&sym, &next, i);
        }
        for node in (1..leaves).rev() {
            tree[node] = tree[2 * node].min(tree[2 * node + 1]);
        }
        let set = |tree: &mut [u64], i: usize, k: u64| {
            let mut node = leaves + i;
            tree[node] = k;
            while node > 1 {
                node /= 2;
                let m = tree[2 * node].min(tree[2 * node + 1]);
                if tree[node] == m {
                    break;
                }
                tree[node] = m;
            }
        };
        while tree[1] != EMPTY {
            let i = (tree[1] & POS_MASK) as usize;
            let j = next[i];
            let Some(&(_, merged)) = self.merges.get(&(sym[i], sym[j])) else {
                break; // unreachable: the tree only holds pairs that merge
            };
            sym[i] = merged;
            next[i] = next[j];
            next[j] = NONE;
            if next[i] != NONE {
                prev[next[i]] = i;
            }
            set(&mut tree, j, EMPTY);
            set(&mut tree, i, key(&sym, &next, i));
            if prev[i] != NONE {
                set(&mut tree, prev[i], key(&sym, &next, prev[i]));
            }
        }
        let mut i = 0;
        while i != NONE {
            out.push(sym[i]);
            i = next[i];
        }
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

    /// The tokenizer as it was first written, kept as the reference the fast
    /// one must agree with: the original backtracking patterns (with their
    /// look-ahead), special tokens searched position by position, and BPE
    /// that rescans the piece after every merge.
    mod reference {
        use super::super::Tokenizer;

        const GPT2: &str =
            r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+";
        const LLAMA3: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

        fn patterns(pre_name: &str) -> Vec<fancy_regex::Regex> {
            let p: Vec<&str> = match pre_name {
                "smollm" => vec![r"\p{N}", GPT2],
                "llama3" => vec![LLAMA3],
                _ => vec![GPT2],
            };
            p.iter()
                .map(|p| fancy_regex::Regex::new(p).expect("reference pattern"))
                .collect()
        }

        fn split<'t>(re: &fancy_regex::Regex, text: &'t str, out: &mut Vec<&'t str>) {
            let mut last = 0;
            for m in re.find_iter(text) {
                let m = m.expect("short reference texts stay within the backtrack limit");
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

        fn piece(t: &Tokenizer, piece: &str, out: &mut Vec<u32>) {
            let mut symbols: Vec<u32> = piece
                .bytes()
                .map(|b| t.byte_ids[b as usize])
                .filter(|&s| s != u32::MAX)
                .collect();
            loop {
                let mut best: Option<(u32, usize, u32)> = None;
                for i in 0..symbols.len().saturating_sub(1) {
                    if let Some(&(rank, merged)) = t.merges.get(&(symbols[i], symbols[i + 1])) {
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

        fn plain(t: &Tokenizer, res: &[fancy_regex::Regex], text: &str, out: &mut Vec<u32>) {
            if text.is_empty() {
                return;
            }
            let mut pieces = vec![text];
            for re in res {
                let mut next = Vec::new();
                for p in pieces {
                    split(re, p, &mut next);
                }
                pieces = next;
            }
            for p in pieces {
                piece(t, p, out);
            }
        }

        pub fn encode(t: &Tokenizer, pre_name: &str, text: &str) -> Vec<u32> {
            let res = patterns(pre_name);
            let mut out = Vec::new();
            let bytes = text.as_bytes();
            let (mut plain_start, mut i) = (0, 0);
            while i < bytes.len() {
                match t
                    .specials
                    .iter()
                    .find(|(s, _)| bytes[i..].starts_with(s.as_bytes()))
                {
                    Some((s, id)) => {
                        plain(t, &res, &text[plain_start..i], &mut out);
                        out.push(*id);
                        i += s.len();
                        plain_start = i;
                    }
                    None => i += 1,
                }
            }
            plain(t, &res, &text[plain_start..], &mut out);
            out
        }
    }

    /// A deterministic stream of awkward texts: whitespace runs of every
    /// kind, contractions in both cases, digits, letters of several scripts,
    /// punctuation, special-token markers and their fragments.
    fn awkward_texts(seed: u64, count: usize, max_len: usize) -> Vec<String> {
        const PARTS: &[&str] = &[
            " ",
            "  ",
            "   ",
            "\t",
            "\n",
            "\r\n",
            "\n\n",
            " \n ",
            "\u{3000}",
            "\u{a0}",
            "'s",
            "'S",
            "'ll",
            "'LL",
            "'ve",
            "'d",
            "'",
            "a",
            "ab",
            "abc",
            "Hello",
            "wörld",
            "ſ",
            "Straße",
            "日本語",
            "ελληνικά",
            "1",
            "12",
            "1234",
            "١٢",
            "½",
            "Ⅻ",
            "!",
            "?!",
            ".",
            "...",
            "(",
            ")",
            "$",
            "😀",
            "e\u{301}",
            "<",
            "<|",
            "<|im_end|>",
            "<|im_start|>",
            "<|endoftext|>",
            "<s>",
            "|>",
            "\u{0}",
            "-",
            "_",
            "\\",
        ];
        let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
        let mut next = move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        (0..count)
            .map(|_| {
                let len = (next() % max_len as u64) as usize + 1;
                (0..len)
                    .map(|_| PARTS[(next() % PARTS.len() as u64) as usize])
                    .collect()
            })
            .collect()
    }

    #[test]
    fn toy_tokenizer_agrees_with_the_reference() {
        let t = toy();
        for text in awkward_texts(1, 2000, 12) {
            assert_eq!(
                t.encode(&text, false),
                reference::encode(&t, "smollm", &text),
                "{text:?}"
            );
        }
    }

    /// The real vocabulary under every pre-tokenizer qstar implements: the
    /// fast path gives the reference's ids on thousands of short texts.
    #[test]
    fn real_vocabulary_agrees_with_the_reference() {
        let path = crate::fetch::default_model_path();
        let gguf = GgufFile::open(&path).expect("the default model (run `qstar model fetch`)");
        let base = Tokenizer::from_gguf(&gguf).expect("tokenizer");
        assert_eq!(base.pre_name, "smollm");
        for pre in ["smollm", "llama3", "gpt2"] {
            let tokens = gguf.string_array("tokenizer.ggml.tokens").expect("tokens");
            let types = gguf.int_array("tokenizer.ggml.token_type").expect("types");
            let merges = gguf.string_array("tokenizer.ggml.merges").expect("merges");
            let t = Tokenizer::new(tokens, types, &merges, pre, None, None, None, false)
                .expect("tokenizer");
            for text in awkward_texts(pre.len() as u64, 1500, 16) {
                assert_eq!(
                    t.encode(&text, false),
                    reference::encode(&t, pre, &text),
                    "{pre}: {text:?}"
                );
            }
        }
    }

    #[test]
    fn whitespace_before_text_gives_up_its_last_character() {
        let t = toy();
        fn pieces<'t>(t: &Tokenizer, s: &'t str) -> Vec<&'t str> {
            let mut out = Vec::new();
            t.pre[1].split(s, &mut out);
            out
        }
        assert_eq!(pieces(&t, "a   b"), vec!["a", "  ", " b"]);
        assert_eq!(pieces(&t, "a \tb"), vec!["a", " ", "\t", "b"]);
        assert_eq!(pieces(&t, "a   "), vec!["a", "   "]);
        assert_eq!(
            pieces(&t, "\u{3000}\u{3000}x"),
            vec!["\u{3000}", "\u{3000}", "x"]
        );
    }
}
