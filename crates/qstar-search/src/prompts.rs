//! The search's own prompts, kept as template files beside the crate so
//! they can be read and changed without touching the algorithms: the
//! step-correctness question of the PRM/ORM judge, the request of sequential
//! revision, and the reflection text that MCTS can start a step with. A file
//! `<name>.j2` in a directory of the user's replaces the built-in template
//! of that name ([`Prompts::from_dir`]).

use std::path::Path;

use minijinja::{context, Environment};

use qstar_core::TemplateSet;

use crate::SearchError;

const STEP_JUDGE: &str = include_str!("../prompts/step_judge.j2");
const REVISION: &str = include_str!("../prompts/revision.j2");

/// Text a reflective MCTS step starts with (Marco-o1's reflection prompt,
/// in our words), part of the step itself: the built-in `reflection`.
pub const REFLECTION: &str = include_str!("../prompts/reflection.j2");

/// The built-in templates by name.
const BUILTIN: [(&str, &str); 3] = [
    ("step_judge", STEP_JUDGE),
    ("revision", REVISION),
    ("reflection", REFLECTION),
];

/// The template sources of the search, by name.
#[derive(Debug, Clone, PartialEq)]
pub struct Prompts(TemplateSet);

impl Default for Prompts {
    fn default() -> Self {
        Prompts::builtin()
    }
}

impl Prompts {
    /// The names a prompt file can have (without `.j2`).
    pub const NAMES: [&'static str; 3] = [BUILTIN[0].0, BUILTIN[1].0, BUILTIN[2].0];

    /// The templates that ship with the crate.
    pub fn builtin() -> Self {
        Prompts(TemplateSet::new(&BUILTIN))
    }

    /// The built-in templates, with each file `DIR/<name>.j2` replacing the
    /// template of that name. Any other entry in `dir`, an unreadable file or
    /// a template that does not parse is an error naming it.
    pub fn from_dir(dir: &Path) -> Result<Self, SearchError> {
        TemplateSet::from_dir(&BUILTIN, dir)
            .map(Prompts)
            .map_err(SearchError::Config)
    }

    /// Replaces the template `name`; an unknown name or a template that does
    /// not parse is an error.
    pub fn set(&mut self, name: &str, source: String) -> Result<(), String> {
        self.0.set(name, source)
    }

    /// The source of the template `name`.
    pub fn source(&self, name: &str) -> Option<&str> {
        self.0.source(name)
    }

    /// Renders the template `name`; an error names it. Parsing a few hundred
    /// bytes per call costs nothing next to the model call it feeds.
    fn render(
        &self,
        name: &str,
        env: Environment<'_>,
        values: minijinja::Value,
    ) -> Result<String, SearchError> {
        let source = self
            .source(name)
            .ok_or_else(|| SearchError::Config(format!("no prompt template {name}")))?;
        env.render_str(source, values)
            .map_err(|e| SearchError::Config(format!("prompt template {name}: {e}")))
    }

    /// Asks whether the last step of a partial (or finished) solution is
    /// right; the judge verifier reads the probability of "Yes".
    pub fn step_judge(&self, problem: &str, solution: &str) -> Result<String, SearchError> {
        self.render(
            "step_judge",
            Environment::new(),
            context! { problem => problem.trim(), solution => solution.trim_end() },
        )
    }

    /// Asks for a corrected solution given an earlier attempt.
    pub fn revision(
        &self,
        question: &str,
        instruction: &str,
        attempt: &str,
    ) -> Result<String, SearchError> {
        self.render(
            "revision",
            Environment::new(),
            context! {
                question => question.trim_end(),
                instruction => instruction,
                attempt => attempt.trim(),
            },
        )
    }

    /// The text a reflective MCTS step starts with. Its trailing newlines
    /// are kept: they separate the reflection from the step's own text.
    pub fn reflection(&self) -> Result<String, SearchError> {
        let mut env = Environment::new();
        env.set_keep_trailing_newline(true);
        self.render("reflection", env, context! {})
    }
}

/// [`Prompts::step_judge`] of the built-in templates.
pub fn step_judge(problem: &str, solution: &str) -> Result<String, SearchError> {
    Prompts::builtin().step_judge(problem, solution)
}

/// [`Prompts::revision`] of the built-in templates.
pub fn revision(question: &str, instruction: &str, attempt: &str) -> Result<String, SearchError> {
    Prompts::builtin().revision(question, instruction, attempt)
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
        assert_eq!(
            Prompts::builtin().reflection().expect("renders"),
            REFLECTION
        );
    }

    /// Text from a question is data, never template syntax.
    #[test]
    fn template_syntax_in_a_question_is_left_alone() {
        let p = step_judge("{{ solution }} {% if x %}", "step").expect("renders");
        assert!(p.contains("Problem: {{ solution }} {% if x %}"));
    }
}
