//! `--prompts DIR` of the commands that render templates, and `qstar
//! prompts export DIR`, which writes the built-in templates out as a place
//! to start from. One directory serves every command: a file `<name>.j2`
//! replaces the built-in template of that name wherever it is rendered.

use std::collections::BTreeMap;
use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::Args;
use serde_json::{json, Value};

use crate::report::{Reporter, Text};
use crate::UsageError;

/// The flag, flattened into every command that renders a template.
#[derive(Args, Clone, Debug, Default)]
pub struct PromptArgs {
    /// A directory of templates: each file NAME.j2 replaces the built-in
    /// template NAME (`qstar prompts export DIR` writes them all out).
    #[arg(long, value_name = "DIR")]
    pub prompts: Option<PathBuf>,
}

/// Every template name, the labeling ones first.
pub fn names() -> Vec<&'static str> {
    qstar_feedback::Prompts::NAMES
        .into_iter()
        .chain(qstar_search::Prompts::NAMES)
        .collect()
}

/// The templates each job renders, for its key: `label` (CAI and CoT, or
/// RLAIF), `rate`, `judge`, and the search of `solve` and `sweep`.
pub const LABEL_CAI: &[&str] = &["cai_pairwise"];
pub const LABEL_RLAIF: &[&str] = &["rlaif"];
pub const RATE: &[&str] = &["rate"];
pub const JUDGE: &[&str] = &["judge"];
pub const SEARCH: &[&str] = &qstar_search::Prompts::NAMES;

/// The templates a job renders: built in, or replaced from `--prompts`.
#[derive(Debug, Clone, Default)]
pub struct PromptSet {
    pub feedback: qstar_feedback::Prompts,
    pub search: qstar_search::Prompts,
    /// The SHA-256 of each file whose template differs from the built-in
    /// one, by template name.
    changed: BTreeMap<String, String>,
}

impl PromptSet {
    /// The built-in templates, with those of `args.prompts` in their place.
    /// An entry that is not a known `<name>.j2`, an unreadable file or a
    /// template that does not parse is a usage error naming the file.
    pub fn load(args: &PromptArgs) -> Result<Self> {
        let mut set = PromptSet::default();
        let Some(dir) = &args.prompts else {
            return Ok(set);
        };
        let files = qstar_core::prompt_files(dir, &names()).map_err(UsageError)?;
        for (name, path, source) in files {
            let builtin = builtin_source(&name);
            let sha256 = qstar_store::sha256_hex(source.as_bytes());
            let unchanged = builtin.as_deref() == Some(source.as_str());
            let result = if qstar_feedback::Prompts::NAMES.contains(&name.as_str()) {
                set.feedback.set(&name, source)
            } else {
                set.search.set(&name, source)
            };
            result.map_err(|e| UsageError(format!("{}: {e}", path.display())))?;
            // A copy of the built-in template renders the same prompts, so
            // it leaves the job (and its key) as it was.
            if !unchanged {
                set.changed.insert(name, sha256);
            }
        }
        Ok(set)
    }

    /// Adds to a job's configuration the SHA-256 of each replaced template
    /// among `used` (the ones the job renders) under `prompts`. Nothing is
    /// added when none of them is replaced, so the configuration, and with
    /// it the job's key, stays what it is without `--prompts`.
    pub fn add_to(&self, resolved: &mut Value, used: &[&str]) {
        let replaced: BTreeMap<&str, &str> = self
            .changed
            .iter()
            .filter(|(name, _)| used.contains(&name.as_str()))
            .map(|(name, sha)| (name.as_str(), sha.as_str()))
            .collect();
        if !replaced.is_empty() {
            resolved["prompts"] = json!(replaced);
        }
    }
}

/// The built-in source of the template `name`.
fn builtin_source(name: &str) -> Option<String> {
    let feedback = qstar_feedback::Prompts::builtin();
    let search = qstar_search::Prompts::builtin();
    feedback
        .source(name)
        .or_else(|| search.source(name))
        .map(str::to_string)
}

#[derive(Args)]
pub struct ExportArgs {
    /// The directory to write NAME.j2 files into (made when missing).
    pub dir: PathBuf,
    /// Replace files that are already there.
    #[arg(long)]
    pub force: bool,
}

/// `qstar prompts export DIR`: every built-in template as `DIR/<name>.j2`,
/// ready to edit and pass back with `--prompts DIR`.
pub fn export(args: ExportArgs) -> Result<()> {
    let names = names();
    let targets: Vec<(&str, PathBuf)> = names
        .iter()
        .map(|n| (*n, args.dir.join(format!("{n}.j2"))))
        .collect();
    if !args.force {
        if let Some((_, path)) = targets.iter().find(|(_, p)| p.exists()) {
            return Err(UsageError(format!(
                "{} exists; pass --force to replace the templates in {}",
                path.display(),
                args.dir.display()
            ))
            .into());
        }
    }
    std::fs::create_dir_all(&args.dir)
        .with_context(|| format!("creating {}", args.dir.display()))?;
    for (name, path) in &targets {
        let source = builtin_source(name)
            .with_context(|| format!("no built-in template is named {name}"))?;
        std::fs::write(path, source).with_context(|| format!("writing {}", path.display()))?;
    }
    let text = Text::new().line(format!(
        "wrote {} templates ({}) → {}",
        targets.len(),
        names.join(", "),
        args.dir.display()
    ));
    Reporter::new(false).summary(&json!({}), &text)
}

#[cfg(test)]
mod tests {
    use super::*;
    use sha2::{Digest, Sha256};

    fn sha(text: &str) -> String {
        Sha256::digest(text.as_bytes())
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect()
    }

    #[test]
    fn only_the_replaced_templates_a_job_renders_enter_its_key() {
        let dir = tempfile::tempdir().expect("tmp");
        std::fs::write(dir.path().join("rate.j2"), "Rate {{ reply }}.").expect("write");
        std::fs::write(dir.path().join("revision.j2"), "Again: {{ question }}").expect("write");
        let copy = builtin_source("step_judge").expect("built in");
        std::fs::write(dir.path().join("step_judge.j2"), &copy).expect("write");
        let set = PromptSet::load(&PromptArgs {
            prompts: Some(dir.path().to_path_buf()),
        })
        .expect("loads");
        assert_eq!(set.feedback.source("rate"), Some("Rate {{ reply }}."));
        assert_eq!(set.search.source("revision"), Some("Again: {{ question }}"));
        assert_eq!(set.search.source("step_judge"), Some(copy.as_str()));

        let keyed = |used: &[&str]| {
            let mut v = json!({"method": "m"});
            set.add_to(&mut v, used);
            v
        };
        assert_eq!(
            keyed(RATE),
            json!({"method": "m", "prompts": {"rate": sha("Rate {{ reply }}.")}})
        );
        // The copy of the built-in step judge is not a replacement.
        assert_eq!(
            keyed(SEARCH),
            json!({"method": "m", "prompts": {"revision": sha("Again: {{ question }}")}})
        );
        // A job whose templates are all built in keeps its configuration.
        assert_eq!(keyed(JUDGE), json!({"method": "m"}));
        assert_eq!(keyed(LABEL_CAI), json!({"method": "m"}));
        let mut v = json!({"method": "m"});
        PromptSet::default().add_to(&mut v, SEARCH);
        assert_eq!(v, json!({"method": "m"}));
    }
}
