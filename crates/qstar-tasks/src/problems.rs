//! Questions with checkable answers, for test-time search: which task a file
//! holds, how to read it, how to find a model's final answer and whether it
//! is right.

use std::io::{BufRead, BufReader};
use std::path::Path;

use qstar_core::{mix, SplitMix};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::latex::{extract_math_answer, math_answers_equal, normalize_math_answer};
use crate::numeric::{extract_number, format_number, numbers_equal, reference_number};
use crate::preference::TaskError;
use crate::serial::{SerialKind, SERIAL_KINDS};

/// A task decides how answers are found and compared.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Task {
    /// Numeric final answers (GSM8K and the arithmetic generator).
    Gsm8k,
    /// LaTeX final answers (MATH, MATH-500).
    Math,
    Serial(SerialKind),
}

/// One question and its reference answer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Problem {
    /// Line number in the input (1-based), the key for resuming.
    pub line: usize,
    pub question: String,
    /// The reference answer in the task's canonical form.
    pub answer: String,
}

impl Task {
    /// `gsm8k`, `arithmetic` (same checker), `math`, `serial:<kind>`.
    pub fn parse(name: &str) -> Result<Task, String> {
        match name {
            "gsm8k" | "arithmetic" => Ok(Task::Gsm8k),
            "math" | "math500" => Ok(Task::Math),
            _ => {
                let kinds: Vec<&str> = SERIAL_KINDS.iter().map(|(n, _)| *n).collect();
                name.strip_prefix("serial:")
                    .and_then(SerialKind::parse)
                    .map(Task::Serial)
                    .ok_or_else(|| {
                        format!(
                            "unknown task {name:?}: use gsm8k, arithmetic, math or serial:<{}>",
                            kinds.join("|")
                        )
                    })
            }
        }
    }

    pub fn name(self) -> String {
        match self {
            Task::Gsm8k => "gsm8k".into(),
            Task::Math => "math".into(),
            Task::Serial(k) => format!("serial:{}", k.name()),
        }
    }

    /// The final answer in `text`, in a canonical form so that equal answers
    /// vote together; `None` when the text commits to no answer.
    pub fn extract(self, text: &str) -> Option<String> {
        match self {
            Task::Gsm8k => extract_number(text).map(format_number),
            Task::Math => extract_math_answer(text).map(|a| normalize_math_answer(&a)),
            Task::Serial(kind) => kind.extract(text),
        }
    }

    /// Whether an extracted answer equals the reference.
    pub fn is_correct(self, answer: &str, reference: &str) -> bool {
        match self {
            Task::Gsm8k => match (answer.parse::<f64>(), reference.parse::<f64>()) {
                (Ok(a), Ok(b)) => numbers_equal(a, b),
                _ => false,
            },
            Task::Math => math_answers_equal(answer, reference),
            Task::Serial(_) => answer.trim() == reference.trim(),
        }
    }

    /// The user's turn for `question`: the question and the instruction,
    /// as search, training and reward models all frame it.
    pub fn user_turn(self, question: &str) -> String {
        match self.instruction() {
            "" => question.to_string(),
            instruction => format!("{}\n\n{instruction}", question.trim_end()),
        }
    }

    /// What the prompt asks for besides the question, so that answers can
    /// be found.
    pub fn instruction(self) -> &'static str {
        match self {
            Task::Gsm8k => "Solve the problem step by step, one step per paragraph. End with \"The answer is N.\" where N is a number.",
            Task::Math => "Solve the problem step by step, one step per paragraph. Put the final answer in \\boxed{}.",
            // Serial questions say themselves how to answer.
            Task::Serial(_) => "",
        }
    }

    /// Reads the reference answer of one JSON row.
    fn reference(self, row: &Value) -> Result<String, String> {
        let field = |names: &[&str]| {
            names
                .iter()
                .find_map(|n| row.get(*n).and_then(Value::as_str))
                .ok_or_else(|| format!("missing string field {:?}", names.join("\" or \"")))
        };
        match self {
            Task::Gsm8k => {
                let text = field(&["answer", "ground_truth"])?;
                reference_number(text)
                    .map(format_number)
                    .ok_or_else(|| format!("no final number in the answer {text:?}"))
            }
            Task::Math => {
                let answer = field(&["answer"])?;
                Ok(answer.to_string())
            }
            Task::Serial(_) => Ok(field(&["answer"])?.trim().to_string()),
        }
    }
}

/// Reads a JSONL file of problems: GSM8K (`question` + `answer` ending in
/// "#### N", or `ground_truth` ending in "A: N"), MATH (`problem` +
/// `answer`), or generated rows (`question` + `answer`).
pub fn read_problems(
    path: &Path,
    task: Task,
    limit: Option<usize>,
) -> Result<Vec<Problem>, TaskError> {
    read_json_rows(path, limit, |row, line| problem_from_row(&row, task, line))
}

/// The rows of a JSONL file, each read by `row` from its JSON and its line
/// number (1-based): blank lines are passed over, at most `limit` rows are
/// read, and the first line that is not JSON or that `row` refuses is an
/// error naming the file and the line.
pub fn read_json_rows<T>(
    path: &Path,
    limit: Option<usize>,
    mut row: impl FnMut(Value, usize) -> Result<T, String>,
) -> Result<Vec<T>, TaskError> {
    let io = |source| TaskError::Io {
        path: path.to_path_buf(),
        source,
    };
    let file = std::fs::File::open(path).map_err(io)?;
    let mut rows = Vec::new();
    for (i, line) in BufReader::new(file).lines().enumerate() {
        if limit.is_some_and(|l| rows.len() >= l) {
            break;
        }
        let line = line.map_err(io)?;
        if line.trim().is_empty() {
            continue;
        }
        let bad = |message: String| TaskError::BadLine {
            path: path.to_path_buf(),
            line: i + 1,
            message,
        };
        let value: Value =
            serde_json::from_str(&line).map_err(|e| bad(format!("not JSON: {e}")))?;
        rows.push(row(value, i + 1).map_err(bad)?);
    }
    Ok(rows)
}

/// The problem of one JSON row of `task`, read as [`read_problems`] reads a
/// line; `line` is its key (1-based).
pub fn problem_from_row(row: &Value, task: Task, line: usize) -> Result<Problem, String> {
    let question = ["question", "problem"]
        .iter()
        .find_map(|n| row.get(*n).and_then(Value::as_str))
        .ok_or_else(|| "missing string field \"question\" (or \"problem\")".to_string())?;
    let answer = task.reference(row)?;
    Ok(Problem {
        line,
        question: question.to_string(),
        answer,
    })
}

/// How the worked answer of an addition is written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ArithmeticFormat {
    /// One line per partial sum: "29 + 29 = 58", "58 + 41 = 99".
    Steps,
    /// Each partial sum worked column by column, a scratchpad: the ones
    /// with their carry, then the rest, then the two put together
    /// ("58 + 41: 8 + 1 = 9; 5 + 4 = 9; so 99"). Each step is then an
    /// addition of small numbers, which a small model learns far more
    /// easily than a whole carry chain in one go.
    Columns,
    /// The answer alone.
    Direct,
}

/// Seeded additions in GSM8K's format ("What is 47 + 38?", "#### 85"):
/// `terms` numbers of `digits` digits each, worked as one line per partial
/// sum. Small models that fail GSM8K still have signal here, so search can
/// be measured.
pub fn arithmetic_problem(terms: usize, digits: u32, seed: u64, index: u64) -> (String, String) {
    arithmetic_problem_in(terms, digits, seed, index, ArithmeticFormat::Steps)
}

/// [`arithmetic_problem`] with the worked answer in `format`; the question
/// and the numbers depend only on the seed and the index, not the format.
pub fn arithmetic_problem_in(
    terms: usize,
    digits: u32,
    seed: u64,
    index: u64,
    format: ArithmeticFormat,
) -> (String, String) {
    let mut rng = SplitMix::new(mix(seed ^ mix(index ^ 0xadd)));
    let low = if digits <= 1 {
        1
    } else {
        10u64.pow(digits - 1)
    };
    let high = 10u64.pow(digits.max(1));
    let numbers: Vec<u64> = (0..terms.max(2))
        .map(|_| low + rng.below(high - low))
        .collect();
    let total: u64 = numbers.iter().sum();
    let shown: Vec<String> = numbers.iter().map(u64::to_string).collect();
    let mut partial = numbers[0];
    let mut steps = Vec::new();
    for &n in &numbers[1..] {
        match format {
            ArithmeticFormat::Steps => steps.push(format!("{partial} + {n} = {}", partial + n)),
            ArithmeticFormat::Columns => steps.push(column_addition(partial, n)),
            ArithmeticFormat::Direct => {}
        }
        partial += n;
    }
    steps.push(format!("#### {total}"));
    (format!("What is {}?", shown.join(" + ")), steps.join("\n"))
}

/// a + b worked by columns: "128 + 65: 8 + 5 = 13, carry 1; 12 + 6 + 1 =
/// 19; so 193". Numbers below ten need no columns.
fn column_addition(a: u64, b: u64) -> String {
    let sum = a + b;
    if a < 10 && b < 10 {
        return format!("{a} + {b} = {sum}");
    }
    let ones = a % 10 + b % 10;
    let carry = ones / 10;
    let (ha, hb) = (a / 10, b / 10);
    let high = ha + hb + carry;
    let ones_step = if carry > 0 {
        format!("{} + {} = {ones}, carry 1", a % 10, b % 10)
    } else {
        format!("{} + {} = {ones}", a % 10, b % 10)
    };
    let high_step = if carry > 0 {
        format!("{ha} + {hb} + 1 = {high}")
    } else {
        format!("{ha} + {hb} = {high}")
    };
    format!("{a} + {b}: {ones_step}; {high_step}; so {sum}")
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn column_additions_carry_and_add_up() {
        assert_eq!(
            column_addition(128, 65),
            "128 + 65: 8 + 5 = 13, carry 1; 12 + 6 + 1 = 19; so 193"
        );
        assert_eq!(
            column_addition(58, 41),
            "58 + 41: 8 + 1 = 9; 5 + 4 = 9; so 99"
        );
        assert_eq!(column_addition(3, 4), "3 + 4 = 7");
        // Every step's arithmetic is right, checked by evaluating it.
        for a in 1..300u64 {
            for b in [1u64, 9, 10, 19, 55, 99] {
                let text = column_addition(a, b);
                let so: u64 = text.rsplit(' ').next().unwrap().parse().unwrap();
                assert_eq!(so, a + b, "{text}");
                for step in text.split([':', ';', ',']) {
                    if let Some((lhs, rhs)) = step.split_once(" = ") {
                        let l: u64 = lhs
                            .split(" + ")
                            .map(|t| t.trim().parse::<u64>().unwrap())
                            .sum();
                        assert_eq!(l, rhs.trim().parse::<u64>().unwrap(), "{text}");
                    }
                }
            }
        }
    }

    #[test]
    fn the_format_changes_the_working_not_the_question() {
        for format in [ArithmeticFormat::Columns, ArithmeticFormat::Direct] {
            for i in 0..50 {
                let (q0, a0) = arithmetic_problem(3, 2, 9, i);
                let (q, a) = arithmetic_problem_in(3, 2, 9, i, format);
                assert_eq!(q, q0);
                assert_eq!(a.rsplit("#### ").next(), a0.rsplit("#### ").next());
            }
        }
        let (_, direct) = arithmetic_problem_in(2, 2, 1, 0, ArithmeticFormat::Direct);
        assert!(direct.starts_with("#### "), "{direct}");
    }

    #[test]
    fn task_names_round_trip() {
        for name in ["gsm8k", "math", "serial:modadd", "serial:circuit"] {
            assert_eq!(Task::parse(name).unwrap().name(), name);
        }
        assert!(Task::parse("serial:nope")
            .unwrap_err()
            .contains("serial:<modadd"));
    }

    #[test]
    fn reading_each_layout_and_naming_bad_lines() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("p.jsonl");
        let mut f = std::fs::File::create(&path).unwrap();
        writeln!(f, r#"{{"question":"q1","answer":"x\n#### 1,200"}}"#).unwrap();
        writeln!(f, r#"{{"question":"q2","ground_truth":"y\nA: 7"}}"#).unwrap();
        writeln!(f).unwrap();
        writeln!(f, r#"{{"question":"q3"}}"#).unwrap();
        drop(f);
        let err = read_problems(&path, Task::Gsm8k, None)
            .unwrap_err()
            .to_string();
        assert!(err.contains("p.jsonl:4") && err.contains("answer"), "{err}");
        let got = read_problems(&path, Task::Gsm8k, Some(2)).unwrap();
        assert_eq!(got[0].answer, "1200");
        assert_eq!((got[1].line, got[1].answer.as_str()), (2, "7"));
    }

    #[test]
    fn checking_answers_per_task() {
        let t = Task::Gsm8k;
        let a = t.extract("so 40 + 45 = 85. The answer is 85.").unwrap();
        assert!(t.is_correct(&a, "85"));
        assert!(!t.is_correct("84", "85"));
        let m = Task::Math;
        let a = m.extract("Thus $\\boxed{\\dfrac{1}{2}}$").unwrap();
        assert!(m.is_correct(&a, "\\frac12"));
    }

    #[test]
    fn arithmetic_problems_are_seeded_and_correct() {
        let (q, a) = arithmetic_problem(2, 2, 5, 0);
        assert_eq!((q.clone(), a.clone()), arithmetic_problem(2, 2, 5, 0));
        let sum: u64 = q
            .trim_start_matches("What is ")
            .trim_end_matches('?')
            .split(" + ")
            .map(|n| n.parse::<u64>().unwrap())
            .inspect(|n| assert!((10..100).contains(n)))
            .sum();
        assert_eq!(reference_number(&a), Some(sum as f64));
    }
}
