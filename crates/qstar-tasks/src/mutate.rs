//! A seeded mutation harness for the parsers of untrusted input: here the
//! JSONL readers, answer extraction and LaTeX normalization; the engine runs
//! its GGUF reader and chat templates through the same [`run_with`]. It
//! turns a few valid inputs into many broken ones (bit flips, cut and
//! repeated spans, spliced tokens that parsers care about, or for binary
//! formats lying lengths and counts) and runs every parser on each, so that a
//! panic, a hang or a runaway allocation shows up as a failing input that can
//! be kept as a regression test. Used by the test suites (a short run) and by
//! the `fuzz` examples (100,000 inputs per parser and more).

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::Path;
use std::time::{Duration, Instant};

use qstar_core::SplitMix;

use crate::{latex, numeric, read_pairs, read_problems, read_prompts, Task};

/// Pieces that the parsers give meaning to, spliced into inputs so that
/// mutations reach the interesting branches rather than only the JSON
/// syntax errors.
const TOKENS: &[&str] = &[
    "\\boxed{",
    "\\frac{",
    "\\dfrac",
    "\\sqrt{",
    "\\left(",
    "\\right)",
    "{",
    "}",
    "^{",
    "_",
    "$",
    "\\!",
    "\\pi",
    "####",
    "The answer is",
    "A: ",
    "\n\nHuman: ",
    "\n\nAssistant: ",
    "\"",
    "\\\"",
    "\\u00e9",
    "\\ud800",
    "1e308",
    "-0",
    "0.000",
    "1/0",
    "((((",
    "))))",
    "\\\\",
    ",",
    "\u{00e9}",
    "\u{1F600}",
    "\u{0}",
    "{\"prompt\":",
    "[",
    "]",
    "null",
    "\"role\":\"user\"",
];

/// What the harness runs an input through.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target {
    /// `read_pairs` and `read_prompts` on the input as a JSONL file.
    PreferenceJsonl,
    /// `read_problems` for GSM8K and MATH on the input as a JSONL file.
    ProblemJsonl,
    /// GSM8K and MATH answer extraction and equivalence on raw text.
    AnswerExtraction,
    /// LaTeX answer normalization, evaluation and comparison on raw text.
    Latex,
}

impl Target {
    pub const ALL: [Target; 4] = [
        Target::PreferenceJsonl,
        Target::ProblemJsonl,
        Target::AnswerExtraction,
        Target::Latex,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Target::PreferenceJsonl => "preference-jsonl",
            Target::ProblemJsonl => "problem-jsonl",
            Target::AnswerExtraction => "answer-extraction",
            Target::Latex => "latex",
        }
    }

    /// Valid inputs the mutations start from.
    pub fn seeds(self) -> Vec<String> {
        match self {
            Target::PreferenceJsonl => vec![
                "{\"chosen\": \"\\n\\nHuman: Hi there\\n\\nAssistant: Hello!\", \"rejected\": \"\\n\\nHuman: Hi there\\n\\nAssistant: Go away.\"}\n".into(),
                "{\"prompt\": [{\"role\": \"user\", \"content\": \"Name a colour.\"}], \"chosen\": [{\"role\": \"assistant\", \"content\": \"Blue.\"}], \"rejected\": [{\"role\": \"assistant\", \"content\": \"No.\"}]}\n".into(),
                "{\"prompt\": \"Say hi.\", \"chosen\": \"Hi!\", \"rejected\": \"...\"}\n{\"question\": \"Why?\"}\n".into(),
            ],
            Target::ProblemJsonl => vec![
                "{\"question\": \"What is 2 + 3?\", \"answer\": \"2 + 3 = <<2+3=5>>5\\n#### 5\"}\n".into(),
                "{\"problem\": \"Simplify $\\\\frac{2}{4}$.\", \"answer\": \"\\\\frac{1}{2}\", \"solution\": \"$\\\\boxed{\\\\frac12}$\"}\n".into(),
                "{\"question\": \"Q\", \"ground_truth\": \"so A: 12\"}\n".into(),
            ],
            Target::AnswerExtraction => vec![
                "First 3 * 4 = 12.\nThen 12 + 1 = 13.\n#### 13".into(),
                "So the answer is $\\boxed{\\left( 3, \\frac{\\pi}{2} \\right)}$.".into(),
                "The answer is 1,234.50 dollars".into(),
            ],
            Target::Latex => vec![
                "\\frac{\\sqrt{3}}{2}".into(),
                "\\left( 3, \\dfrac{\\pi}{2} \\right)".into(),
                "2^{10} - 1.5\\%".into(),
                "\\{1, 2\\} \\cup [3, 4)".into(),
            ],
        }
    }
}

/// Makes a broken variant of `seed`, at most `max_len` bytes long, splicing
/// in pieces the text parsers give meaning to.
pub fn mutate(seed: &[u8], rng: &mut SplitMix, max_len: usize) -> Vec<u8> {
    mutate_with(seed, rng, max_len, TOKENS)
}

/// [`mutate`] with the caller's own meaningful pieces (a template
/// language's tags, say) instead of the text parsers'.
pub fn mutate_with(seed: &[u8], rng: &mut SplitMix, max_len: usize, tokens: &[&str]) -> Vec<u8> {
    let mut out = seed.to_vec();
    let edits = 1 + rng.below(8);
    for _ in 0..edits {
        let len = out.len() as u64;
        let at = if len == 0 {
            0
        } else {
            rng.below(len + 1) as usize
        };
        match rng.below(7) {
            0 if !out.is_empty() => {
                let i = at.min(out.len() - 1);
                out[i] ^= 1 << rng.below(8);
            }
            1 if !out.is_empty() => {
                let end = (at + 1 + rng.below(16) as usize).min(out.len());
                out.drain(at.min(end)..end);
            }
            2 => {
                let token = tokens[rng.below(tokens.len() as u64) as usize];
                out.splice(at..at, token.bytes());
            }
            3 if !out.is_empty() => {
                // Repeat a span many times: the shape of worst cases.
                let start = at.min(out.len() - 1);
                let end = (start + 1 + rng.below(8) as usize).min(out.len());
                let span = out[start..end].to_vec();
                let times = 1 + rng.below(512) as usize;
                let repeated: Vec<u8> = span
                    .iter()
                    .copied()
                    .cycle()
                    .take(span.len() * times)
                    .collect();
                out.splice(start..start, repeated);
            }
            4 => out.insert(at, rng.below(256) as u8),
            5 => out.truncate(at),
            _ => {
                let token = tokens[rng.below(tokens.len() as u64) as usize];
                out.extend_from_slice(token.as_bytes());
            }
        }
    }
    out.truncate(max_len);
    out
}

/// Integers that binary readers must not trust: zero, one, the edges of
/// the signed and unsigned widths, and sizes just past a page or a gigabyte.
const INTEGERS: &[u64] = &[
    0,
    1,
    2,
    3,
    7,
    32,
    255,
    4096,
    65_535,
    1 << 30,
    (1 << 31) - 1,
    1 << 31,
    u32::MAX as u64,
    1 << 32,
    1 << 40,
    i64::MAX as u64,
    1 << 63,
    u64::MAX,
];

/// Makes a broken variant of a binary `seed` (at most `max_len` bytes): bit
/// flips, little-endian integers from [`INTEGERS`] written over 4 or 8 bytes
/// (where a format keeps its lengths, counts, types and offsets), cut,
/// dropped and repeated spans.
pub fn mutate_binary(seed: &[u8], rng: &mut SplitMix, max_len: usize) -> Vec<u8> {
    let mut out = seed.to_vec();
    let edits = 1 + rng.below(4);
    for _ in 0..edits {
        if out.is_empty() {
            out.push(rng.below(256) as u8);
            continue;
        }
        let at = rng.below(out.len() as u64) as usize;
        match rng.below(6) {
            0 => out[at] ^= 1 << rng.below(8),
            1 | 2 => {
                let value = INTEGERS[rng.below(INTEGERS.len() as u64) as usize];
                let width = if rng.below(2) == 0 { 4 } else { 8 };
                // Fields sit on 4-byte boundaries more often than not.
                let at = if rng.below(2) == 0 { at & !3 } else { at };
                let bytes = value.to_le_bytes();
                for (i, b) in bytes[..width].iter().enumerate() {
                    if let Some(slot) = out.get_mut(at + i) {
                        *slot = *b;
                    }
                }
            }
            3 => out.truncate(at),
            4 => {
                let end = (at + 1 + rng.below(64) as usize).min(out.len());
                out.drain(at..end);
            }
            _ => {
                let end = (at + 1 + rng.below(64) as usize).min(out.len());
                let span = out[at..end].to_vec();
                out.splice(at..at, span);
            }
        }
    }
    out.truncate(max_len);
    out
}

/// Runs one target's parsers on one input. `scratch` is a file the JSONL
/// readers read from.
pub fn run_one(target: Target, input: &[u8], scratch: &Path) -> std::io::Result<()> {
    match target {
        Target::PreferenceJsonl | Target::ProblemJsonl => {
            std::fs::write(scratch, input)?;
            if target == Target::PreferenceJsonl {
                for skip in [false, true] {
                    let _ = read_pairs(scratch, skip, None);
                    let _ = read_prompts(scratch, skip, Some(3));
                }
            } else {
                for task in [Task::Gsm8k, Task::Math] {
                    let _ = read_problems(scratch, task, None);
                }
            }
        }
        Target::AnswerExtraction => {
            let text = String::from_utf8_lossy(input);
            for task in [Task::Gsm8k, Task::Math] {
                if let Some(answer) = task.extract(&text) {
                    let _ = task.is_correct(&answer, "13");
                    let _ = task.is_correct(&answer, &answer);
                }
            }
            let _ = numeric::extract_number(&text);
            let _ = numeric::last_boxed(&text);
        }
        Target::Latex => {
            let text = String::from_utf8_lossy(input);
            let _ = latex::normalize_math_answer(&text);
            let _ = latex::evaluate(&text);
            let _ = latex::math_answers_equal(&text, "\\frac{1}{2}");
            let _ = latex::extract_math_answer(&text);
        }
    }
    Ok(())
}

/// One input that broke a parser.
#[derive(Debug, Clone)]
pub struct Failure {
    pub input: Vec<u8>,
    pub what: String,
}

/// What a run found.
#[derive(Debug, Clone)]
pub struct Report {
    pub inputs: usize,
    pub failures: Vec<Failure>,
    /// The slowest input's time: a hang would show here (a watchdog is the
    /// caller's, since a real hang never returns).
    pub slowest: Duration,
    pub total: Duration,
}

/// Runs `inputs` mutated inputs (at most `max_len` bytes) through `target`,
/// seeded by `seed`; a panic is caught and recorded with its input.
pub fn run(
    target: Target,
    inputs: usize,
    seed: u64,
    max_len: usize,
    scratch: &Path,
) -> std::io::Result<Report> {
    let seeds: Vec<Vec<u8>> = target.seeds().into_iter().map(String::into_bytes).collect();
    run_with(&seeds, inputs, seed, max_len, mutate, |input| {
        run_one(target, input, scratch)
    })
}

/// The harness for any parser: `inputs` variants of `seeds` made by
/// `mutator` (such as [`mutate`] or [`mutate_binary`]), each given to
/// `check`; a panic is caught and recorded with its input, an I/O error of
/// the harness itself (its scratch file) ends the run.
pub fn run_with(
    seeds: &[Vec<u8>],
    inputs: usize,
    seed: u64,
    max_len: usize,
    mut mutator: impl FnMut(&[u8], &mut SplitMix, usize) -> Vec<u8>,
    mut check: impl FnMut(&[u8]) -> std::io::Result<()>,
) -> std::io::Result<Report> {
    let mut rng = SplitMix::new(seed);
    let mut failures = Vec::new();
    let mut slowest = Duration::ZERO;
    let started = Instant::now();
    for i in 0..inputs {
        let input = match seeds.get(i % seeds.len().max(1)) {
            Some(base) => mutator(base, &mut rng, max_len),
            None => Vec::new(),
        };
        let t = Instant::now();
        let outcome = catch_unwind(AssertUnwindSafe(|| check(&input)));
        slowest = slowest.max(t.elapsed());
        match outcome {
            Ok(Ok(())) => {}
            Ok(Err(e)) => return Err(e),
            Err(panic) => {
                let what = panic
                    .downcast_ref::<String>()
                    .cloned()
                    .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
                    .unwrap_or_else(|| "a panic".into());
                failures.push(Failure { input, what });
            }
        }
    }
    Ok(Report {
        inputs,
        failures,
        slowest,
        total: started.elapsed(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mutations_are_seeded_and_bounded() {
        let seed = b"{\"question\": \"x\"}";
        let a: Vec<Vec<u8>> = {
            let mut rng = SplitMix::new(3);
            (0..50).map(|_| mutate(seed, &mut rng, 300)).collect()
        };
        let mut rng = SplitMix::new(3);
        for m in &a {
            assert_eq!(*m, mutate(seed, &mut rng, 300));
            assert!(m.len() <= 300);
        }
        assert!(a.iter().any(|m| m.as_slice() != seed));
    }

    #[test]
    fn binary_mutations_are_seeded_bounded_and_write_lying_integers() {
        let seed: Vec<u8> = (0..64u8).collect();
        let mut rng = SplitMix::new(5);
        let a: Vec<Vec<u8>> = (0..500)
            .map(|_| mutate_binary(&seed, &mut rng, 100))
            .collect();
        let mut rng = SplitMix::new(5);
        for m in &a {
            assert_eq!(*m, mutate_binary(&seed, &mut rng, 100));
            assert!(m.len() <= 100);
        }
        // Some variant carries u32::MAX where the seed had none.
        let lying = a.iter().any(|m| {
            m.windows(4)
                .any(|w| u32::from_le_bytes([w[0], w[1], w[2], w[3]]) == u32::MAX)
        });
        assert!(lying);
    }
}
