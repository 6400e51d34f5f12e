//! Inherently serial problems from "Chain of Thought Empowers Transformers to
//! Solve Inherently Serial Problems" (Li et al. 2024): modular addition,
//! permutation composition, iterated squaring and the circuit value problem.
//!
//! Each generator is seeded and takes a size (the length of the serial
//! chain); each problem comes in a chain-of-thought format (the question asks
//! for the intermediate results, and a reference solution lists them) and a
//! direct format (answer only). Answers are checked exactly.

use serde::{Deserialize, Serialize};

use qstar_core::{mix, SplitMix};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SerialKind {
    /// Sum of `size` digits modulo 7.
    ModularAddition,
    /// Composition of `size` permutations of five elements.
    Permutation,
    /// r^(2^size) mod 97, by squaring `size` times.
    IteratedSquaring,
    /// Output of a circuit of `size` AND/OR/NOT gates over two inputs.
    Circuit,
}

pub const SERIAL_KINDS: [(&str, SerialKind); 4] = [
    ("modadd", SerialKind::ModularAddition),
    ("permutation", SerialKind::Permutation),
    ("squaring", SerialKind::IteratedSquaring),
    ("circuit", SerialKind::Circuit),
];

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SerialFormat {
    /// The question asks for every intermediate result.
    Cot,
    /// The question asks for the answer only.
    Direct,
}

/// One generated problem.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SerialProblem {
    pub question: String,
    pub answer: String,
    /// The intermediate results, one per line, then "The answer is …".
    pub solution: String,
    pub size: usize,
    pub format: SerialFormat,
}

const MODULUS_ADD: u64 = 7;
const MODULUS_SQUARE: u64 = 97;
const PERMUTED: usize = 5;

impl SerialKind {
    pub fn name(self) -> &'static str {
        SERIAL_KINDS
            .iter()
            .find(|(_, k)| *k == self)
            .map(|(n, _)| *n)
            .unwrap_or("serial")
    }

    pub fn parse(name: &str) -> Option<Self> {
        SERIAL_KINDS
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, k)| *k)
    }

    /// Problem number `index` of a seeded set.
    pub fn generate(
        self,
        size: usize,
        format: SerialFormat,
        seed: u64,
        index: u64,
    ) -> SerialProblem {
        let mut rng = SplitMix::new(mix(seed ^ mix(index ^ ((self as u64) << 40))));
        let size = size.max(1);
        let (task, steps, answer) = match self {
            SerialKind::ModularAddition => modular_addition(&mut rng, size),
            SerialKind::Permutation => permutation(&mut rng, size),
            SerialKind::IteratedSquaring => iterated_squaring(&mut rng, size),
            SerialKind::Circuit => circuit(&mut rng, size),
        };
        let ask = match format {
            SerialFormat::Cot => {
                "Work it out one step per line, writing each intermediate result, then finish with \"The answer is X\"."
            }
            SerialFormat::Direct => "Reply with only \"The answer is X\".",
        };
        let mut solution = steps.join("\n");
        solution.push_str(&format!("\nThe answer is {answer}."));
        SerialProblem {
            question: format!("{task}\n{ask}"),
            answer,
            solution,
            size,
            format,
        }
    }

    /// The answer a model gave, in the checker's canonical form.
    pub fn extract(self, text: &str) -> Option<String> {
        match self {
            SerialKind::Permutation => {
                let lower = text.to_ascii_lowercase();
                let line = match lower.rfind("answer is") {
                    Some(at) => text[at + "answer is".len()..].lines().next().unwrap_or(""),
                    None => text.trim_end().lines().last().unwrap_or(""),
                };
                let digits: Vec<String> = line
                    .chars()
                    .filter(|c| c.is_ascii_digit())
                    .map(String::from)
                    .collect();
                (digits.len() == PERMUTED).then(|| digits.join(" "))
            }
            _ => crate::numeric::extract_number(text).map(crate::numeric::format_number),
        }
    }
}

fn modular_addition(rng: &mut SplitMix, size: usize) -> (String, Vec<String>, String) {
    let terms: Vec<u64> = (0..size).map(|_| rng.below(MODULUS_ADD)).collect();
    let mut total = 0;
    let mut steps = Vec::new();
    for &t in &terms {
        let next = (total + t) % MODULUS_ADD;
        steps.push(format!("{total} + {t} = {next} (mod {MODULUS_ADD})"));
        total = next;
    }
    let list: Vec<String> = terms.iter().map(u64::to_string).collect();
    (
        format!(
            "Add these numbers modulo {MODULUS_ADD}, starting from 0: {}.",
            list.join(", ")
        ),
        steps,
        total.to_string(),
    )
}

fn random_permutation(rng: &mut SplitMix) -> [usize; PERMUTED] {
    let mut p = [0, 1, 2, 3, 4];
    for i in (1..PERMUTED).rev() {
        let j = rng.below(i as u64 + 1) as usize;
        p.swap(i, j);
    }
    p
}

fn show_permutation(p: &[usize; PERMUTED]) -> String {
    let parts: Vec<String> = p.iter().map(usize::to_string).collect();
    parts.join(" ")
}

fn permutation(rng: &mut SplitMix, size: usize) -> (String, Vec<String>, String) {
    let perms: Vec<[usize; PERMUTED]> = (0..size).map(|_| random_permutation(rng)).collect();
    let mut current = [0, 1, 2, 3, 4];
    let mut steps = Vec::new();
    for (k, p) in perms.iter().enumerate() {
        // Apply `p` after `current`: position i goes to p[current[i]].
        let mut next = [0; PERMUTED];
        for i in 0..PERMUTED {
            next[i] = p[current[i]];
        }
        current = next;
        steps.push(format!(
            "after permutation {}: {}",
            k + 1,
            show_permutation(&current)
        ));
    }
    let list: Vec<String> = perms
        .iter()
        .enumerate()
        .map(|(k, p)| format!("P{} = [{}]", k + 1, show_permutation(p)))
        .collect();
    (
        format!(
            "A permutation [a b c d e] sends 0 to a, 1 to b, and so on. Start from [0 1 2 3 4] and apply, in order: {}. Where does each of 0 1 2 3 4 end up?",
            list.join(", ")
        ),
        steps,
        show_permutation(&current),
    )
}

fn iterated_squaring(rng: &mut SplitMix, size: usize) -> (String, Vec<String>, String) {
    let start = 2 + rng.below(MODULUS_SQUARE - 3);
    let mut value = start;
    let mut steps = Vec::new();
    for _ in 0..size {
        let next = value * value % MODULUS_SQUARE;
        steps.push(format!("{value}^2 mod {MODULUS_SQUARE} = {next}"));
        value = next;
    }
    (
        format!(
            "Start from {start}. Square the number modulo {MODULUS_SQUARE}, {size} times in a row."
        ),
        steps,
        value.to_string(),
    )
}

fn circuit(rng: &mut SplitMix, size: usize) -> (String, Vec<String>, String) {
    let inputs = [rng.below(2) == 1, rng.below(2) == 1];
    let mut values: Vec<bool> = inputs.to_vec();
    let mut names = vec!["x0".to_string(), "x1".to_string()];
    let mut gates = Vec::new();
    let mut steps = Vec::new();
    for g in 0..size {
        let n = values.len() as u64;
        // The gate reads the newest wire, so the circuit is one serial chain.
        let a = values.len() - 1;
        let b = rng.below(n) as usize;
        let name = format!("g{}", g + 1);
        let (text, value) = match rng.below(3) {
            0 => (
                format!("{name} = AND({}, {})", names[a], names[b]),
                values[a] && values[b],
            ),
            1 => (
                format!("{name} = OR({}, {})", names[a], names[b]),
                values[a] || values[b],
            ),
            _ => (format!("{name} = NOT({})", names[a]), !values[a]),
        };
        gates.push(text);
        steps.push(format!("{name} = {}", u8::from(value)));
        values.push(value);
        names.push(name);
    }
    let last = names.last().cloned().unwrap_or_default();
    (
        format!(
            "A circuit has inputs x0 = {} and x1 = {} and the gates {}. What is the value of {last} (0 or 1)?",
            u8::from(inputs[0]),
            u8::from(inputs[1]),
            gates.join("; ")
        ),
        steps,
        u8::from(values.last().copied().unwrap_or(false)).to_string(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generators_are_seeded_and_their_solutions_check() {
        for (_, kind) in SERIAL_KINDS {
            for size in [1, 4, 9] {
                for i in 0..20 {
                    let p = kind.generate(size, SerialFormat::Cot, 3, i);
                    assert_eq!(p, kind.generate(size, SerialFormat::Cot, 3, i));
                    assert_eq!(p.solution.lines().count(), size + 1);
                    assert_eq!(
                        kind.extract(&p.solution).as_deref(),
                        Some(p.answer.as_str())
                    );
                }
            }
            let a = kind.generate(6, SerialFormat::Direct, 1, 0);
            let b = kind.generate(6, SerialFormat::Direct, 2, 0);
            let c = kind.generate(6, SerialFormat::Direct, 1, 1);
            assert!(a.question != b.question || a.question != c.question);
        }
    }

    #[test]
    fn answers_are_right() {
        let (_, _, a) = modular_addition(&mut SplitMix::new(0), 50);
        assert!(a.parse::<u64>().unwrap() < 7);
        // 3 squared twice mod 97: 9, 81.
        let mut value = 3u64;
        for _ in 0..2 {
            value = value * value % 97;
        }
        assert_eq!(value, 81);
        let p = SerialKind::Permutation.generate(1, SerialFormat::Direct, 0, 0);
        // One permutation composed with the identity is itself.
        assert!(p.question.contains(&format!("P1 = [{}]", p.answer)));
    }

    #[test]
    fn permutation_answers_need_five_digits() {
        let k = SerialKind::Permutation;
        assert_eq!(
            k.extract("The answer is 2 0 4 1 3.").as_deref(),
            Some("2 0 4 1 3")
        );
        assert_eq!(
            k.extract("The answer is [2, 0, 4, 1, 3]").as_deref(),
            Some("2 0 4 1 3")
        );
        assert_eq!(k.extract("The answer is 2 0 4"), None);
    }
}
