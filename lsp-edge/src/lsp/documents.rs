//! A session's open documents: a rope per document for position conversion and
//! edits, and the context engine's [`Document`] (text and syntax tree) for context.
//!
//! `didOpen`/`didChange`/`didClose` mutate the store synchronously, so they apply in
//! arrival order. Parsing is deferred: edits queue as byte-range edits and are
//! applied to the tree (an incremental re-parse) on a blocking thread when a
//! completion needs the tree, so a burst of keystrokes costs no parse at all.

use std::collections::HashMap;
use std::ops::Range;
use std::path::Path;
use std::sync::{Mutex, MutexGuard, PoisonError};

use cerebrum_context::{ContextEngine, Document, Language};
use ropey::Rope;
use tower_lsp_server::lsp_types::{TextDocumentContentChangeEvent, Uri};
use tower_lsp_server::UriExt;

use super::position::{self, Encoding};

/// Edits queued past this many re-parse from scratch instead.
const MAX_PENDING_EDITS: usize = 1_000;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DocumentError {
    #[error("document {0} is not open")]
    /// The URI, shortened and quoted (it is the client's text).
    NotOpen(String),
}

/// A byte-range edit not yet applied to the tree.
#[derive(Debug, Clone)]
struct Edit {
    range: Range<usize>,
    text: String,
}

#[derive(Debug)]
struct DocumentState {
    language: Language,
    version: i32,
    rope: Rope,
    /// The parsed document as of `pending` (None: parse the rope from scratch).
    parsed: Option<Document>,
    /// Edits since `parsed`, in order.
    pending: Vec<Edit>,
    /// Bumped when `parsed`/`pending` restart, so a stale parse is not stored back.
    epoch: u64,
    /// How many range edits of this epoch `parsed` reflects; `pending` holds the
    /// ones after it. Parses finish out of order; one older than this is dropped.
    parsed_revision: u64,
}

impl DocumentState {
    /// Forgets the tree: the next completion parses the rope from scratch.
    fn restart(&mut self) {
        self.parsed = None;
        self.pending.clear();
        self.epoch += 1;
        self.parsed_revision = 0;
    }

    /// Range edits applied to the rope in this epoch.
    fn revision(&self) -> u64 {
        self.parsed_revision + self.pending.len() as u64
    }
}

/// What a completion works on: a consistent copy taken under the lock.
#[derive(Debug, Clone)]
pub struct Snapshot {
    pub uri: Uri,
    pub language: Language,
    pub version: i32,
    pub rope: Rope,
    /// The path for chunk labels (the file name), when the URI is a file.
    pub path: Option<String>,
    parsed: Option<Document>,
    pending: Vec<Edit>,
    epoch: u64,
    revision: u64,
}

impl Snapshot {
    /// Brings the tree up to date with the text. CPU work: call it on a blocking
    /// thread. Returns the document and a token to store it back with.
    pub fn into_document(self, engine: &ContextEngine) -> (Document, ParsedToken) {
        let document = match self.parsed {
            Some(mut document) => {
                for edit in self.pending {
                    document.apply_edit(engine, edit.range, &edit.text);
                }
                document
            }
            // The rope already holds every pending edit.
            None => engine.parse(self.language, self.rope.to_string()),
        };
        let token = ParsedToken {
            uri: self.uri,
            epoch: self.epoch,
            revision: self.revision,
        };
        (document, token)
    }
}

/// Identifies the state a parse was made from.
#[derive(Debug)]
pub struct ParsedToken {
    uri: Uri,
    epoch: u64,
    revision: u64,
}

#[derive(Debug, Default)]
pub struct DocumentStore {
    documents: Mutex<HashMap<Uri, DocumentState>>,
}

/// The language from the client's language id, else from the file extension.
pub fn language_of(language_id: &str, uri: &Uri) -> Language {
    match Language::from_name(language_id) {
        Language::Other => Language::from_path(Path::new(uri.path().as_str())),
        language => language,
    }
}

impl DocumentStore {
    fn lock(&self) -> MutexGuard<'_, HashMap<Uri, DocumentState>> {
        // Every mutation below completes under the lock or does not start, so a
        // poisoned map is still consistent.
        self.documents
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    pub fn open(&self, uri: Uri, language_id: &str, version: i32, text: &str) {
        let language = language_of(language_id, &uri);
        let mut documents = self.lock();
        let epoch = documents.get(&uri).map_or(0, |state| state.epoch + 1);
        documents.insert(
            uri,
            DocumentState {
                language,
                version,
                rope: Rope::from_str(text),
                parsed: None,
                pending: Vec::new(),
                epoch,
                parsed_revision: 0,
            },
        );
    }

    /// Applies a `didChange` in order. A version not newer than the current one is
    /// stale (a duplicate or a reordering) and is ignored; returns whether it applied.
    pub fn change(
        &self,
        uri: &Uri,
        version: i32,
        changes: Vec<TextDocumentContentChangeEvent>,
        encoding: Encoding,
    ) -> Result<bool, DocumentError> {
        let mut documents = self.lock();
        let state = documents
            .get_mut(uri)
            .ok_or_else(|| DocumentError::NotOpen(super::framing::shorten(uri.as_str(), 200)))?;
        if version <= state.version {
            tracing::warn!(
                uri = %super::framing::shorten(uri.as_str(), 200),
                version,
                current = state.version,
                "ignoring a stale didChange"
            );
            return Ok(false);
        }
        for change in changes {
            match change.range {
                Some(range) => {
                    let start = position::to_char(&state.rope, range.start, encoding);
                    let end = position::to_char(&state.rope, range.end, encoding).max(start);
                    let start_byte = state.rope.char_to_byte(start);
                    let end_byte = state.rope.char_to_byte(end);
                    state.rope.remove(start..end);
                    state.rope.insert(start, &change.text);
                    state.pending.push(Edit {
                        range: start_byte..end_byte,
                        text: change.text,
                    });
                }
                None => {
                    state.rope = Rope::from_str(&change.text);
                    state.restart();
                }
            }
        }
        if state.pending.len() > MAX_PENDING_EDITS {
            state.restart();
        }
        state.version = version;
        Ok(true)
    }

    pub fn close(&self, uri: &Uri) {
        self.lock().remove(uri);
    }

    pub fn snapshot(&self, uri: &Uri) -> Result<Snapshot, DocumentError> {
        let documents = self.lock();
        let state = documents
            .get(uri)
            .ok_or_else(|| DocumentError::NotOpen(super::framing::shorten(uri.as_str(), 200)))?;
        Ok(Snapshot {
            uri: uri.clone(),
            language: state.language,
            version: state.version,
            rope: state.rope.clone(),
            path: uri
                .to_file_path()
                .map(|path| path.to_string_lossy().into_owned()),
            parsed: state.parsed.clone(),
            pending: state.pending.clone(),
            epoch: state.epoch,
            revision: state.revision(),
        })
    }

    /// Keeps a parse made from a snapshot, unless the document restarted since or
    /// a parse of a later revision is already kept.
    pub fn store_parsed(&self, token: ParsedToken, document: Document) {
        let mut documents = self.lock();
        let Some(state) = documents.get_mut(&token.uri) else {
            return;
        };
        if state.epoch != token.epoch || token.revision < state.parsed_revision {
            return;
        }
        let applied = usize::try_from(token.revision - state.parsed_revision)
            .unwrap_or(usize::MAX)
            .min(state.pending.len());
        state.pending.drain(..applied);
        state.parsed_revision = token.revision;
        state.parsed = Some(document);
    }

    pub fn len(&self) -> usize {
        self.lock().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use cerebrum_context::EngineConfig;
    use tower_lsp_server::lsp_types::{Position, Range as LspRange};

    use super::*;

    fn uri(name: &str) -> Uri {
        format!("file:///tmp/{name}").parse().unwrap()
    }

    fn edit(
        (l1, c1): (u32, u32),
        (l2, c2): (u32, u32),
        text: &str,
    ) -> TextDocumentContentChangeEvent {
        TextDocumentContentChangeEvent {
            range: Some(LspRange::new(Position::new(l1, c1), Position::new(l2, c2))),
            range_length: None,
            text: text.into(),
        }
    }

    fn sexp(document: &Document) -> String {
        document
            .tree()
            .map(|tree| tree.root_node().to_sexp())
            .unwrap_or_default()
    }

    #[test]
    fn incremental_changes_keep_text_and_tree_in_step() {
        let engine = ContextEngine::new(EngineConfig::default()).unwrap();
        let store = DocumentStore::default();
        let uri = uri("a.py");
        store.open(uri.clone(), "python", 1, "def f(x):\n    return x\n");

        // Parse once and store it, then edit on top of the stored tree.
        let (document, token) = store.snapshot(&uri).unwrap().into_document(&engine);
        store.store_parsed(token, document);
        let applied = store
            .change(
                &uri,
                2,
                vec![
                    edit((1, 11), (1, 12), "x + 1  # é😀"),
                    edit((0, 0), (0, 0), "import os\n"),
                    edit((2, 99), (2, 99), "\n\ndef g():\n    pass"),
                ],
                Encoding::Utf16,
            )
            .unwrap();
        assert!(applied);
        let snapshot = store.snapshot(&uri).unwrap();
        let expected = "import os\ndef f(x):\n    return x + 1  # é😀\n\ndef g():\n    pass\n";
        assert_eq!(snapshot.rope.to_string(), expected);
        let (document, token) = snapshot.into_document(&engine);
        assert_eq!(document.text(), expected);
        let fresh = engine.parse(Language::Python, expected.to_owned());
        assert_eq!(sexp(&document), sexp(&fresh));
        store.store_parsed(token, document);
        let (again, _) = store.snapshot(&uri).unwrap().into_document(&engine);
        assert_eq!(again.text(), expected);
    }

    #[test]
    fn stale_versions_are_ignored() {
        let store = DocumentStore::default();
        let uri = uri("b.rs");
        store.open(uri.clone(), "rust", 5, "fn a() {}");
        let applied = store
            .change(&uri, 5, vec![edit((0, 0), (0, 0), "x")], Encoding::Utf8)
            .unwrap();
        assert!(!applied);
        assert_eq!(store.snapshot(&uri).unwrap().rope.to_string(), "fn a() {}");
        assert_eq!(store.snapshot(&uri).unwrap().language, Language::Rust);
    }

    #[test]
    fn a_parse_from_an_older_epoch_is_not_stored() {
        let engine = ContextEngine::new(EngineConfig::default()).unwrap();
        let store = DocumentStore::default();
        let uri = uri("c.py");
        store.open(uri.clone(), "python", 1, "x = 1\n");
        let (document, token) = store.snapshot(&uri).unwrap().into_document(&engine);
        // A full replacement arrives while the parse runs.
        store
            .change(
                &uri,
                2,
                vec![TextDocumentContentChangeEvent {
                    range: None,
                    range_length: None,
                    text: "y = 2\n".into(),
                }],
                Encoding::Utf16,
            )
            .unwrap();
        store.store_parsed(token, document);
        let (document, _) = store.snapshot(&uri).unwrap().into_document(&engine);
        assert_eq!(document.text(), "y = 2\n");
    }

    #[test]
    fn edits_during_a_parse_apply_on_top_of_it() {
        let engine = ContextEngine::new(EngineConfig::default()).unwrap();
        let store = DocumentStore::default();
        let uri = uri("d.py");
        store.open(uri.clone(), "python", 1, "a = 1\n");
        store
            .change(
                &uri,
                2,
                vec![edit((1, 0), (1, 0), "b = 2\n")],
                Encoding::Utf16,
            )
            .unwrap();
        let (document, token) = store.snapshot(&uri).unwrap().into_document(&engine);
        store
            .change(
                &uri,
                3,
                vec![edit((2, 0), (2, 0), "c = 3\n")],
                Encoding::Utf16,
            )
            .unwrap();
        store.store_parsed(token, document);
        let (document, _) = store.snapshot(&uri).unwrap().into_document(&engine);
        assert_eq!(document.text(), "a = 1\nb = 2\nc = 3\n");
    }

    /// The parse `didOpen` starts can finish after a completion parsed the edited
    /// text: the older parse must not replace the newer one (found on a slow CI
    /// machine, where the completion then saw the text as it was when opened).
    #[test]
    fn a_parse_that_finishes_late_does_not_replace_a_newer_one() {
        let engine = ContextEngine::new(EngineConfig::default()).unwrap();
        let store = DocumentStore::default();
        let uri = uri("e.py");
        store.open(uri.clone(), "python", 1, "def f():\n");
        let (opened, opened_token) = store.snapshot(&uri).unwrap().into_document(&engine);
        store
            .change(
                &uri,
                2,
                vec![edit((1, 0), (1, 0), "    ret")],
                Encoding::Utf16,
            )
            .unwrap();
        store
            .change(&uri, 3, vec![edit((1, 7), (1, 7), "urn")], Encoding::Utf16)
            .unwrap();
        let (edited, edited_token) = store.snapshot(&uri).unwrap().into_document(&engine);
        store.store_parsed(edited_token, edited);
        store.store_parsed(opened_token, opened);

        let expected = "def f():\n    return";
        let (document, token) = store.snapshot(&uri).unwrap().into_document(&engine);
        assert_eq!(document.text(), expected);
        store.store_parsed(token, document);
        store
            .change(&uri, 4, vec![edit((1, 10), (1, 10), " 1")], Encoding::Utf16)
            .unwrap();
        let (document, _) = store.snapshot(&uri).unwrap().into_document(&engine);
        assert_eq!(document.text(), "def f():\n    return 1");
    }

    #[test]
    fn changes_to_unopened_documents_are_errors_not_panics() {
        let store = DocumentStore::default();
        let err = store
            .change(&uri("nope.py"), 1, vec![], Encoding::Utf16)
            .unwrap_err();
        assert!(matches!(err, DocumentError::NotOpen(_)));
        assert!(store.snapshot(&uri("nope.py")).is_err());
    }

    #[test]
    fn language_comes_from_the_id_then_the_extension() {
        assert_eq!(language_of("python", &uri("x.txt")), Language::Python);
        assert_eq!(language_of("plaintext", &uri("x.rs")), Language::Rust);
        assert_eq!(language_of("plaintext", &uri("notes.txt")), Language::Other);
    }
}
