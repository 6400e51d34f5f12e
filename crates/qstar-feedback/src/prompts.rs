//! The labeling prompts: the built-in templates, each of which a file
//! `<name>.j2` in a directory of the user's can replace.

use std::borrow::Cow;
use std::path::Path;

use minijinja::Environment;
use qstar_core::ModelError;

/// The built-in templates by name.
const BUILTIN: [(&str, &str); 4] = [
    ("cai_pairwise", include_str!("../prompts/cai_pairwise.j2")),
    ("rlaif", include_str!("../prompts/rlaif.j2")),
    ("rate", include_str!("../prompts/rate.j2")),
    ("judge", include_str!("../prompts/judge.j2")),
];

/// The template sources the labelers render, by name.
#[derive(Debug, Clone, PartialEq)]
pub struct Prompts {
    sources: Vec<(&'static str, Cow<'static, str>)>,
}

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
        Prompts {
            sources: BUILTIN
                .iter()
                .map(|&(name, source)| (name, Cow::Borrowed(source)))
                .collect(),
        }
    }

    /// The built-in templates, with each file `DIR/<name>.j2` replacing the
    /// template of that name. Any other entry in `dir`, an unreadable file or
    /// a template that does not parse is an error naming it.
    pub fn from_dir(dir: &Path) -> Result<Self, ModelError> {
        let mut prompts = Prompts::builtin();
        let files =
            qstar_core::prompt_files(dir, &Prompts::NAMES).map_err(ModelError::InvalidRequest)?;
        for (name, path, source) in files {
            prompts
                .set(&name, source)
                .map_err(|e| ModelError::InvalidRequest(format!("{}: {e}", path.display())))?;
        }
        Ok(prompts)
    }

    /// Replaces the template `name`; an unknown name or a template that does
    /// not parse is an error.
    pub fn set(&mut self, name: &str, source: String) -> Result<(), String> {
        let known = Prompts::NAMES.join(", ");
        let slot = self
            .sources
            .iter_mut()
            .find(|(n, _)| *n == name)
            .ok_or_else(|| format!("no prompt is named {name:?}; the prompts are {known}"))?;
        Environment::new()
            .template_from_str(&source)
            .map_err(|e| parse_error(&e))?;
        slot.1 = Cow::Owned(source);
        Ok(())
    }

    /// The source of the template `name`.
    pub fn source(&self, name: &str) -> Option<&str> {
        self.sources
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, s)| s.as_ref())
    }

    /// An environment holding every template under its name.
    pub(crate) fn environment(&self) -> Result<Environment<'static>, ModelError> {
        let mut env = Environment::new();
        for (name, source) in &self.sources {
            env.add_template_owned(*name, source.to_string())
                .map_err(|e| ModelError::InvalidRequest(format!("prompt template {name}: {e}")))?;
        }
        Ok(env)
    }
}

/// Why a template does not parse, with its line when the parser knows it
/// (minijinja's own message names the template `<string>`).
fn parse_error(e: &minijinja::Error) -> String {
    let what = match e.detail() {
        Some(detail) => format!("{}: {detail}", e.kind()),
        None => e.kind().to_string(),
    };
    match e.line() {
        Some(line) => format!("line {line}: the template does not parse: {what}"),
        None => format!("the template does not parse: {what}"),
    }
}
