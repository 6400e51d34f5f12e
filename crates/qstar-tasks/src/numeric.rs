//! Final answers that are numbers (GSM8K, arithmetic, most serial tasks):
//! finding the number a model committed to, and comparing it with the
//! reference.
//!
//! A model's last number is often not its answer ("… so 85 apples in 2 bags"),
//! so explicit markers win: `\boxed{}`, then "the answer is", then "####",
//! and only then the last number in the text.

/// A number found in text: the bytes it spans (`at..end`, a leading minus
/// sign included) and its value.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Found {
    pub at: usize,
    pub end: usize,
    pub value: f64,
}

/// Every number in `text`, in order. Understands signs, decimals and
/// thousands separators ("1,234.5"); a comma not followed by exactly three
/// digits separates numbers instead ("1, 2").
pub fn numbers(text: &str) -> Vec<Found> {
    let bytes = text.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < bytes.len() {
        if !bytes[i].is_ascii_digit() {
            i += 1;
            continue;
        }
        let start = i;
        let negative = start > 0
            && bytes[start - 1] == b'-'
            && (start < 2 || !bytes[start - 2].is_ascii_alphanumeric());
        let mut digits = String::new();
        while i < bytes.len() {
            let b = bytes[i];
            if b.is_ascii_digit() {
                digits.push(b as char);
                i += 1;
            } else if b == b','
                && bytes
                    .get(i + 1..i + 4)
                    .is_some_and(|d| d.iter().all(u8::is_ascii_digit))
                && !bytes.get(i + 4).is_some_and(u8::is_ascii_digit)
            {
                i += 1;
            } else {
                break;
            }
        }
        if i + 1 < bytes.len() && bytes[i] == b'.' && bytes[i + 1].is_ascii_digit() {
            digits.push('.');
            i += 1;
            while i < bytes.len() && bytes[i].is_ascii_digit() {
                digits.push(bytes[i] as char);
                i += 1;
            }
        }
        if let Ok(mut value) = digits.parse::<f64>() {
            if negative {
                value = -value;
            }
            out.push(Found {
                at: if negative { start - 1 } else { start },
                end: i,
                value,
            });
        }
    }
    out
}

/// The contents of the last `\boxed{…}` (or `\fbox{…}`), braces balanced.
pub fn last_boxed(text: &str) -> Option<&str> {
    let at = ["\\boxed", "\\fbox"]
        .iter()
        .filter_map(|m| text.rfind(m).map(|at| (at, m.len())))
        .max_by_key(|(at, _)| *at)?;
    let rest = &text[at.0 + at.1..];
    let trimmed = rest.trim_start();
    if trimmed.starts_with('{') {
        braced(trimmed).map(|(inner, _)| inner)
    } else if rest.starts_with(' ') {
        // "\boxed 5": the box holds the next word.
        let word = trimmed
            .split(|c: char| c.is_whitespace() || c == '$')
            .next()?;
        (!word.is_empty()).then_some(word)
    } else {
        None
    }
}

/// Splits "{inner}rest" into ("inner", "rest"), braces balanced.
pub fn braced(s: &str) -> Option<(&str, &str)> {
    let inner = s.strip_prefix('{')?;
    let mut depth = 1usize;
    for (i, c) in inner.char_indices() {
        match c {
            '{' => depth += 1,
            '}' => {
                depth -= 1;
                if depth == 0 {
                    return Some((&inner[..i], &inner[i + 1..]));
                }
            }
            _ => {}
        }
    }
    None
}

/// Finds the last occurrence of `marker`, ignoring ASCII case.
fn rfind_ignore_case(text: &str, marker: &str) -> Option<usize> {
    text.to_ascii_lowercase()
        .rfind(&marker.to_ascii_lowercase())
}

/// The number a model gave as its final answer, if any.
pub fn extract_number(text: &str) -> Option<f64> {
    final_number(text).map(|n| n.value)
}

/// [`extract_number`] with where the answer stands in `text`.
pub fn final_number(text: &str) -> Option<Found> {
    let shifted = |n: &Found, by: usize| Found {
        at: n.at + by,
        end: n.end + by,
        value: n.value,
    };
    if let Some(boxed) = last_boxed(text) {
        if let Some(n) = numbers(boxed).first() {
            // `last_boxed` returns a slice of `text`: its offset is exact.
            let by = boxed.as_ptr() as usize - text.as_ptr() as usize;
            return Some(shifted(n, by));
        }
    }
    for marker in ["answer is", "answer:", "####"] {
        if let Some(at) = rfind_ignore_case(text, marker) {
            let by = at + marker.len();
            let after = &text[by..];
            if let Some(n) = numbers(after).first() {
                // Only the number that follows the marker on its own line.
                if !after[..n.at].contains("\n\n") {
                    return Some(shifted(n, by));
                }
            }
        }
    }
    numbers(text).last().copied()
}

/// A reference answer as GSM8K writes it: "#### 72", "A: 1,000", or the
/// bare number.
pub fn reference_number(answer: &str) -> Option<f64> {
    let tail = if let Some(at) = answer.rfind("####") {
        &answer[at + 4..]
    } else if let Some(at) = answer
        .rfind("\nA:")
        .or_else(|| answer.starts_with("A:").then_some(0))
    {
        &answer[at..]
    } else {
        answer
    };
    numbers(tail).first().map(|n| n.value)
}

/// Equal as numbers, up to rounding in the last printed digits.
pub fn numbers_equal(a: f64, b: f64) -> bool {
    (a - b).abs() <= 1e-6 * a.abs().max(b.abs()).max(1.0)
}

/// Prints a number the way an answer is written: integers without ".0".
pub fn format_number(x: f64) -> String {
    if x.fract() == 0.0 && x.abs() < 1e15 {
        format!("{}", x as i64)
    } else {
        format!("{x}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn markers_beat_the_last_number() {
        let cases: &[(&str, f64)] = &[
            ("So the answer is 85. She has 2 bags.", 85.0),
            ("The Answer Is: $1,234.50 in total", 1234.5),
            ("He ends with -7 degrees. The answer is -7.", -7.0),
            ("Total: 3 + 4 = 7 apples", 7.0),
            ("#### 1,000", 1000.0),
            ("We get \\boxed{42} and 7 more.", 42.0),
            ("answer is 12 apples.\n\nThen 40 more", 12.0),
            ("Values 1, 2, 3", 3.0),
            ("It costs 5-3=2 dollars", 2.0),
            ("x is 3.", 3.0),
            ("1,2345", 2345.0),
        ];
        for (text, want) in cases {
            assert_eq!(extract_number(text), Some(*want), "{text}");
        }
        assert_eq!(extract_number("no numbers here"), None);
        // A marker with nothing after it falls back to the last number.
        assert_eq!(extract_number("I got 9. The answer is unclear"), Some(9.0));
    }

    #[test]
    fn references_in_both_gsm8k_layouts() {
        assert_eq!(reference_number("a\nb\n#### 72"), Some(72.0));
        assert_eq!(reference_number("x <<2+2=4>>4\nA: 1,000"), Some(1000.0));
        assert_eq!(reference_number("#### -3"), Some(-3.0));
        assert_eq!(reference_number("18"), Some(18.0));
    }

    #[test]
    fn boxed_contents_keep_nested_braces() {
        assert_eq!(last_boxed("\\boxed{\\frac{1}{2}}"), Some("\\frac{1}{2}"));
        assert_eq!(last_boxed("a \\boxed{1} b \\boxed{2}"), Some("2"));
        assert_eq!(last_boxed("\\boxed 5$"), Some("5"));
        assert_eq!(last_boxed("\\boxed{unclosed"), None);
        assert_eq!(last_boxed("\\fbox{x}"), Some("x"));
    }

    #[test]
    fn formatting_and_equality() {
        assert_eq!(format_number(85.0), "85");
        assert_eq!(format_number(2.5), "2.5");
        assert!(numbers_equal(0.1 + 0.2, 0.3));
        assert!(!numbers_equal(84.0, 85.0));
    }
}
