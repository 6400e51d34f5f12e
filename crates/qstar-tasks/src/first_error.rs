//! Where a worked addition first goes wrong.
//!
//! A token-level reward (DPO's implicit reward, a PRM) does credit
//! assignment well when its lowest value in a wrong solution falls where
//! the solution went wrong. For additions that place is checkable: the
//! first number written in the solution that is not what a right working
//! would have there, and within it the first digit that differs.
//!
//! The working is read as a chain of equations `a + b (+ …) = s`: each
//! left-hand number must be a term of the question not used yet or the
//! running partial sum, and each right-hand side the sum of its left-hand
//! side. If every equation holds but the final answer is wrong, the error is
//! the final answer, where its value is first written after the working.
//! Anything else (no answer at all) is reported as not located, never
//! guessed. Within the blamed number, the digit is found by comparing it
//! with what belongs there (the running sum, the next unused term, the
//! total); an operand with nothing left to compare is blamed from its start.

use crate::numeric::{final_number, numbers, numbers_equal, Found};

/// The outcome of looking for the first error in a solution.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FirstError {
    /// No equation is wrong and the final answer is right.
    None,
    /// The byte in the solution where the first wrong number first differs
    /// from the right one (for a number that stops short, the byte after
    /// it).
    At(usize),
    /// The solution is wrong but no written number is to blame (no final
    /// answer, or a question that is not an addition of whole numbers).
    Unlocated,
}

/// The terms of "What is 12 + 34 + 5?": whole numbers joined by `+`.
pub fn addition_terms(question: &str) -> Option<Vec<u64>> {
    let body = question.trim().strip_prefix("What is")?;
    let body = body.trim().trim_end_matches('?').trim();
    let terms: Option<Vec<u64>> = body.split('+').map(|t| t.trim().parse().ok()).collect();
    terms.filter(|t| t.len() >= 2)
}

/// One equation of the working: its left-hand numbers and its result.
struct Equation {
    operands: Vec<Found>,
    result: Found,
}

/// The equations `n + n (+ n…) = n` in `text`, in order. Numbers are
/// joined by `+` or `=` with only spaces between.
fn equations(text: &str) -> Vec<Equation> {
    let found = numbers(text);
    let joined_by = |a: &Found, b: &Found, op: char| {
        text.get(a.end..b.at)
            .is_some_and(|gap| gap.trim_matches(' ') == op.to_string())
    };
    let mut out = Vec::new();
    let mut i = 0;
    while i < found.len() {
        let mut j = i;
        while j + 1 < found.len() && joined_by(&found[j], &found[j + 1], '+') {
            j += 1;
        }
        if j > i && j + 1 < found.len() && joined_by(&found[j], &found[j + 1], '=') {
            out.push(Equation {
                operands: found[i..=j].to_vec(),
                result: found[j + 1],
            });
            i = j + 2;
        } else {
            i = j + 1;
        }
    }
    out
}

/// The byte where `written` (at `at` in the text) first differs from the
/// decimal digits of `right`; thousands separators are passed over, so
/// "1,235" against 1234 is blamed at its "5".
fn first_difference(text: &str, written: &Found, right: u64) -> usize {
    let right = right.to_string();
    let mut want = right.bytes();
    for (i, b) in text.as_bytes()[written.at..written.end].iter().enumerate() {
        if *b == b',' {
            continue;
        }
        if want.next() != Some(*b) {
            return written.at + i;
        }
    }
    written.end
}

fn whole(n: &Found) -> Option<u64> {
    (n.value >= 0.0 && n.value.fract() == 0.0 && n.value < 1e15).then_some(n.value as u64)
}

/// Where `solution` to the addition `question` first goes wrong.
pub fn first_addition_error(question: &str, solution: &str) -> FirstError {
    let Some(terms) = addition_terms(question) else {
        return FirstError::Unlocated;
    };
    let total: u64 = terms.iter().sum();
    let mut unused = terms.clone();
    let mut partial: Option<u64> = None;
    // Left-hand sides already worked, so a restated step is not blamed for
    // reusing its terms.
    let mut worked: Vec<Vec<u64>> = Vec::new();
    // Where the checked working ends: a wrong final answer is blamed where
    // its value is first written after it.
    let mut worked_to = 0;
    for eq in equations(solution) {
        worked_to = eq.result.end;
        let mut values: Option<Vec<u64>> = eq.operands.iter().map(whole).collect();
        if let Some(v) = values.as_mut() {
            v.sort_unstable();
            if worked.contains(v) {
                let sum: u64 = v.iter().sum();
                if whole(&eq.result) != Some(sum) {
                    return FirstError::At(first_difference(solution, &eq.result, sum));
                }
                continue;
            }
            worked.push(v.clone());
        }
        let mut sum = 0u64;
        for (k, operand) in eq.operands.iter().enumerate() {
            let Some(value) = whole(operand) else {
                return FirstError::At(operand.at);
            };
            if k == 0 && partial == Some(value) {
                partial = None;
            } else if let Some(at) = unused.iter().position(|&t| t == value) {
                unused.remove(at);
            } else {
                // The number is wrong; its digits are compared with what
                // belongs here when something does (the running sum, else
                // the next unused term), else it is blamed from its start.
                let expected =
                    if k == 0 { partial } else { None }.or_else(|| unused.first().copied());
                return FirstError::At(match expected {
                    Some(e) => first_difference(solution, operand, e),
                    None => operand.at,
                });
            }
            sum += value;
        }
        match whole(&eq.result) {
            Some(v) if v == sum => partial = Some(v),
            _ => return FirstError::At(first_difference(solution, &eq.result, sum)),
        }
    }
    match final_number(solution) {
        Some(answer) if numbers_equal(answer.value, total as f64) => FirstError::None,
        Some(answer) => {
            let first = numbers(solution)
                .into_iter()
                .find(|n| n.at >= worked_to && n.value == answer.value)
                .unwrap_or(answer);
            match whole(&first) {
                Some(_) => FirstError::At(first_difference(solution, &first, total)),
                None => FirstError::At(first.at),
            }
        }
        None => FirstError::Unlocated,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The text from the located byte on, to read the cases at a glance.
    fn from_error(question: &str, solution: &str) -> Option<String> {
        match first_addition_error(question, solution) {
            FirstError::At(at) => Some(solution[at..].to_string()),
            FirstError::None => None,
            FirstError::Unlocated => Some("<unlocated>".into()),
        }
    }

    #[test]
    fn the_first_wrong_digit_is_found() {
        let q = "What is 23 + 45?";
        assert_eq!(
            first_addition_error(q, "23 + 45 = 68\nThe answer is 68"),
            FirstError::None
        );
        // A wrong sum: its second digit is the first one that differs.
        assert_eq!(
            from_error(q, "23 + 45 = 69\nThe answer is 69").as_deref(),
            Some("9\nThe answer is 69")
        );
        // A wrong operand comes before its sum.
        assert_eq!(from_error(q, "23 + 46 = 69").as_deref(), Some("6 = 69"));
        // Operands in either order are right, and a restated step is no
        // error; its wrong restatement is.
        assert_eq!(
            first_addition_error(q, "45 + 23 = 68. #### 68"),
            FirstError::None
        );
        assert_eq!(
            first_addition_error(q, "23 + 45 = 68. So 23 + 45 = 68."),
            FirstError::None
        );
        assert_eq!(
            from_error(q, "23 + 45 = 68. So 23 + 45 = 78.").as_deref(),
            Some("78.")
        );
        // Right working, wrong final answer.
        assert_eq!(
            from_error(q, "23 + 45 = 68, so the answer is 58.").as_deref(),
            Some("58.")
        );
        // No working, a wrong answer.
        assert_eq!(from_error(q, "The sum is 78.").as_deref(), Some("78."));
        // A wrong answer written twice is blamed where it is first written.
        assert_eq!(
            from_error(q, "Adding them gives 58. The answer is 58.").as_deref(),
            Some("58. The answer is 58.")
        );
        // An operand beyond the question's terms is blamed from its start.
        assert_eq!(from_error(q, "23 + 45 + 7 = 75").as_deref(), Some("7 = 75"));
        // Thousands separators are not digits.
        assert_eq!(
            from_error("What is 1000 + 234?", "1000 + 234 = 1,235").as_deref(),
            Some("5")
        );
        // A number that stops short is blamed just after it.
        assert_eq!(from_error(q, "The answer is 6").as_deref(), Some(""));
        assert_eq!(
            from_error(q, "I cannot say.").as_deref(),
            Some("<unlocated>")
        );
    }

    #[test]
    fn a_chain_of_partial_sums_is_followed() {
        let q = "What is 12 + 34 + 56?";
        let right = "12 + 34 = 46\n46 + 56 = 102\n#### 102";
        assert_eq!(first_addition_error(q, right), FirstError::None);
        // The second step starts from a wrong partial sum: blamed against
        // the right one (46), at its second digit.
        assert_eq!(
            from_error(q, "12 + 34 = 46\n47 + 56 = 103\n#### 103").as_deref(),
            Some("7 + 56 = 103\n#### 103")
        );
        // One equation over all three terms.
        assert_eq!(
            first_addition_error(q, "12 + 34 + 56 = 102"),
            FirstError::None
        );
        assert_eq!(from_error(q, "12 + 34 + 56 = 92").as_deref(), Some("92"));
    }

    #[test]
    fn questions_that_are_not_additions_are_not_guessed() {
        assert_eq!(
            first_addition_error("What is 3 * 4?", "12"),
            FirstError::Unlocated
        );
        assert_eq!(addition_terms("What is 47 + 38?"), Some(vec![47, 38]));
        assert_eq!(addition_terms("What is 47?"), None);
    }
}
