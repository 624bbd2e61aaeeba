//! The tree-sitter queries: `chunks.scm` decides where chunks begin and end, and
//! `functions.scm` names functions (what the refactor action rewrites).
//!
//! Code names captures (`@chunk`, `@name`, `@function`, ...); the `.scm` files decide
//! what they match. The repository's files are compiled in (see
//! [`crate::language`]); a configured directory can replace a language's
//! `chunks.scm` at start.

use std::path::Path;
use std::sync::LazyLock;

use tree_sitter::Query;

use crate::{ContextError, Language};

/// The query files each parsed language has, by purpose.
pub const QUERY_NAMES: [&str; 2] = ["chunks", "functions"];

/// The built-in source of a query, if the language has one.
pub fn default_query(language: Language, name: &str) -> Option<&'static str> {
    let spec = language.spec()?;
    match name {
        "chunks" => Some(spec.chunks_query),
        "functions" => Some(spec.functions_query),
        _ => None,
    }
}

/// A query's whole source: `source` after the built-in `name` queries of the
/// languages its first line names (`; inherits: javascript`), as helix's query
/// files do. TypeScript's grammar extends JavaScript's, so its queries add to
/// JavaScript's instead of repeating them.
fn with_inherited(
    language: Language,
    source: &str,
    name: &str,
    origin: &str,
) -> Result<String, ContextError> {
    let mut full = String::new();
    let first_line = source.lines().next().unwrap_or_default();
    if let Some(parents) = first_line.strip_prefix("; inherits:") {
        for parent in parents.split(',').map(str::trim) {
            let inherited = Language::from_name(parent);
            let parent_source = default_query(inherited, name)
                .filter(|_| inherited != language)
                .ok_or_else(|| ContextError::CompileQuery {
                    language,
                    origin: origin.to_owned(),
                    message: format!("it inherits from `{parent}`, which has no {name} query"),
                })?;
            full.push_str(&with_inherited(inherited, parent_source, name, origin)?);
            full.push('\n');
        }
    }
    full.push_str(source);
    Ok(full)
}

/// Compiles the `name` query `source` for `language`; `origin` names it in errors.
fn compile(
    language: Language,
    source: &str,
    name: &str,
    origin: &str,
) -> Result<Query, ContextError> {
    let grammar = language.grammar().ok_or_else(|| ContextError::Grammar {
        language,
        message: "no grammar".into(),
    })?;
    let source = with_inherited(language, source, name, origin)?;
    Query::new(&grammar, &source).map_err(|err| ContextError::CompileQuery {
        language,
        origin: origin.to_owned(),
        message: format!(
            "row {}, column {}: {}",
            err.row + 1,
            err.column + 1,
            err.message
        ),
    })
}

/// The index of a capture the engine cannot do without.
fn required(
    query: &Query,
    language: Language,
    origin: &str,
    capture: &'static str,
) -> Result<u32, ContextError> {
    query
        .capture_index_for_name(capture)
        .ok_or_else(|| ContextError::MissingCapture {
            language,
            origin: origin.to_owned(),
            capture,
        })
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
        let query = compile(language, source, "chunks", origin)?;
        Ok(ChunkQuery {
            chunk: required(&query, language, origin, "chunk")?,
            name: required(&query, language, origin, "name")?,
            leading: query.capture_index_for_name("leading"),
            query,
        })
    }

    /// Loads `dir/<language>/chunks.scm` when `dir` has one, the built-in query
    /// otherwise.
    pub fn load(language: Language, dir: Option<&Path>) -> Result<Self, ContextError> {
        if let Some(path) = dir.map(|dir| dir.join(language.name()).join("chunks.scm")) {
            if path.is_file() {
                let source =
                    std::fs::read_to_string(&path).map_err(|error| ContextError::ReadQuery {
                        path: path.clone(),
                        error,
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

/// A compiled `functions.scm`: which nodes are functions, their names and
/// parameters, the wrapper that belongs to them (Python's decorators), whether they
/// are async, and the containers (class, impl, trait) that make them methods
/// (`@method` marks a definition that is a method whatever encloses it).
#[derive(Debug)]
pub struct FunctionQuery {
    pub(crate) query: Query,
    pub(crate) function: u32,
    pub(crate) name: u32,
    pub(crate) parameters: Option<u32>,
    pub(crate) wrapper: Option<u32>,
    pub(crate) is_async: Option<u32>,
    pub(crate) container: Option<u32>,
    pub(crate) method: Option<u32>,
}

impl FunctionQuery {
    /// Compiles `source` for `language`; `origin` names it in errors.
    pub fn compile(language: Language, source: &str, origin: &str) -> Result<Self, ContextError> {
        let query = compile(language, source, "functions", origin)?;
        Ok(FunctionQuery {
            function: required(&query, language, origin, "function")?,
            name: required(&query, language, origin, "name")?,
            parameters: query.capture_index_for_name("parameters"),
            wrapper: query.capture_index_for_name("wrapper"),
            is_async: query.capture_index_for_name("async"),
            container: query.capture_index_for_name("container"),
            method: query.capture_index_for_name("method"),
            query,
        })
    }

    /// The built-in `functions.scm` of `language`, compiled once per process: finding
    /// functions needs no engine, only a document. `None` for `Other`, or if the
    /// built-in query does not compile (a test makes sure every one does, and
    /// [`crate::ContextEngine::new`] fails if one does not).
    pub fn built_in(language: Language) -> Result<&'static FunctionQuery, ContextError> {
        static COMPILED: LazyLock<Vec<Result<FunctionQuery, ContextError>>> = LazyLock::new(|| {
            Language::PARSED
                .iter()
                .map(|&language| {
                    let source = default_query(language, "functions").unwrap_or_default();
                    let origin = format!("built-in {language}/functions.scm");
                    FunctionQuery::compile(language, source, &origin)
                })
                .collect()
        });
        match COMPILED.get(language as usize) {
            Some(Ok(query)) => Ok(query),
            // The stored error cannot be handed out twice; its message can.
            Some(Err(err)) => Err(ContextError::BuiltInQuery {
                language,
                message: err.to_string(),
            }),
            None => Err(ContextError::Grammar {
                language,
                message: "no grammar".into(),
            }),
        }
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
        for &language in Language::PARSED {
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
            FunctionQuery::built_in(language).unwrap();
        }
        assert!(compiled >= 2 * Language::PARSED.len());
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

        // A query may build on another language's built-in one, not on nothing.
        std::fs::write(
            dir.join("python/chunks.scm"),
            "; inherits: cobol\n(class_definition name: (identifier) @name) @chunk",
        )
        .unwrap();
        let err = ChunkQuery::load(Language::Python, Some(&dir)).unwrap_err();
        assert!(err.to_string().contains("inherits from `cobol`"), "{err}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
