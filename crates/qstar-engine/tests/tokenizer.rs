//! The tokenizer on worst-case inputs: megabyte runs of one character,
//! random bytes and mixed text all tokenize (the time is measured by hand and
//! by the benchmark, never asserted here) into ids that decode back to the
//! input exactly.

mod common;

use qstar_engine::tokenizer::Tokenizer;

const MB: usize = 1 << 20;

fn tokenizer() -> Tokenizer {
    Tokenizer::load(&common::model_path()).expect("the default model's tokenizer")
}

fn random_text(len: usize, seed: u64) -> String {
    let mut state = seed | 1;
    let bytes: Vec<u8> = (0..len)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state >> 24) as u8
        })
        .collect();
    String::from_utf8_lossy(&bytes).into_owned()
}

fn check(t: &Tokenizer, name: &str, text: &str) -> Vec<u32> {
    let ids = t.encode(text, false);
    assert!(!ids.is_empty(), "{name}: no tokens");
    assert!(
        ids.iter().all(|&id| (id as usize) < t.vocab_size()),
        "{name}: id outside the vocabulary"
    );
    assert!(ids.len() <= text.len(), "{name}: more tokens than bytes");
    assert!(t.decode(&ids) == text, "{name}: decode(encode(x)) != x");
    ids
}

/// The text without the characters whose bytes the vocabulary cannot
/// spell (SmolLM2 lacks a few byte tokens; the tokenizer drops those bytes).
fn encodable(t: &Tokenizer, text: &str) -> String {
    let mut ok = std::collections::HashMap::new();
    text.chars()
        .filter(|&c| {
            *ok.entry(c).or_insert_with(|| {
                let s = c.to_string();
                t.decode(&t.encode(&s, false)) == s
            })
        })
        .collect()
}

#[test]
fn megabyte_inputs_round_trip() {
    let t = tokenizer();
    for c in ["a", " ", "\n", "\t", "1", "!", "é", "日", "<", "'"] {
        let text = c.repeat(MB / c.len());
        let ids = check(&t, &format!("{c:?} × {}", MB / c.len()), &text);
        if c == "1" {
            // SmolLM's pre-tokenizer splits digits one by one.
            assert_eq!(ids.len(), text.len());
        }
    }
    let random = random_text(MB, 7);
    let random = encodable(&t, &random);
    assert!(random.len() > MB, "most random characters are encodable");
    check(&t, "random bytes", &random);
    let mixed =
        "Hello, wörld! It's 2024; naïve café — 東京 😀\n\n\tcode(x) { return 'y'; }  <|im_end|> "
            .repeat(MB / 100);
    let ids = check(&t, "mixed text", &mixed);
    let end = t.token_id("<|im_end|>").expect("SmolLM2's end of turn");
    assert_eq!(
        ids.iter().filter(|&&id| id == end).count(),
        MB / 100,
        "every written special token is recognised"
    );
    check(
        &t,
        "special tokens only",
        &"<|im_start|><|im_end|>".repeat(MB / 22),
    );
}

/// A long input splits where a short one would: a run of one letter costs
/// the same tokens whether it is tokenized whole or after a space, and the
/// result is stable across sizes.
#[test]
fn long_runs_tokenize_like_their_parts() {
    let t = tokenizer();
    for n in [1usize, 2, 3, 17, 1000, MB] {
        let run = "a".repeat(n);
        let ids = t.encode(&run, false);
        assert_eq!(t.decode(&ids), run);
        let spaced = t.encode(&format!("{run} {run}"), false);
        assert!(spaced.starts_with(&ids), "n = {n}");
    }
}
