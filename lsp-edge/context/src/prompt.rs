//! What the engine hands out: a fill-in-the-middle context or an instruction-first
//! prompt, with statistics, and the bounded prefix and suffix windows.

use std::fmt::Write as _;
use std::ops::Range;

use crate::chunk::LineIndex;
use crate::{EngineConfig, Language};

/// How the context is meant to be used.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// Fill in the middle at a cursor: `extra`, then `prefix`, then `suffix`.
    Fim,
    /// An instruction-first prompt in `prompt`.
    Instruction,
}

/// A chunk from elsewhere in the document, sent ahead of the prefix as
/// `<|file_sep|>label\ntext`.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ExtraChunk {
    /// `path::symbol`, or `symbol` without a path.
    pub label: String,
    pub text: String,
}

/// What the pipeline did, for logs, the CLI and benchmarks.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct ContextStats {
    /// Chunks the document split into.
    pub chunks_total: usize,
    /// Distinct chunks after deduplication.
    pub chunks_unique: usize,
    /// Chunks in the result: extra chunks (FIM) or chunks in the prompt.
    pub chunks_selected: usize,
    /// Characters of the document (and of a separately given instruction).
    pub chars_before: usize,
    /// Characters sent: prefix, suffix and extra chunks with labels, or the prompt.
    pub chars_after: usize,
    /// `100 * (1 - chars_after / chars_before)`; negative when the prompt's
    /// framing outweighs a tiny document.
    pub reduction_percent: f32,
    pub elapsed_us: u64,
}

impl ContextStats {
    pub(crate) fn set_chars(&mut self, before: usize, after: usize) {
        self.chars_before = before;
        self.chars_after = after;
        self.reduction_percent = if before == 0 {
            0.0
        } else {
            let percent = 100.0 * (1.0 - after as f64 / before as f64);
            ((percent * 10.0).round() / 10.0) as f32
        };
    }
}

/// The engine's answer for one request.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Context {
    pub mode: Mode,
    /// Text before the cursor (FIM); empty in instruction mode.
    pub prefix: String,
    /// Text after the cursor (FIM); empty in instruction mode.
    pub suffix: String,
    /// Selected chunks in document order: extra context (FIM) or the chunks that
    /// make up the prompt's code (instruction mode).
    pub extra: Vec<ExtraChunk>,
    /// The instruction-first prompt (instruction mode only).
    pub prompt: Option<String>,
    pub instruction: Option<String>,
    pub stats: ContextStats,
}

/// Byte ranges of the prefix and suffix windows around a cursor.
///
/// The prefix is the cursor line up to the cursor plus whole lines before it, up to
/// `prefix_max_lines` lines and `prefix_max_chars` characters; the cursor line does
/// not count against the limits. The suffix is the rest of the cursor line plus whole
/// lines after it within its own limits. With `lend_unused_window`, a window that
/// reaches its end of the document before its limits lends what it did not use to the
/// other (near the top of a file the suffix reads further, near the end the prefix),
/// so the prompt is as large in the middle of a file as at its edges.
///
/// Both are laid out so that the prompt's text stays put while the user types, which
/// keeps the backend's KV cache valid:
/// - The prefix starts on a line that is a multiple of `window_step_lines` (the grid),
///   so it moves in steps of that many lines rather than one line per Enter; it holds
///   between `prefix_max_lines - window_step_lines` and `prefix_max_lines` lines. Only
///   where the grid cannot meet the character limit does it start at the first line
///   that fits.
/// - The suffix is counted from the cursor, so an Enter, which moves the cursor down
///   together with the text after it, leaves it unchanged (a suffix lent to by the
///   prefix loses a line at its far end now and then, which costs only that line).
pub(crate) fn windows(
    text: &str,
    lines: &LineIndex,
    cursor: usize,
    config: &EngineConfig,
) -> (Range<usize>, Range<usize>) {
    let window = Window {
        text,
        lines,
        cursor,
        cursor_line: lines.line_of(cursor),
    };
    let prefix_limits = Limits {
        lines: config.prefix_max_lines,
        chars: config.prefix_max_chars,
    };
    let suffix_limits = Limits {
        lines: config.suffix_max_lines,
        chars: config.suffix_max_chars,
    };
    let step = config.window_step_lines;
    let (mut prefix_start, prefix_spare) = window.prefix(prefix_limits, step);
    let (mut suffix_end, suffix_spare) = window.suffix(suffix_limits);
    if config.lend_unused_window {
        match (prefix_spare, suffix_spare) {
            (Some(spare), None) => suffix_end = window.suffix(suffix_limits.plus(spare)).0,
            (None, Some(spare)) => prefix_start = window.prefix(prefix_limits.plus(spare), step).0,
            // Both reach the document's ends, or neither does: nothing to lend.
            _ => {}
        }
    }
    (prefix_start..cursor, cursor..suffix_end)
}

/// A window's limits, or what a window left of them.
#[derive(Debug, Clone, Copy)]
struct Limits {
    lines: usize,
    chars: usize,
}

impl Limits {
    fn plus(self, other: Limits) -> Limits {
        Limits {
            lines: self.lines + other.lines,
            chars: self.chars + other.chars,
        }
    }
}

/// The text around a cursor, for laying out the windows.
struct Window<'a> {
    text: &'a str,
    lines: &'a LineIndex,
    cursor: usize,
    cursor_line: usize,
}

impl Window<'_> {
    fn chars(&self, range: Range<usize>) -> usize {
        self.text[range].chars().count()
    }

    /// Where the prefix starts, and what it left of `limits` when it reaches the
    /// start of the document (None when the limits stopped it).
    fn prefix(&self, limits: Limits, step: usize) -> (usize, Option<Limits>) {
        let &Window {
            text,
            lines,
            cursor,
            cursor_line,
        } = self;
        let line_start = lines.line_start(cursor_line);
        if self.chars(line_start..cursor) > limits.chars {
            return (nth_char_back(text, cursor, limits.chars), None);
        }
        let fits = |line: usize| self.chars(lines.line_start(line)..line_start) <= limits.chars;
        let step = step.max(1);
        let earliest = cursor_line.saturating_sub(limits.lines);
        let mut line = earliest.div_ceil(step) * step;
        while line < cursor_line && !fits(line) {
            line += step;
        }
        if line >= cursor_line && earliest < cursor_line {
            // No grid line fits: the first line that does, as near the limit as may be.
            line = earliest;
            while line < cursor_line && !fits(line) {
                line += 1;
            }
        }
        let start = lines.line_start(line.min(cursor_line));
        // Line 0 is reached only within the limits (it is at most `limits.lines` up and
        // fits), so what is left of them is the spare.
        let spare = (start == 0).then(|| Limits {
            lines: limits.lines.saturating_sub(cursor_line),
            chars: limits.chars.saturating_sub(self.chars(0..line_start)),
        });
        (start, spare)
    }

    /// Where the suffix ends, and what it left of `limits` when it reaches the end
    /// of the document (None when the limits stopped it).
    fn suffix(&self, limits: Limits) -> (usize, Option<Limits>) {
        let &Window {
            text,
            lines,
            cursor,
            cursor_line,
        } = self;
        let tail = self.chars(cursor..lines.line_end(cursor_line));
        if tail > limits.chars {
            return (nth_char_forward(text, cursor, limits.chars), None);
        }
        let mut used = tail;
        let mut line = cursor_line + 1;
        while line < lines.len() && line - cursor_line <= limits.lines {
            let size = self.chars(lines.line_start(line)..lines.line_end(line));
            if used + size > limits.chars {
                return (lines.line_start(line), None);
            }
            used += size;
            line += 1;
        }
        if line < lines.len() {
            return (lines.line_start(line), None);
        }
        let spare = Limits {
            lines: (limits.lines + cursor_line + 1).saturating_sub(line),
            chars: limits.chars - used,
        };
        (text.len(), Some(spare))
    }
}

fn nth_char_back(text: &str, from: usize, n: usize) -> usize {
    text[..from]
        .char_indices()
        .rev()
        .nth(n.saturating_sub(1))
        .map_or(0, |(i, _)| i)
}

fn nth_char_forward(text: &str, from: usize, n: usize) -> usize {
    text[from..]
        .char_indices()
        .nth(n)
        .map_or(text.len(), |(i, _)| from + i)
}

/// The instruction-first prompt:
///
/// ````text
/// # INSTRUCTION: Refactor to use async/await
///
/// Here is the code:
/// ```python
/// [selected chunks]
/// ```
///
/// Refactored code:
/// ```python
/// ````
pub(crate) fn instruction_prompt(language: Language, instruction: &str, code: &str) -> String {
    let fence = language.fence_tag();
    let newline = if code.ends_with('\n') { "" } else { "\n" };
    format!(
        "# INSTRUCTION: {instruction}\n\nHere is the code:\n```{fence}\n{code}{newline}```\n\n\
         Refactored code:\n```{fence}\n"
    )
}

/// A human-readable view of a context, for `lsp-edge context` without `--json`.
pub fn render_text(ctx: &Context) -> String {
    let mut out = String::new();
    let section = |out: &mut String, title: &str, body: &str| {
        let _ = writeln!(out, "--- {title} ---");
        out.push_str(body);
        if !body.is_empty() && !body.ends_with('\n') {
            out.push('\n');
        }
    };
    match ctx.mode {
        Mode::Fim => {
            out.push_str("mode: fim\n");
            for chunk in &ctx.extra {
                section(&mut out, &format!("extra: {}", chunk.label), &chunk.text);
            }
            section(&mut out, "prefix", &ctx.prefix);
            section(&mut out, "suffix", &ctx.suffix);
        }
        Mode::Instruction => {
            out.push_str("mode: instruction\n");
            if let Some(instruction) = &ctx.instruction {
                let _ = writeln!(out, "instruction: {instruction}");
            }
            let labels: Vec<&str> = ctx.extra.iter().map(|c| c.label.as_str()).collect();
            if !labels.is_empty() {
                let _ = writeln!(out, "chunks: {}", labels.join(", "));
            }
            section(&mut out, "prompt", ctx.prompt.as_deref().unwrap_or(""));
        }
    }
    let stats = &ctx.stats;
    let _ = writeln!(
        out,
        "--- stats ---\nchunks: {} found, {} unique, {} selected\n\
         chars: {} before, {} after, {:.1}% reduction\ntime: {} us",
        stats.chunks_total,
        stats.chunks_unique,
        stats.chunks_selected,
        stats.chars_before,
        stats.chars_after,
        stats.reduction_percent,
        stats.elapsed_us,
    );
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use expect_test::expect;

    #[test]
    fn windows_are_bounded_by_lines_and_chars() {
        let text = "l1\nl2\nl3\nl4 cur|sor\nl5\nl6\nl7\n";
        let cursor = text.find('|').unwrap();
        let config = EngineConfig {
            prefix_max_lines: 2,
            suffix_max_lines: 1,
            ..EngineConfig::default()
        };
        let lines = LineIndex::new(text);
        let (prefix, suffix) = windows(text, &lines, cursor, &config);
        assert_eq!(&text[prefix], "l2\nl3\nl4 cur");
        assert_eq!(&text[suffix], "|sor\nl5\n");

        let config = EngineConfig {
            prefix_max_chars: 7,
            suffix_max_chars: 5,
            ..EngineConfig::default()
        };
        let (prefix, suffix) = windows(text, &lines, cursor, &config);
        assert_eq!(&text[prefix], "l2\nl3\nl4 cur");
        assert_eq!(&text[suffix], "|sor\n");
    }

    #[test]
    fn the_prefix_window_moves_in_grid_steps_as_lines_are_typed() {
        let config = EngineConfig {
            prefix_max_lines: 20,
            window_step_lines: 8,
            ..EngineConfig::default()
        };
        let mut starts = Vec::new();
        for cursor_line in 20..40 {
            let text: String = (0..60).map(|i| format!("line {i}\n")).collect();
            let lines = LineIndex::new(&text);
            let cursor = lines.line_start(cursor_line) + 2;
            let (prefix, suffix) = windows(&text, &lines, cursor, &config);
            let first = lines.line_of(prefix.start);
            assert_eq!(prefix.start, lines.line_start(first), "whole lines");
            assert!(
                cursor_line - first <= 20 && cursor_line - first > 12,
                "{cursor_line}: {first}"
            );
            assert_eq!(first % 8, 0);
            assert_eq!(suffix.start, cursor);
            starts.push(first);
        }
        starts.dedup();
        assert_eq!(starts, [0, 8, 16, 24]);
    }

    #[test]
    fn an_enter_leaves_the_suffix_window_unchanged() {
        let config = EngineConfig::default();
        let before = "def f():\n    x = 1|\n    return x\n\nprint(f())\n";
        let after = "def f():\n    x = 1\n    |\n    return x\n\nprint(f())\n";
        let window = |text: &str| {
            let cursor = text.find('|').unwrap();
            let (_, suffix) = windows(text, &LineIndex::new(text), cursor, &config);
            text[suffix].to_owned()
        };
        assert_eq!(window(before), window(after));
    }

    #[test]
    fn lines_too_long_for_the_grid_still_fill_the_budget() {
        let config = EngineConfig {
            prefix_max_lines: 20,
            prefix_max_chars: 35,
            window_step_lines: 16,
            ..EngineConfig::default()
        };
        let text: String = (0..30).map(|i| format!("line {i:02} long\n")).collect();
        let lines = LineIndex::new(&text);
        let cursor = lines.line_start(25);
        let (prefix, _) = windows(&text, &lines, cursor, &config);
        assert_eq!(&text[prefix], "line 23 long\nline 24 long\n");
    }

    #[test]
    fn a_window_at_the_documents_end_lends_what_it_does_not_use() {
        let text: String = (0..40).map(|i| format!("line {i:02}\n")).collect();
        let lines = LineIndex::new(&text);
        let config = EngineConfig {
            prefix_max_lines: 10,
            prefix_max_chars: 1_000,
            suffix_max_lines: 4,
            suffix_max_chars: 1_000,
            window_step_lines: 1,
            lend_unused_window: true,
            ..EngineConfig::default()
        };
        let around = |cursor_line: usize, config: &EngineConfig| {
            let cursor = lines.line_start(cursor_line);
            let (prefix, suffix) = windows(&text, &lines, cursor, config);
            (lines.line_of(prefix.start), lines.line_of(suffix.end))
        };
        // Near the top: the prefix holds the 3 lines above and lends 7 to the suffix,
        // which reads the cursor line's rest and 4 + 7 lines below it.
        assert_eq!(around(3, &config), (0, 15));
        // Near the end: the suffix holds the 3 lines below (the last one empty) and
        // lends 1 to the prefix.
        let end = lines.line_of(text.len());
        assert_eq!(around(37, &config), (37 - 11, end));
        // In the middle, and without lending, each window keeps its own limits.
        assert_eq!(around(20, &config), (10, 25));
        let own = EngineConfig {
            lend_unused_window: false,
            ..config.clone()
        };
        assert_eq!(around(3, &own), (0, 8));
        assert_eq!(around(37, &own), (37 - 10, end));
        // Characters are lent as well as lines.
        let by_chars = EngineConfig {
            prefix_max_lines: 100,
            prefix_max_chars: 4 * 8,
            suffix_max_lines: 100,
            suffix_max_chars: 2 * 8,
            ..config.clone()
        };
        // The prefix uses 1 line of its 4 lines' characters and lends the other 3:
        // the suffix reads 4 lines below the cursor's instead of 1.
        assert_eq!(around(1, &by_chars), (0, 1 + 1 + 4));
    }

    #[test]
    fn windows_count_characters_not_bytes() {
        // Each line is 3 characters but 9 bytes (two CJK characters and `\n`).
        let text = "一二\n三四\n五六\n七$0八\n";
        let cursor = text.find('$').unwrap();
        let config = EngineConfig {
            prefix_max_chars: 6,
            suffix_max_chars: 4,
            ..EngineConfig::default()
        };
        let (prefix, suffix) = windows(text, &LineIndex::new(text), cursor, &config);
        assert_eq!(&text[prefix], "三四\n五六\n七");
        assert_eq!(&text[suffix], "$0八\n");
        // A cursor line longer than the limit is cut at a character.
        let text = "😀😀😀😀|😀😀😀";
        let cursor = text.find('|').unwrap();
        let config = EngineConfig {
            prefix_max_chars: 2,
            suffix_max_chars: 2,
            ..EngineConfig::default()
        };
        let (prefix, suffix) = windows(text, &LineIndex::new(text), cursor, &config);
        assert_eq!(&text[prefix], "😀😀");
        assert_eq!(&text[suffix], "|😀");
    }

    #[test]
    fn instruction_prompt_layout() {
        expect![[r#"
            # INSTRUCTION: Refactor to use async/await

            Here is the code:
            ```python
            def f():
                return 1
            ```

            Refactored code:
            ```python
        "#]]
        .assert_eq(&instruction_prompt(
            Language::Python,
            "Refactor to use async/await",
            "def f():\n    return 1",
        ));
    }
}
