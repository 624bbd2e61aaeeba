//! The tree-sitter queries that decide where chunks begin and end.
//!
//! Code names captures (`@chunk`, `@name`, `@leading`); the `.scm` files decide what
//! they match. The repository's files are compiled in; a configured directory can
//! replace them per language at start.

use std::path::Path;

use tree_sitter::Query;

use crate::{ContextError, Language};

/// The query files each parsed language has, by purpose.
pub const QUERY_NAMES: [&str; 1] = ["chunks"];

const PYTHON_CHUNKS: &str = include_str!("../../../queries/python/chunks.scm");
const RUST_CHUNKS: &str = include_str!("../../../queries/rust/chunks.scm");

/// The built-in source of a query, if the language has one.
pub fn default_query(language: Language, name: &str) -> Option<&'static str> {
    match (language, name) {
        (Language::Python, "chunks") => Some(PYTHON_CHUNKS),
        (Language::Rust, "chunks") => Some(RUST_CHUNKS),
        _ => None,
    }
}

/// A compiled `chunks.scm` with its capture indices looked up once.
#[derive(Debug)]
pub struct ChunkQuery {
    pub(crate) query: Query,
    pub(crate) chunk: u32,
    pub(crate) name: u32,
    pub(crate) leading: Option<u32>,
}

impl ChunkQuery {
    /// Compiles `source` for `language`; `origin` names it in errors.
    pub fn compile(language: Language, source: &str, origin: &str) -> Result<Self, ContextError> {
        let grammar = language.grammar().ok_or_else(|| ContextError::Grammar {
            language,
            message: "no grammar".into(),
        })?;
        let query = Query::new(&grammar, source).map_err(|err| ContextError::CompileQuery {
            language,
            origin: origin.to_owned(),
            message: format!(
                "row {}, column {}: {}",
                err.row + 1,
                err.column + 1,
                err.message
            ),
        })?;
        let capture = |capture: &'static str| {
            query
                .capture_index_for_name(capture)
                .ok_or_else(|| ContextError::MissingCapture {
                    language,
                    origin: origin.to_owned(),
                    capture,
                })
        };
        let chunk = capture("chunk")?;
        let name = capture("name")?;
        let leading = query.capture_index_for_name("leading");
        Ok(ChunkQuery {
            query,
            chunk,
            name,
            leading,
        })
    }

    /// Loads `dir/<language>/chunks.scm` when `dir` has one, the built-in query
    /// otherwise.
    pub fn load(language: Language, dir: Option<&Path>) -> Result<Self, ContextError> {
        if let Some(path) = dir.map(|dir| dir.join(language.name()).join("chunks.scm")) {
            if path.is_file() {
                let source =
                    std::fs::read_to_string(&path).map_err(|source| ContextError::ReadQuery {
                        path: path.clone(),
                        source,
                    })?;
                return Self::compile(language, &source, &path.display().to_string());
            }
        }
        let source = default_query(language, "chunks").ok_or_else(|| ContextError::Grammar {
            language,
            message: "no built-in chunks query".into(),
        })?;
        Self::compile(
            language,
            source,
            &format!("built-in {}/chunks.scm", language),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every query file in the repository compiles against its grammar and has the
    /// captures the engine needs.
    #[test]
    fn every_query_compiles() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../queries");
        let mut compiled = 0;
        for language in Language::PARSED {
            let dir = root.join(language.name());
            for entry in std::fs::read_dir(&dir).unwrap() {
                let path = entry.unwrap().path();
                if path.extension().is_some_and(|ext| ext == "scm") {
                    let source = std::fs::read_to_string(&path).unwrap();
                    let grammar = language.grammar().unwrap();
                    if let Err(err) = Query::new(&grammar, &source) {
                        panic!("{}: {err}", path.display());
                    }
                    compiled += 1;
                }
            }
            for name in QUERY_NAMES {
                let built_in = default_query(language, name).unwrap();
                let on_disk = std::fs::read_to_string(dir.join(format!("{name}.scm"))).unwrap();
                assert_eq!(built_in, on_disk, "{language}/{name}.scm");
            }
            ChunkQuery::load(language, None).unwrap();
        }
        assert!(compiled >= 2);
    }

    #[test]
    fn queries_dir_replaces_the_built_in_query() {
        let dir = std::env::temp_dir().join(format!("cerebrum-queries-{}", std::process::id()));
        std::fs::create_dir_all(dir.join("python")).unwrap();
        std::fs::write(
            dir.join("python/chunks.scm"),
            "(class_definition name: (identifier) @name) @chunk",
        )
        .unwrap();
        let python = ChunkQuery::load(Language::Python, Some(&dir)).unwrap();
        assert_eq!(python.query.pattern_count(), 1);
        // Rust has no file there and keeps the built-in query.
        let rust = ChunkQuery::load(Language::Rust, Some(&dir)).unwrap();
        assert!(rust.query.pattern_count() > 1);

        std::fs::write(dir.join("python/chunks.scm"), "(class_definition) @chunk").unwrap();
        let err = ChunkQuery::load(Language::Python, Some(&dir)).unwrap_err();
        assert!(err.to_string().contains("@name"), "{err}");

        std::fs::write(dir.join("python/chunks.scm"), "(no_such_node) @chunk").unwrap();
        let err = ChunkQuery::load(Language::Python, Some(&dir)).unwrap_err();
        assert!(err.to_string().contains("does not compile"), "{err}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
