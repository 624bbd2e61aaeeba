//! Cerebrum's context engine: decides what the completion model sees.
//!
//! Text, a language, a cursor (a byte offset) and an optional instruction go in; a
//! fill-in-the-middle context or an instruction-first prompt, with statistics, comes
//! out. The engine knows nothing of LSP or HTTP: positions are UTF-8 byte offsets
//! into the document text, and the callers convert at their edges.
//!
//! The pipeline, per request:
//!
//! 1. parse with tree-sitter (kept per [`Document`], re-parsed incrementally),
//! 2. chunk at definition boundaries ([`chunk`]), falling back to line-cut blocks,
//! 3. deduplicate by a fingerprint of the whitespace-normalised chunk ([`dedup`]),
//! 4. rank with BM25 over split identifiers ([`rank`]),
//! 5. select the top chunks within a budget and assemble ([`prompt`]).

pub mod chunk;
mod config;
pub mod dedup;
mod document;
mod engine;
mod function;
mod instruction;
mod language;
pub mod position;
pub mod prompt;
mod queries;
pub mod rank;
mod similar;

pub use config::{EngineConfig, ModelWindows};
pub use document::Document;
pub use engine::{ContextEngine, ContextOptions};
pub use function::{
    dedent, enclosing_function, functions_in, rewrite_functions, validate_async_rewrite,
    validate_rewrite, FunctionInfo, RewriteError, RewriteRules,
};
pub use instruction::{extract_code_block, extract_instruction};
pub use language::{Language, LanguageSpec};
pub use position::{byte_offset_at, line_column};
pub use prompt::{render_text, Context, ContextStats, ExtraChunk, Mode};
pub use queries::{ChunkQuery, FunctionQuery, QUERY_NAMES};

use std::path::PathBuf;

/// Why the engine could not be built. Requests never fail: broken user code is
/// data, so only configuration (the query files) can go wrong, and only at start.
#[derive(Debug, thiserror::Error)]
pub enum ContextError {
    /// The I/O error is in the message only (not also a `source`, said twice).
    #[error("cannot read query file {path}: {error}")]
    ReadQuery {
        path: PathBuf,
        error: std::io::Error,
    },
    #[error("query {origin} for {language} does not compile: {message}")]
    CompileQuery {
        language: Language,
        origin: String,
        message: String,
    },
    #[error("query {origin} for {language} lacks the required capture @{capture}")]
    MissingCapture {
        language: Language,
        origin: String,
        capture: &'static str,
    },
    #[error("invalid engine config: {field}: {message}")]
    InvalidConfig {
        field: &'static str,
        message: String,
    },
    #[error("{message}")]
    BuiltInQuery { language: Language, message: String },
    #[error("tree-sitter grammar for {language} cannot be loaded: {message}")]
    Grammar { language: Language, message: String },
}

#[cfg(test)]
mod tests;
