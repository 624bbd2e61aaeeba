//! A document's text and its syntax tree, kept in step through incremental edits.

use std::cell::RefCell;
use std::ops::Range;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use tree_sitter::{InputEdit, Parser, Point, Tree};

use crate::{ContextEngine, ExtraChunk, Language};

thread_local! {
    /// One parser per language per thread: parsers are cheap to keep and not
    /// worth sharing behind a lock, and parses run on blocking threads anyway.
    static PARSERS: RefCell<Vec<(Language, Parser)>> = const { RefCell::new(Vec::new()) };
}

/// Parses `text`, reusing `old` (already edited) for an incremental parse. `None`
/// for languages without a grammar.
pub(crate) fn parse(language: Language, text: &str, old: Option<&Tree>) -> Option<Tree> {
    let grammar = language.grammar()?;
    PARSERS.with(|parsers| {
        let mut parsers = parsers.borrow_mut();
        let index = match parsers.iter().position(|(lang, _)| *lang == language) {
            Some(index) => index,
            None => {
                let mut parser = Parser::new();
                parser.set_language(&grammar).ok()?;
                parsers.push((language, parser));
                parsers.len() - 1
            }
        };
        parsers[index].1.parse(text, old)
    })
}

/// An open document: its language, its text and the tree parsed from it.
///
/// Cheap to edit: [`Document::apply_edit`] re-parses incrementally from the old
/// tree. Clone it to snapshot (trees are reference-counted).
#[derive(Debug, Clone)]
pub struct Document {
    pub(crate) language: Language,
    pub(crate) text: String,
    pub(crate) tree: Option<Tree>,
    /// What the last completion put at the head of its prompt, shared by the
    /// document's snapshots: the next one sends it again while it still holds, so
    /// that the head of the prompt (and the KV cache behind it) stays put while the
    /// user types.
    last: Arc<Mutex<LastChoice>>,
}

/// What a document's last completion chose.
#[derive(Debug, Default)]
struct LastChoice {
    /// Fingerprints of its context chunks.
    picks: Vec<u64>,
    /// Its snippets of code like the cursor's.
    snippets: Option<KeptSnippets>,
}

/// Snippets as a completion sent them, labels included, and the cursor line they
/// were chosen for.
#[derive(Debug, Clone)]
pub(crate) struct KeptSnippets {
    pub line: usize,
    pub snippets: Vec<ExtraChunk>,
}

impl Document {
    pub(crate) fn new(language: Language, text: String) -> Document {
        let tree = parse(language, &text, None);
        Document {
            language,
            text,
            tree,
            last: Arc::default(),
        }
    }

    fn last(&self) -> MutexGuard<'_, LastChoice> {
        self.last.lock().unwrap_or_else(PoisonError::into_inner)
    }

    pub(crate) fn last_picks(&self) -> Vec<u64> {
        self.last().picks.clone()
    }

    pub(crate) fn set_picks(&self, picks: Vec<u64>) {
        self.last().picks = picks;
    }

    pub(crate) fn kept_snippets(&self) -> Option<KeptSnippets> {
        self.last().snippets.clone()
    }

    pub(crate) fn keep_snippets(&self, kept: KeptSnippets) {
        self.last().snippets = Some(kept);
    }

    pub fn text(&self) -> &str {
        &self.text
    }

    pub fn language(&self) -> Language {
        self.language
    }

    /// The syntax tree; `None` for languages without a grammar.
    pub fn tree(&self) -> Option<&Tree> {
        self.tree.as_ref()
    }

    /// Replaces the bytes in `range` with `new_text`, then re-parses incrementally
    /// (an `InputEdit` on the old tree, then a parse that reuses it).
    ///
    /// A range past the end is clamped to it, and bounds inside a UTF-8 character
    /// move back to the start of that character, so a bad range edits the nearest
    /// valid one instead of panicking.
    pub fn apply_edit(&mut self, _engine: &ContextEngine, range: Range<usize>, new_text: &str) {
        let start = floor_char_boundary(&self.text, range.start);
        let old_end = floor_char_boundary(&self.text, range.end.max(start));
        if start == old_end && new_text.is_empty() {
            // Nothing changes: keep the tree (a re-parse could recover from syntax
            // errors differently, found by tests/properties.rs).
            return;
        }
        let new_end = start + new_text.len();
        let start_position = point_at(&self.text, start);
        let old_end_position = point_at(&self.text, old_end);
        self.text.replace_range(start..old_end, new_text);
        let new_end_position = point_at(&self.text, new_end);
        let old_tree = self.tree.take().map(|mut tree| {
            tree.edit(&InputEdit {
                start_byte: start,
                old_end_byte: old_end,
                new_end_byte: new_end,
                start_position,
                old_end_position,
                new_end_position,
            });
            tree
        });
        self.tree = parse(self.language, &self.text, old_tree.as_ref());
    }
}

impl Document {
    /// Replaces the whole text, re-parsing incrementally: the text between the
    /// common prefix and the common suffix of old and new is the one edit. For
    /// full-text updates (LSP full sync, repeated HTTP requests for a file).
    pub fn set_text(&mut self, engine: &ContextEngine, text: &str) {
        let (old, new) = (self.text.as_bytes(), text.as_bytes());
        let mut prefix = old.iter().zip(new).take_while(|(a, b)| a == b).count();
        while !(self.text.is_char_boundary(prefix) && text.is_char_boundary(prefix)) {
            prefix -= 1;
        }
        let room = old.len().min(new.len()) - prefix;
        let mut suffix = old
            .iter()
            .rev()
            .zip(new.iter().rev())
            .take(room)
            .take_while(|(a, b)| a == b)
            .count();
        while !(self.text.is_char_boundary(old.len() - suffix)
            && text.is_char_boundary(new.len() - suffix))
        {
            suffix -= 1;
        }
        if prefix == old.len() && prefix == new.len() {
            return;
        }
        let replaced = &text[prefix..new.len() - suffix];
        self.apply_edit(engine, prefix..old.len() - suffix, replaced);
    }
}

/// The largest char boundary at or before `offset`, clamped to the text.
pub(crate) fn floor_char_boundary(text: &str, offset: usize) -> usize {
    let mut offset = offset.min(text.len());
    while !text.is_char_boundary(offset) {
        offset -= 1;
    }
    offset
}

/// Tree-sitter's point for a byte offset: rows split at `\n`, columns in bytes.
fn point_at(text: &str, offset: usize) -> Point {
    let before = &text.as_bytes()[..offset];
    let row = before.iter().filter(|&&b| b == b'\n').count();
    let line_start = before
        .iter()
        .rposition(|&b| b == b'\n')
        .map_or(0, |i| i + 1);
    Point::new(row, offset - line_start)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::EngineConfig;

    fn sexp(doc: &Document) -> String {
        doc.tree().unwrap().root_node().to_sexp()
    }

    /// After any sequence of edits the incremental tree equals a fresh parse.
    #[test]
    fn incremental_edits_match_a_fresh_parse() {
        let engine = ContextEngine::new(EngineConfig::default()).unwrap();
        let mut doc = engine.parse(
            Language::Python,
            "def f(x):\r\n    return x  # 😀 ok\n\nclass 類:\n    pass\n".into(),
        );
        let edits: [(Range<usize>, &str); 5] = [
            (0..0, "import os\n"),
            (14..15, "grüße"),
            (30..31, "\n"),
            (40..44, ""),
            (1000..1000, "\nasync def g():\n    await h()\n"),
        ];
        for (range, new_text) in edits {
            doc.apply_edit(&engine, range, new_text);
            let fresh = engine.parse(Language::Python, doc.text().to_owned());
            assert_eq!(
                sexp(&doc),
                sexp(&fresh),
                "after editing to {:?}",
                doc.text()
            );
        }
    }

    #[test]
    fn set_text_edits_only_what_changed() {
        let engine = ContextEngine::new(EngineConfig::default()).unwrap();
        let mut doc = engine.parse(Language::Rust, "fn a() { \"é😀\" }\n".into());
        for text in [
            "fn a() { \"é😀\" }\n",
            "fn a() { \"è😀\" }\n",
            "fn ab() { \"è😁\" }\n",
            "fn b() {}\n",
            "",
            "struct S;\n",
        ] {
            doc.set_text(&engine, text);
            assert_eq!(doc.text(), text);
            let fresh = engine.parse(Language::Rust, text.to_owned());
            assert_eq!(sexp(&doc), sexp(&fresh), "{text:?}");
        }
    }

    #[test]
    fn edits_inside_a_character_snap_to_its_start() {
        let engine = ContextEngine::new(EngineConfig::default()).unwrap();
        let mut doc = engine.parse(Language::Rust, "fn a() { \"é\" }".into());
        // Byte 11 is inside `é` (bytes 10..12).
        doc.apply_edit(&engine, 11..11, "x");
        assert_eq!(doc.text(), "fn a() { \"xé\" }");
    }

    #[test]
    fn other_languages_have_no_tree() {
        let engine = ContextEngine::new(EngineConfig::default()).unwrap();
        let mut doc = engine.parse(Language::Other, "hello".into());
        assert!(doc.tree().is_none());
        doc.apply_edit(&engine, 5..5, " world");
        assert_eq!(doc.text(), "hello world");
    }
}
