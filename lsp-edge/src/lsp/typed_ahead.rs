//! Typed-ahead reuse: when the user types what the ghost text shows, the rest of the
//! shown completion is the answer, without asking the model.
//!
//! Each document remembers the last completion shown and the text around the cursor
//! it was made for. A new request whose text is that text with a prefix of the
//! completion typed at the cursor (and nothing else changed) is answered from it at
//! once. This is the common case when the ghost text was right, and it costs no
//! backend call, no generation slot and no KV-cache churn.

use std::collections::HashMap;
use std::sync::{Mutex, PoisonError};

use ropey::Rope;
use tower_lsp_server::lsp_types::Uri;

/// Documents remembered at most; the oldest entry goes first.
const MAX_DOCUMENTS: usize = 64;

/// A completion as it was shown.
#[derive(Debug, Clone)]
struct Shown {
    /// The document's text then (a rope clone shares its nodes: cheap).
    rope: Rope,
    /// The cursor then, in chars.
    cursor: usize,
    completion: String,
    /// Insertion order, for eviction.
    serial: u64,
}

/// The last completion shown per document.
#[derive(Debug, Default)]
pub struct TypedAhead {
    shown: Mutex<(u64, HashMap<Uri, Shown>)>,
}

impl TypedAhead {
    /// Remembers a completion shown at `cursor` (chars) in `rope`. An empty
    /// completion forgets the document's entry.
    pub fn remember(&self, uri: &Uri, rope: &Rope, cursor: usize, completion: &str) {
        let mut guard = self.shown.lock().unwrap_or_else(PoisonError::into_inner);
        let (serial, shown) = &mut *guard;
        if completion.is_empty() {
            shown.remove(uri);
            return;
        }
        *serial += 1;
        if shown.len() >= MAX_DOCUMENTS && !shown.contains_key(uri) {
            let oldest = shown
                .iter()
                .min_by_key(|(_, s)| s.serial)
                .map(|(uri, _)| uri.clone());
            if let Some(oldest) = oldest {
                shown.remove(&oldest);
            }
        }
        shown.insert(
            uri.clone(),
            Shown {
                rope: rope.clone(),
                cursor,
                completion: completion.to_owned(),
                serial: *serial,
            },
        );
    }

    pub fn forget(&self, uri: &Uri) {
        let mut guard = self.shown.lock().unwrap_or_else(PoisonError::into_inner);
        guard.1.remove(uri);
    }

    /// The rest of the remembered completion if `rope` is the remembered text with a
    /// non-empty start of the completion typed at the remembered cursor and `cursor`
    /// right after it; `None` otherwise, or when nothing of the completion would be
    /// left.
    pub fn remainder(&self, uri: &Uri, rope: &Rope, cursor: usize) -> Option<String> {
        let shown = {
            let guard = self.shown.lock().unwrap_or_else(PoisonError::into_inner);
            guard.1.get(uri)?.clone()
        };
        let typed = cursor.checked_sub(shown.cursor).filter(|&n| n > 0)?;
        if rope.len_chars() != shown.rope.len_chars() + typed {
            return None;
        }
        let completion_chars = shown.completion.chars().count();
        if typed >= completion_chars {
            return None;
        }
        let typed_text = rope.slice(shown.cursor..cursor);
        let expected: String = shown.completion.chars().take(typed).collect();
        let unchanged = typed_text == expected.as_str()
            && rope.slice(..shown.cursor) == shown.rope.slice(..shown.cursor)
            && rope.slice(cursor..) == shown.rope.slice(shown.cursor..);
        unchanged.then(|| shown.completion.chars().skip(typed).collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::str::FromStr;

    fn uri() -> Uri {
        Uri::from_str("file:///tmp/a.py").unwrap()
    }

    /// The text with `|` as the cursor: (rope without it, cursor in chars).
    fn at(text: &str) -> (Rope, usize) {
        let cursor = text.chars().position(|c| c == '|').unwrap();
        (Rope::from_str(&text.replace('|', "")), cursor)
    }

    fn shown(text: &str, completion: &str) -> TypedAhead {
        let memory = TypedAhead::default();
        let (rope, cursor) = at(text);
        memory.remember(&uri(), &rope, cursor, completion);
        memory
    }

    #[test]
    fn typing_the_start_of_the_completion_leaves_the_rest() {
        let memory = shown("def f(x):\n    ret|\n", "urn x + 1");
        let (rope, cursor) = at("def f(x):\n    retu|\n");
        assert_eq!(
            memory.remainder(&uri(), &rope, cursor).as_deref(),
            Some("rn x + 1")
        );
        let (rope, cursor) = at("def f(x):\n    return x |\n");
        assert_eq!(
            memory.remainder(&uri(), &rope, cursor).as_deref(),
            Some("+ 1")
        );
    }

    #[test]
    fn text_that_differs_from_the_completion_is_no_match() {
        let memory = shown("x = |\n", "compute()");
        for text in [
            "x = d|\n",
            "y = c|\n",
            "x = c|\nz\n",
            "x = |\n",
            "x = compute()|\n",
        ] {
            let (rope, cursor) = at(text);
            assert_eq!(memory.remainder(&uri(), &rope, cursor), None, "{text:?}");
        }
    }

    #[test]
    fn multi_byte_text_is_counted_in_chars() {
        let memory = shown("s = \"é|\"\n", "😀 ü");
        let (rope, cursor) = at("s = \"é😀|\"\n");
        assert_eq!(
            memory.remainder(&uri(), &rope, cursor).as_deref(),
            Some(" ü")
        );
    }

    #[test]
    fn other_documents_and_forgotten_ones_are_no_match() {
        let memory = shown("a|", "bc");
        let (rope, cursor) = at("ab|");
        let other = Uri::from_str("file:///tmp/b.py").unwrap();
        assert_eq!(memory.remainder(&other, &rope, cursor), None);
        memory.forget(&uri());
        assert_eq!(memory.remainder(&uri(), &rope, cursor), None);
    }
}
