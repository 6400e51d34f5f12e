//! MATH answers: normalizing LaTeX so that answers written differently
//! compare equal ("\dfrac12", "\frac{1}{2}", "1/2", "0.5"), and evaluating
//! them as numbers when both sides are plain numeric expressions.
//!
//! The normalization steps follow the usual MATH grading conventions
//! (Hendrycks et al. 2021): drop `\left`/`\right`, spaces, degree marks,
//! dollar signs, `\text{}` wrappers and trailing units, unify `\dfrac`/`\tfrac`,
//! brace bare fraction and root arguments, and drop a short "x =" prefix.

use crate::numeric::{braced, last_boxed};

/// The final answer a model wrote: the last `\boxed{}`, else what follows
/// "the answer is" up to the end of that line.
pub fn extract_math_answer(text: &str) -> Option<String> {
    if let Some(boxed) = last_boxed(text) {
        return Some(boxed.to_string());
    }
    let lower = text.to_ascii_lowercase();
    let at = lower.rfind("the answer is")?;
    let line = text[at + "the answer is".len()..].lines().next()?;
    let answer = line
        .trim()
        .trim_start_matches(':')
        .trim()
        .trim_end_matches('.')
        .trim_matches('$')
        .trim();
    (!answer.is_empty()).then(|| answer.to_string())
}

/// Removes `\text{…}` wrappers but keeps their contents; with
/// `units` set, a trailing `\text{ units}` goes entirely.
fn strip_text_wrappers(s: &str) -> String {
    let mut s = s.to_string();
    // A unit written after the value, "10\text{ cm}", is not part of it.
    if let Some(at) = s.find("\\text{ ") {
        if at > 0 {
            s.truncate(at);
        }
    }
    for wrapper in ["\\text{", "\\textbf{", "\\mathrm{", "\\mbox{"] {
        while let Some(at) = s.find(wrapper) {
            let open = at + wrapper.len() - 1;
            let Some((inner, after)) = braced(&s[open..]) else {
                break;
            };
            let end = s.len() - after.len() - 1;
            let inner = inner.to_string();
            s.replace_range(at..=end, &inner);
        }
    }
    s
}

/// `\frac12` → `\frac{1}{2}`, `\frac1{2}` → `\frac{1}{2}`, `\sqrt3` → `\sqrt{3}`.
fn brace_bare_arguments(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 8);
    let mut rest = s;
    while let Some(at) = [rest.find("\\frac"), rest.find("\\sqrt")]
        .into_iter()
        .flatten()
        .min()
    {
        let is_frac = rest[at..].starts_with("\\frac");
        out.push_str(&rest[..at + 5]);
        rest = &rest[at + 5..];
        let arguments = if is_frac { 2 } else { 1 };
        for _ in 0..arguments {
            let mut chars = rest.chars();
            match chars.next() {
                Some('{') => {
                    // Keep the braced argument, normalizing inside it too.
                    let Some((inner, after)) = braced(rest) else {
                        break;
                    };
                    out.push('{');
                    out.push_str(&brace_bare_arguments(inner));
                    out.push('}');
                    rest = after;
                }
                Some(c) if c.is_alphanumeric() => {
                    out.push('{');
                    out.push(c);
                    out.push('}');
                    rest = &rest[c.len_utf8()..];
                }
                _ => break,
            }
        }
    }
    out.push_str(rest);
    out
}

/// The canonical written form of a MATH answer.
pub fn normalize_math_answer(answer: &str) -> String {
    let mut s = answer.trim().to_string();
    s = strip_text_wrappers(&s);
    for (from, to) in [
        ("\n", ""),
        ("\\!", ""),
        ("\\,", ""),
        ("\\;", ""),
        ("\\ ", ""),
        ("\\left", ""),
        ("\\right", ""),
        ("^{\\circ}", ""),
        ("^\\circ", ""),
        ("\\circ", ""),
        ("\\$", ""),
        ("$", ""),
        ("\\%", ""),
        ("%", ""),
        ("\\dfrac", "\\frac"),
        ("\\tfrac", "\\frac"),
        ("\\displaystyle", ""),
        (" ", ""),
    ] {
        s = s.replace(from, to);
    }
    // "degrees" and similar trailing words after a number.
    for unit in [
        "degrees", "degree", "units", "unit", "cm", "inches", "dollars",
    ] {
        if let Some(stem) = s.strip_suffix(unit) {
            if stem.ends_with(|c: char| c.is_ascii_digit() || c == '}') {
                s = stem.to_string();
            }
        }
    }
    // "x=5" → "5", but keep equations with longer left sides.
    if let Some((lhs, rhs)) = s.split_once('=') {
        if lhs.len() <= 2 && !rhs.is_empty() {
            s = rhs.to_string();
        }
    }
    // ".5" → "0.5"; "5." → "5".
    if s.starts_with('.') {
        s.insert(0, '0');
    }
    if let Some(stem) = s.strip_suffix('.') {
        s = stem.to_string();
    }
    s = brace_bare_arguments(&s);
    // "a/b" of two plain integers → "\frac{a}{b}".
    if let Some((a, b)) = s.split_once('/') {
        let plain = |t: &str| !t.is_empty() && t.chars().all(|c| c.is_ascii_digit() || c == '-');
        if plain(a) && plain(b) {
            s = format!("\\frac{{{a}}}{{{b}}}");
        }
    }
    // "1,000" → "1000" when it is one number, not a list.
    if s.split(',')
        .skip(1)
        .all(|g| g.len() == 3 && g.chars().all(|c| c.is_ascii_digit()))
        && s.contains(',')
        && s.split(',').next().is_some_and(|g| {
            !g.is_empty() && g.len() <= 3 && g.chars().all(|c| c.is_ascii_digit() || c == '-')
        })
    {
        s = s.replace(',', "");
    }
    s
}

/// Evaluates a plain numeric expression: integers, decimals, a leading sign,
/// `\frac{a}{b}` (nested), `a/b`, and `\sqrt{n}`. Anything else is `None`.
pub fn evaluate(s: &str) -> Option<f64> {
    let s = s.trim();
    if s.is_empty() {
        return None;
    }
    if let Some(rest) = s.strip_prefix('-') {
        return evaluate(rest).map(|v| -v);
    }
    if let Ok(v) = s.parse::<f64>() {
        return v.is_finite().then_some(v);
    }
    if let Some(rest) = s.strip_prefix("\\frac") {
        let (num, after) = braced(rest)?;
        let (den, after) = braced(after)?;
        if !after.is_empty() {
            return None;
        }
        let d = evaluate(den)?;
        return (d != 0.0).then(|| evaluate(num).map(|n| n / d)).flatten();
    }
    if let Some(rest) = s.strip_prefix("\\sqrt") {
        let (arg, after) = braced(rest)?;
        return after
            .is_empty()
            .then(|| evaluate(arg).map(f64::sqrt))
            .flatten();
    }
    if let Some((a, b)) = s.split_once('/') {
        let d = evaluate(b)?;
        return (d != 0.0).then(|| evaluate(a).map(|n| n / d)).flatten();
    }
    None
}

/// Whether a model's answer matches the reference MATH answer.
pub fn math_answers_equal(given: &str, reference: &str) -> bool {
    let a = normalize_math_answer(given);
    let b = normalize_math_answer(reference);
    if a == b {
        return true;
    }
    match (evaluate(&a), evaluate(&b)) {
        (Some(x), Some(y)) => crate::numeric::numbers_equal(x, y),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Tricky cases: (model's answer, reference, equal?).
    const CASES: &[(&str, &str, bool)] = &[
        ("\\dfrac{1}{2}", "\\frac12", true),
        ("0.5", "\\frac{1}{2}", true),
        ("1/2", "\\frac{1}{2}", true),
        (".5", "\\frac{1}{2}", true),
        (
            "\\left( 3, \\frac{\\pi}{2} \\right)",
            "(3,\\frac{\\pi}{2})",
            true,
        ),
        ("90^\\circ", "90", true),
        ("90^{\\circ}", "90", true),
        ("90 degrees", "90", true),
        ("\\text{Evelyn}", "Evelyn", true),
        ("10\\text{ cm}", "10", true),
        ("x=5", "5", true),
        ("y = -2", "-2", true),
        ("\\$18.90", "18.90", true),
        ("18.9", "18.90", true),
        ("1,000", "1000", true),
        ("1,-2", "1, -2", true),
        ("3, 5, 7", "3,5,7", true),
        ("11\\sqrt2", "11\\sqrt{2}", true),
        ("\\sqrt{4}", "2", true),
        ("-\\frac{\\pi}{6}", "-\\frac{\\pi}{6}", true),
        ("\\frac{3\\sqrt{3}}{4}", "\\frac{3\\sqrt3}{4}", true),
        ("50\\%", "50", true),
        ("5.", "5", true),
        ("6 - 5i", "6-5i", true),
        ("\\frac{1}{3}", "0.33", false),
        ("3", "4", false),
        ("1,2", "12", false),
        ("x^2", "x^3", false),
        ("", "0", false),
    ];

    #[test]
    fn tricky_answers_compare_as_graders_expect() {
        for (given, reference, want) in CASES {
            assert_eq!(
                math_answers_equal(given, reference),
                *want,
                "{given:?} vs {reference:?}: {:?} vs {:?}",
                normalize_math_answer(given),
                normalize_math_answer(reference)
            );
        }
    }

    #[test]
    fn answers_are_found_in_solutions() {
        assert_eq!(
            extract_math_answer("so $\\boxed{\\frac{14}{3}}$.").as_deref(),
            Some("\\frac{14}{3}")
        );
        assert_eq!(
            extract_math_answer("The answer is $2\\pi$.\nDone").as_deref(),
            Some("2\\pi")
        );
        assert_eq!(extract_math_answer("no final answer"), None);
    }

    #[test]
    fn evaluation_of_numeric_forms() {
        assert_eq!(evaluate("\\frac{\\frac{1}{2}}{2}"), Some(0.25));
        assert_eq!(evaluate("-3/4"), Some(-0.75));
        assert_eq!(evaluate("\\frac{1}{0}"), None);
        assert_eq!(evaluate("x"), None);
    }
}
