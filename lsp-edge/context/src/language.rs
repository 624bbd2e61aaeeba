//! The languages the engine parses, and how a name or a path maps to one.

use std::fmt;
use std::path::Path;

/// A language the engine knows. `Other` text is still chunked, by line-cut blocks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Language {
    Python,
    Rust,
    Other,
}

impl Language {
    /// Every language with a grammar, for tests and query loading.
    pub const PARSED: [Language; 2] = [Language::Python, Language::Rust];

    /// Maps an LSP language id, a file extension or a common name; unknown names
    /// give `Other`.
    pub fn from_name(name: &str) -> Language {
        match name
            .trim()
            .trim_start_matches('.')
            .to_ascii_lowercase()
            .as_str()
        {
            "python" | "py" | "pyi" | "python3" => Language::Python,
            "rust" | "rs" => Language::Rust,
            _ => Language::Other,
        }
    }

    /// Maps a file path by its extension.
    pub fn from_path(path: &Path) -> Language {
        path.extension()
            .and_then(|ext| ext.to_str())
            .map_or(Language::Other, Language::from_name)
    }

    /// The name used in query directories and code fences (`python`, `rust`).
    pub fn name(self) -> &'static str {
        match self {
            Language::Python => "python",
            Language::Rust => "rust",
            Language::Other => "other",
        }
    }

    /// The info string for a Markdown code fence; empty for `Other`.
    pub fn fence_tag(self) -> &'static str {
        match self {
            Language::Other => "",
            lang => lang.name(),
        }
    }

    pub(crate) fn grammar(self) -> Option<tree_sitter::Language> {
        match self {
            Language::Python => Some(tree_sitter_python::LANGUAGE.into()),
            Language::Rust => Some(tree_sitter_rust::LANGUAGE.into()),
            Language::Other => None,
        }
    }
}

impl fmt::Display for Language {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_paths_map_to_languages() {
        assert_eq!(Language::from_name("python"), Language::Python);
        assert_eq!(Language::from_name("PY"), Language::Python);
        assert_eq!(Language::from_name("rs"), Language::Rust);
        assert_eq!(Language::from_name("rust"), Language::Rust);
        assert_eq!(Language::from_name("go"), Language::Other);
        assert_eq!(
            Language::from_path(Path::new("src/app.py")),
            Language::Python
        );
        assert_eq!(Language::from_path(Path::new("lib.rs")), Language::Rust);
        assert_eq!(Language::from_path(Path::new("Makefile")), Language::Other);
    }
}
