//! A constitution is data: labeling principles and critique/revision pairs,
//! read from TOML or JSON.

use std::path::Path;

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CritiqueRevision {
    pub critique: String,
    pub revision: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Constitution {
    pub principles: Vec<String>,
    #[serde(default)]
    pub critiques: Vec<CritiqueRevision>,
    /// Worked examples shown before a labeling question (`--few-shot K`).
    #[serde(default)]
    pub few_shot: Vec<FewShot>,
}

/// A solved labeling question: a conversation, two replies, the better one
/// ("A" or "B") and, for chain-of-thought or RLAIF rationales, why.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FewShot {
    /// The conversation as "Human: …" / "Assistant: …" lines.
    pub conversation: String,
    pub response_a: String,
    pub response_b: String,
    pub preferred: String,
    #[serde(default)]
    pub rationale: Option<String>,
}

const DEFAULT: &str = include_str!("../constitutions/default.toml");

impl Constitution {
    /// qstar's own constitution: 16 principles and 16 critique/revision pairs.
    pub fn default_constitution() -> Self {
        toml::from_str(DEFAULT)
            .unwrap_or_else(|e| panic!("the built-in constitution is malformed: {e}"))
    }

    /// Reads a constitution from a `.toml` or `.json` file.
    pub fn load(path: &Path) -> Result<Self, String> {
        let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
        let parsed: Result<Constitution, String> = if path.extension().is_some_and(|e| e == "json")
        {
            // Our own layout, or a Constitutional-AI principle index.
            serde_json::from_str::<serde_json::Value>(&text)
                .map_err(|e| e.to_string())
                .and_then(|v| {
                    if v.get("preference_principles").is_some() {
                        from_cai_index(&v)
                    } else {
                        serde_json::from_value(v).map_err(|e| e.to_string())
                    }
                })
        } else {
            toml::from_str(&text).map_err(|e| e.to_string())
        };
        let c = parsed.map_err(|e| format!("{}: {e}", path.display()))?;
        if c.principles.is_empty() {
            return Err(format!(
                "{}: the constitution has no principles",
                path.display()
            ));
        }
        Ok(c)
    }
}

/// Reads the layout of a Constitutional-AI principle index: a list of
/// `preference_principles` ({index, principle}) and of `critique_revision`
/// ({critique_request, revision_request}), with the paper's prompt markers
/// ("Options:", "CritiqueRequest:", …) around the text.
fn from_cai_index(v: &serde_json::Value) -> Result<Constitution, String> {
    let strip = |s: &str, markers: &[&str]| {
        let mut t = s.trim().to_string();
        for m in markers {
            t = t.replace(m, "");
        }
        t.trim().to_string()
    };
    let principles = v["preference_principles"]
        .as_array()
        .ok_or("`preference_principles` is not a list")?
        .iter()
        .map(|p| {
            p["principle"]
                .as_str()
                .map(|s| strip(s, &["Options:"]))
                .ok_or("a principle is not a string")
        })
        .collect::<Result<Vec<_>, _>>()?;
    let critiques = v["critique_revision"]
        .as_array()
        .map(|list| {
            list.iter()
                .filter_map(|c| {
                    Some(CritiqueRevision {
                        critique: strip(
                            c["critique_request"].as_str()?,
                            &["CritiqueRequest:", "Critique:"],
                        ),
                        revision: strip(
                            c["revision_request"].as_str()?,
                            &["RevisionRequest:", "Revision:"],
                        ),
                    })
                })
                .collect()
        })
        .unwrap_or_default();
    Ok(Constitution {
        principles,
        critiques,
        few_shot: Vec::new(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_constitution_has_sixteen_of_each() {
        let c = Constitution::default_constitution();
        assert_eq!(c.principles.len(), 16);
        assert_eq!(c.critiques.len(), 16);
        assert!(c.principles.iter().all(|p| p.ends_with('?')));
    }
}
