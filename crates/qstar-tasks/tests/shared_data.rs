//! Readers and checkers against the real development data.

use std::path::PathBuf;

use qstar_core::shared_data::shared_file_or_skip;
use qstar_tasks::{read_problems, Task};
use serde_json::Value;

fn data(test: &str, rel: &str) -> Option<PathBuf> {
    shared_file_or_skip(test, &format!("data/{rel}"))
}

#[test]
fn gsm8k_files_read_whole() {
    let (Some(train), Some(solutions)) = (
        data("gsm8k_files_read_whole", "gsm8k/train_first1000.jsonl"),
        data(
            "gsm8k_files_read_whole",
            "gsm8k/example_model_solutions_test_rows1019-1318.jsonl",
        ),
    ) else {
        return;
    };
    let train = read_problems(&train, Task::Gsm8k, None).unwrap();
    assert_eq!(train.len(), 1000);
    assert_eq!(train[0].answer, "72");
    assert_eq!(
        read_problems(&solutions, Task::Gsm8k, None).unwrap().len(),
        300
    );
}

/// The published samples carry correctness flags: our extraction and
/// comparison must agree with them (a few samples have calculator errors or
/// are truncated, so a tiny disagreement is allowed).
#[test]
fn gsm8k_checker_agrees_with_published_correctness_flags() {
    let Some(path) = data(
        "gsm8k_checker_agrees_with_published_correctness_flags",
        "gsm8k/example_model_solutions_test_rows1019-1318.jsonl",
    ) else {
        return;
    };
    let problems = read_problems(&path, Task::Gsm8k, None).unwrap();
    let text = std::fs::read_to_string(&path).unwrap();
    let (mut agree, mut total) = (0, 0);
    for (line, problem) in text.lines().zip(&problems) {
        let row: Value = serde_json::from_str(line).unwrap();
        for key in [
            "6b_finetuning",
            "6b_verification",
            "175b_finetuning",
            "175b_verification",
        ] {
            let sample = &row[key];
            let flag = sample["is_correct"].as_bool().unwrap();
            let ours = Task::Gsm8k
                .extract(sample["solution"].as_str().unwrap())
                .is_some_and(|a| Task::Gsm8k.is_correct(&a, &problem.answer));
            total += 1;
            agree += usize::from(ours == flag);
        }
    }
    assert_eq!(total, 1200);
    assert!(agree >= 1188, "agreement {agree}/{total}");
}

/// Every MATH-500 reference solution's boxed answer equals the answer field.
#[test]
fn math500_boxed_solutions_match_their_answers() {
    let Some(path) = data(
        "math500_boxed_solutions_match_their_answers",
        "math500/math500_dev.jsonl",
    ) else {
        return;
    };
    let problems = read_problems(&path, Task::Math, None).unwrap();
    assert_eq!(problems.len(), 200);
    let text = std::fs::read_to_string(&path).unwrap();
    let mut mismatches = Vec::new();
    for (line, problem) in text.lines().zip(&problems) {
        let row: Value = serde_json::from_str(line).unwrap();
        let solution = row["solution"].as_str().unwrap();
        let given = Task::Math.extract(solution);
        if !given
            .as_ref()
            .is_some_and(|g| Task::Math.is_correct(g, &problem.answer))
        {
            mismatches.push((given, problem.answer.clone()));
        }
    }
    assert!(mismatches.len() <= 2, "{mismatches:?}");
}
