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
            serde_json::from_str(&text).map_err(|e| e.to_string())
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
