//! The engine's typed configuration, with the defaults the issue asks for.

use std::path::PathBuf;

/// Limits and switches for chunking, selection and prompt windows.
///
/// Sizes are counted in characters (Unicode scalar values), except where a field
/// says otherwise. Deserialises with every field optional.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(default)]
pub struct EngineConfig {
    /// Most chunks sent beside the windows of a fill-in-the-middle prompt. None by
    /// default: on seeds that no earlier choice was made on, longer windows alone
    /// scored higher than the same windows shortened for chunks, with both models
    /// (docs/benchmarks.md, "Completion quality", tenth pass).
    pub max_chunks: usize,
    /// Most chunks in an instruction prompt (the enclosing and the selected chunks
    /// count, and are always kept).
    pub instruction_max_chunks: usize,
    /// Most characters of selected chunks.
    pub budget_chars: usize,
    /// A chunk larger than this splits at nested definitions, then at lines.
    pub max_chunk_chars: usize,
    /// Whole lines of prefix before the cursor line.
    pub prefix_max_lines: usize,
    /// The prefix window starts on a multiple of this many lines, so that it moves
    /// in steps rather than at every Enter (the KV cache stays valid meanwhile); 1
    /// slides it line by line.
    pub window_step_lines: usize,
    pub prefix_max_chars: usize,
    /// Whole lines of suffix after the cursor line (kept short: the suffix matters
    /// less to the model than the prefix).
    pub suffix_max_lines: usize,
    pub suffix_max_chars: usize,
    /// Documents shorter than this are sent whole: a file of a few kilobytes costs
    /// about what a chunked prompt does, and every line of it is in view
    /// (docs/benchmarks.md, "Completion quality", fourth pass).
    pub min_chars_to_chunk: usize,
    /// Chunking that saves less than this fraction of the characters sends the
    /// document whole instead.
    pub min_saving: f32,
    /// Block size and overlap for text without a usable parse.
    pub fallback_block_chars: usize,
    pub fallback_overlap_chars: usize,
    /// A parse whose ERROR nodes cover more than this fraction of the text falls
    /// back to blocks.
    pub max_error_fraction: f32,
    /// Lines around the cursor whose identifiers form the ranking query when there
    /// is no instruction.
    pub cursor_context_lines: usize,
    /// The prefix window reaches back to the start of the definition that holds
    /// the cursor when that adds at most this many characters (0: never), so the
    /// model sees the function it is completing whole.
    pub enclosing_max_chars: usize,
    /// Selected chunks go at the head of the prefix, in document order, as the
    /// file's own text, instead of as separate `<|file_sep|>` files.
    pub chunks_in_prefix: bool,
    /// Added to a chunk's score for nearness to the cursor (FIM only):
    /// `proximity_weight * 20 / (20 + lines between the chunk and the windows)`.
    pub proximity_weight: f32,
    /// Added to the score of the chunks that frame the definition holding the
    /// cursor (FIM only): its class or impl's own lines, and the constructor
    /// (`__init__`, `new`) beside it.
    pub frame_boost: f32,
    /// A directory with `<language>/chunks.scm` files that replace the built-in
    /// queries; languages without a file there keep the built-in one.
    pub queries_dir: Option<PathBuf>,
}

impl Default for EngineConfig {
    fn default() -> Self {
        EngineConfig {
            max_chunks: 0,
            instruction_max_chunks: 3,
            budget_chars: 4_000,
            max_chunk_chars: 1_200,
            prefix_max_lines: 100,
            window_step_lines: 16,
            prefix_max_chars: 3_500,
            suffix_max_lines: 40,
            suffix_max_chars: 1_200,
            min_chars_to_chunk: 5_000,
            min_saving: 0.10,
            fallback_block_chars: 1_000,
            fallback_overlap_chars: 150,
            max_error_fraction: 0.5,
            cursor_context_lines: 8,
            enclosing_max_chars: 0,
            chunks_in_prefix: false,
            proximity_weight: 0.0,
            frame_boost: 0.0,
            queries_dir: None,
        }
    }
}

impl EngineConfig {
    /// Checks the fields that would make the engine misbehave, naming the bad one.
    pub(crate) fn validate(&self) -> Result<(), crate::ContextError> {
        let invalid = |field: &'static str, message: String| {
            Err(crate::ContextError::InvalidConfig { field, message })
        };
        if self.max_chunk_chars == 0 {
            return invalid("max_chunk_chars", "must be at least 1".into());
        }
        if self.fallback_block_chars == 0 {
            return invalid("fallback_block_chars", "must be at least 1".into());
        }
        if self.fallback_overlap_chars >= self.fallback_block_chars {
            return invalid(
                "fallback_overlap_chars",
                format!(
                    "{} must be smaller than fallback_block_chars ({})",
                    self.fallback_overlap_chars, self.fallback_block_chars
                ),
            );
        }
        if !(0.0..=1.0).contains(&self.min_saving) {
            return invalid(
                "min_saving",
                format!("{} is not within 0..=1", self.min_saving),
            );
        }
        if !(0.0..=1.0).contains(&self.max_error_fraction) {
            return invalid(
                "max_error_fraction",
                format!("{} is not within 0..=1", self.max_error_fraction),
            );
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn partial_config_keeps_defaults() {
        let config: EngineConfig =
            serde_json::from_str(r#"{"max_chunks": 5, "queries_dir": "/etc/q"}"#).unwrap();
        assert_eq!(config.max_chunks, 5);
        assert_eq!(config.min_chars_to_chunk, 5_000);
        assert_eq!(config.queries_dir, Some(PathBuf::from("/etc/q")));
    }

    #[test]
    fn validation_names_the_bad_field() {
        let config = EngineConfig {
            fallback_overlap_chars: 2_000,
            ..EngineConfig::default()
        };
        let err = config.validate().unwrap_err().to_string();
        assert!(err.contains("fallback_overlap_chars"), "{err}");
    }
}
