//! The engine's typed configuration, with the defaults the issue asks for.

use std::collections::BTreeMap;
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
    /// A window that reaches its end of the document before its limits lends what
    /// it did not use to the other: near the top of a file the suffix reads further
    /// (the names an import block's lines bring in are used below it), near the end
    /// the prefix does.
    pub lend_unused_window: bool,
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
    /// Most snippets of code like the cursor's sent beside the windows of a
    /// fill-in-the-middle prompt: the `similar_lines` lines outside the windows
    /// most like the lines above the cursor, with as many lines after them (none
    /// by default).
    pub similar_snippets: usize,
    /// Lines compared for [`EngineConfig::similar_snippets`].
    pub similar_lines: usize,
    /// Least similarity (Jaccard index of the two texts' identifier words) a
    /// snippet needs.
    pub similar_min_score: f32,
    /// Most characters of one snippet.
    pub similar_max_chars: usize,
    /// How many lines the cursor may move from where a document's snippets were
    /// chosen before they are chosen again (0: on every new line); `prefix_max_lines`
    /// when not set. Snippets sit at the head of the prompt, so choosing them again
    /// can cost the whole prompt's cache.
    pub similar_keep_lines: Option<usize>,
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
    /// Windows for the prompts of one model, by the name the backend knows it by
    /// (`[context.models."qwen2.5-coder-1.5b"]`), over the fields above. A model
    /// named neither here nor in [`ModelWindows::BUILT_IN`] gets the fields above.
    pub models: BTreeMap<String, ModelWindows>,
}

/// The windows of one model's prompts, and what goes beside them; each field given
/// replaces the [`EngineConfig`] field of the same name.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ModelWindows {
    pub prefix_max_lines: Option<usize>,
    pub prefix_max_chars: Option<usize>,
    pub suffix_max_lines: Option<usize>,
    pub suffix_max_chars: Option<usize>,
    pub min_chars_to_chunk: Option<usize>,
    pub lend_unused_window: Option<bool>,
    pub similar_snippets: Option<usize>,
}

impl ModelWindows {
    /// Windows measured for a model whose best prompt is not the default one; an
    /// entry of the same name in [`EngineConfig::models`] replaces one of these.
    ///
    /// The 1.5B model scored as well on half the default windows as on the whole
    /// (0.490 against 0.469 exact match over 96 holes) at half the prompt tokens, so
    /// half the cold prompt; the 0.5B lost a quarter of its right answers on them
    /// (docs/benchmarks.md, "Completion quality", seventeenth pass). On those windows
    /// it got more lines right (0.547 against 0.500 over 192 holes, at 633 prompt
    /// tokens against 438) with files under 5,000 characters sent whole, the window
    /// that reaches the file's end lending the rest to the other, and up to two
    /// snippets of code like the cursor's (thirty-fifth pass).
    pub const BUILT_IN: &[(&str, ModelWindows)] = &[(
        "qwen2.5-coder-1.5b",
        ModelWindows {
            prefix_max_lines: Some(50),
            prefix_max_chars: Some(1_750),
            suffix_max_lines: Some(20),
            suffix_max_chars: Some(600),
            min_chars_to_chunk: Some(5_000),
            lend_unused_window: Some(true),
            similar_snippets: Some(2),
        },
    )];
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
            lend_unused_window: false,
            min_chars_to_chunk: 5_000,
            min_saving: 0.10,
            fallback_block_chars: 1_000,
            fallback_overlap_chars: 150,
            max_error_fraction: 0.5,
            cursor_context_lines: 8,
            enclosing_max_chars: 0,
            similar_snippets: 0,
            similar_lines: 5,
            similar_min_score: 0.3,
            similar_max_chars: 600,
            similar_keep_lines: None,
            chunks_in_prefix: false,
            proximity_weight: 0.0,
            frame_boost: 0.0,
            queries_dir: None,
            models: BTreeMap::new(),
        }
    }
}

impl EngineConfig {
    /// The windows for `model`: the configured ones, else the built-in ones.
    pub fn windows_for(&self, model: &str) -> Option<&ModelWindows> {
        self.models.get(model).or_else(|| {
            ModelWindows::BUILT_IN
                .iter()
                .find(|(name, _)| *name == model)
                .map(|(_, windows)| windows)
        })
    }

    /// This configuration with `windows` over its own; the result names no models.
    pub(crate) fn with_windows(&self, windows: &ModelWindows) -> EngineConfig {
        let pick = |own: usize, given: Option<usize>| given.unwrap_or(own);
        EngineConfig {
            prefix_max_lines: pick(self.prefix_max_lines, windows.prefix_max_lines),
            prefix_max_chars: pick(self.prefix_max_chars, windows.prefix_max_chars),
            suffix_max_lines: pick(self.suffix_max_lines, windows.suffix_max_lines),
            suffix_max_chars: pick(self.suffix_max_chars, windows.suffix_max_chars),
            min_chars_to_chunk: pick(self.min_chars_to_chunk, windows.min_chars_to_chunk),
            lend_unused_window: windows
                .lend_unused_window
                .unwrap_or(self.lend_unused_window),
            similar_snippets: pick(self.similar_snippets, windows.similar_snippets),
            models: BTreeMap::new(),
            ..self.clone()
        }
    }

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
        if !(0.0..=1.0).contains(&self.similar_min_score) {
            return invalid(
                "similar_min_score",
                format!("{} is not within 0..=1", self.similar_min_score),
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

    #[test]
    fn model_windows_replace_only_the_fields_given() {
        let config: EngineConfig = toml::from_str(
            r#"
            prefix_max_lines = 80
            [models."coder"]
            prefix_max_chars = 900
            [models."other-coder"]
            lend_unused_window = true
            similar_snippets = 3
            "#,
        )
        .unwrap();
        let coder = config.with_windows(config.windows_for("coder").unwrap());
        assert_eq!((coder.prefix_max_lines, coder.prefix_max_chars), (80, 900));
        assert_eq!(coder.suffix_max_chars, config.suffix_max_chars);
        assert_eq!(
            (coder.lend_unused_window, coder.similar_snippets),
            (false, 0)
        );
        assert!(coder.models.is_empty());
        let other = config.with_windows(config.windows_for("other-coder").unwrap());
        assert_eq!(
            (other.lend_unused_window, other.similar_snippets),
            (true, 3)
        );
        assert_eq!(other.prefix_max_lines, 80);
        assert_eq!(config.windows_for("other"), None);
    }

    #[test]
    fn configured_windows_replace_built_in_ones() {
        let (name, built_in) = &ModelWindows::BUILT_IN[0];
        let mut config = EngineConfig::default();
        assert_eq!(config.windows_for(name), Some(built_in));
        config
            .models
            .insert(name.to_string(), ModelWindows::default());
        let own = config.with_windows(config.windows_for(name).unwrap());
        assert_eq!(own.prefix_max_chars, config.prefix_max_chars);
    }

    #[test]
    fn unknown_window_fields_are_refused() {
        let err = toml::from_str::<EngineConfig>("[models.m]\nprefix_lines = 3\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("prefix_lines"), "{err}");
    }
}
