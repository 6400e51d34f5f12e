//! The labeling prompts: the built-in templates, each of which a file
//! `<name>.j2` in a directory of the user's can replace.

use std::path::Path;

use minijinja::Environment;
use qstar_core::{ModelError, TemplateSet};

/// The built-in templates by name.
const BUILTIN: [(&str, &str); 4] = [
    ("cai_pairwise", include_str!("../prompts/cai_pairwise.j2")),
    ("rlaif", include_str!("../prompts/rlaif.j2")),
    ("rate", include_str!("../prompts/rate.j2")),
    ("judge", include_str!("../prompts/judge.j2")),
];

/// The template sources the labelers render, by name.
#[derive(Debug, Clone, PartialEq)]
pub struct Prompts(TemplateSet);

impl Default for Prompts {
    fn default() -> Self {
        Prompts::builtin()
    }
}

impl Prompts {
    /// The names a prompt file can have (without `.j2`).
    pub const NAMES: [&'static str; 4] = [BUILTIN[0].0, BUILTIN[1].0, BUILTIN[2].0, BUILTIN[3].0];

    /// The templates that ship with the crate.
    pub fn builtin() -> Self {
        Prompts(TemplateSet::new(&BUILTIN))
    }

    /// The built-in templates, with each file `DIR/<name>.j2` replacing the
    /// template of that name. Any other entry in `dir`, an unreadable file or
    /// a template that does not parse is an error naming it.
    pub fn from_dir(dir: &Path) -> Result<Self, ModelError> {
        TemplateSet::from_dir(&BUILTIN, dir)
            .map(Prompts)
            .map_err(ModelError::InvalidRequest)
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

    /// An environment holding every template under its name.
    pub(crate) fn environment(&self) -> Result<Environment<'static>, ModelError> {
        let mut env = Environment::new();
        for (name, source) in self.0.iter() {
            env.add_template_owned(name, source.to_string())
                .map_err(|e| ModelError::InvalidRequest(format!("prompt template {name}: {e}")))?;
        }
        Ok(env)
    }
}
