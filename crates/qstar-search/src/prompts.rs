//! The search's own prompts, kept as template files beside the crate so
//! they can be read and changed without touching the algorithms: the
//! step-correctness question of the PRM/ORM judge, the request of sequential
//! revision, and the reflection text that MCTS can start a step with.

use minijinja::{context, Environment};

use crate::SearchError;

const STEP_JUDGE: &str = include_str!("../prompts/step_judge.j2");
const REVISION: &str = include_str!("../prompts/revision.j2");

/// Text a reflective MCTS step starts with (Marco-o1's reflection prompt,
/// in our words), part of the step itself.
pub const REFLECTION: &str = include_str!("../prompts/reflection.txt");

/// Renders a template source; an error names the template. Parsing a few
/// hundred bytes per call costs nothing next to the model call it feeds.
fn render(name: &str, source: &str, values: minijinja::Value) -> Result<String, SearchError> {
    Environment::new()
        .render_str(source, values)
        .map_err(|e| SearchError::Config(format!("prompt template {name}: {e}")))
}

/// Asks whether the last step of a partial (or finished) solution is right;
/// the judge verifier reads the probability of "Yes".
pub fn step_judge(problem: &str, solution: &str) -> Result<String, SearchError> {
    render(
        "step_judge",
        STEP_JUDGE,
        context! { problem => problem.trim(), solution => solution.trim_end() },
    )
}

/// Asks for a corrected solution given an earlier attempt.
pub fn revision(question: &str, instruction: &str, attempt: &str) -> Result<String, SearchError> {
    render(
        "revision",
        REVISION,
        context! {
            question => question.trim_end(),
            instruction => instruction,
            attempt => attempt.trim(),
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Pins each rendered prompt: a change to a template shows up here.
    #[test]
    fn rendered_prompts_are_pinned() {
        assert_eq!(
            step_judge(" What is 2 + 3? ", "2 + 3 = 5\n\n").expect("renders"),
            "Here is a math problem and the start of a solution.\n\n\
             Problem: What is 2 + 3?\n\n\
             Solution:\n2 + 3 = 5\n\n\
             Is the last step of this solution correct? Answer Yes or No."
        );
        assert_eq!(
            revision("What is 2 + 3?\n", "End with #### N.", "  2 + 3 = 6\n#### 6\n")
                .expect("renders"),
            "What is 2 + 3?\n\nEnd with #### N.\n\n\
             Here is an earlier attempt at this problem:\n\n\
             2 + 3 = 6\n#### 6\n\n\
             It may contain mistakes. Check it step by step and write a corrected, complete solution."
        );
        assert_eq!(
            REFLECTION,
            "Wait! Maybe I made some mistakes! I need to rethink from scratch.\n\n"
        );
    }

    /// Text from a question is data, never template syntax.
    #[test]
    fn template_syntax_in_a_question_is_left_alone() {
        let p = step_judge("{{ solution }} {% if x %}", "step").expect("renders");
        assert!(p.contains("Problem: {{ solution }} {% if x %}"));
    }
}
