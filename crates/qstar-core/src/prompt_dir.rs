//! Prompt templates the user can replace: a set of named built-in
//! templates, and the directory of overrides (every entry a file
//! `<name>.j2` with a known name) that replaces some of them. Rendering is
//! left to the crates that own the templates.

use std::borrow::Cow;
use std::path::{Path, PathBuf};

/// Named template sources: the built-ins of a crate, some possibly replaced.
#[derive(Debug, Clone, PartialEq)]
pub struct TemplateSet {
    sources: Vec<(&'static str, Cow<'static, str>)>,
}

impl TemplateSet {
    /// The built-in templates, as (name, source).
    pub fn new(builtin: &[(&'static str, &'static str)]) -> Self {
        TemplateSet {
            sources: builtin
                .iter()
                .map(|&(name, source)| (name, Cow::Borrowed(source)))
                .collect(),
        }
    }

    /// `builtin` with each file `DIR/<name>.j2` replacing the template of
    /// that name. Any other entry in `dir`, an unreadable file or a template
    /// that does not parse is an error naming it.
    pub fn from_dir(builtin: &[(&'static str, &'static str)], dir: &Path) -> Result<Self, String> {
        let mut set = TemplateSet::new(builtin);
        let names: Vec<&str> = builtin.iter().map(|&(name, _)| name).collect();
        for (name, path, source) in prompt_files(dir, &names)? {
            set.set(&name, source)
                .map_err(|e| format!("{}: {e}", path.display()))?;
        }
        Ok(set)
    }

    /// Replaces the template `name`; an unknown name or a template that does
    /// not parse is an error.
    pub fn set(&mut self, name: &str, source: String) -> Result<(), String> {
        let known = self
            .sources
            .iter()
            .map(|(n, _)| *n)
            .collect::<Vec<_>>()
            .join(", ");
        let slot = self
            .sources
            .iter_mut()
            .find(|(n, _)| *n == name)
            .ok_or_else(|| format!("no prompt is named {name:?}; the prompts are {known}"))?;
        minijinja::Environment::new()
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

    /// Every (name, source), in the built-ins' order.
    pub fn iter(&self) -> impl Iterator<Item = (&'static str, &str)> {
        self.sources.iter().map(|(n, s)| (*n, s.as_ref()))
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

/// The files of `dir` as (name, path, text), sorted by name. An entry that is
/// not a `<name>.j2` file of one of `names`, or that cannot be read, is an
/// error naming it (and, for an unknown name, listing the known ones);
/// hidden files and editor backups are passed over.
pub fn prompt_files(dir: &Path, names: &[&str]) -> Result<Vec<(String, PathBuf, String)>, String> {
    let entries =
        std::fs::read_dir(dir).map_err(|e| format!("prompt directory {}: {e}", dir.display()))?;
    let mut paths = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|e| format!("prompt directory {}: {e}", dir.display()))?;
        let name = entry.file_name();
        let name = name.to_string_lossy();
        // Hidden files and editor backups (".rate.j2.swp", "rate.j2~") are
        // not prompts anyone meant to give.
        if name.starts_with('.') || name.ends_with('~') {
            continue;
        }
        paths.push(entry.path());
    }
    paths.sort();
    let known = names
        .iter()
        .map(|n| format!("{n}.j2"))
        .collect::<Vec<_>>()
        .join(", ");
    let mut files = Vec::with_capacity(paths.len());
    for path in paths {
        let name = path
            .file_name()
            .and_then(|f| f.to_str())
            .and_then(|f| f.strip_suffix(".j2"))
            .filter(|n| names.contains(n))
            .ok_or_else(|| {
                format!(
                    "prompt file {} is not a known prompt; the known prompts are {known}",
                    path.display()
                )
            })?
            .to_string();
        if !path.is_file() {
            return Err(format!("prompt file {} is not a file", path.display()));
        }
        let text = std::fs::read_to_string(&path)
            .map_err(|e| format!("prompt file {}: {e}", path.display()))?;
        files.push((name, path, text));
    }
    Ok(files)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_names_and_missing_directories_are_errors_naming_them() {
        let dir = std::env::temp_dir().join(format!("qstar-prompt-dir-{}", std::process::id()));
        // A directory left by an earlier run with the same id starts empty.
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("temp dir");
        std::fs::write(dir.join("a.j2"), "A {{ x }}").expect("write");
        // An editor's swap file and backup are not prompts.
        std::fs::write(dir.join(".a.j2.swp"), "junk").expect("write");
        std::fs::write(dir.join("a.j2~"), "old").expect("write");
        let files = prompt_files(&dir, &["a", "b"]).expect("known file");
        assert_eq!(files.len(), 1);
        assert_eq!(
            (files[0].0.as_str(), files[0].2.as_str()),
            ("a", "A {{ x }}")
        );
        std::fs::write(dir.join("c.j2"), "C").expect("write");
        let err = prompt_files(&dir, &["a", "b"]).expect_err("unknown file");
        assert!(err.contains("c.j2") && err.contains("a.j2, b.j2"), "{err}");
        std::fs::remove_dir_all(&dir).expect("clean up");
        let err = prompt_files(&dir, &["a"]).expect_err("missing directory");
        assert!(err.contains("prompt directory"), "{err}");
    }
}
