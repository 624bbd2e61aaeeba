//! Property tests of the context engine on untrusted text: random documents (code
//! fragments mixed with arbitrary characters), random incremental edits (byte ranges
//! that may fall past the end or inside a character) and random cursors. The engine
//! must never panic, an incrementally re-parsed tree must equal a fresh parse of the
//! same text (node for node where the text parses without errors; with errors,
//! tree-sitter's recovery may differ after an incremental parse, so both must see
//! an error and span the text), and the prefix and suffix must be the text around
//! the cursor.
//!
//! The number of cases is bounded so that CI stays fast; `PROPTEST_CASES` raises it
//! for a longer run (see docs/robustness.md).

use cerebrum_context::{ContextEngine, ContextOptions, Document, EngineConfig, Language, Mode};
use proptest::prelude::*;
use proptest::test_runner::TestCaseError;

/// Pieces that make real syntax (definitions, blocks, strings, comments) likelier
/// than uniform random text would.
const PIECES: &[&str] = &[
    "def f(x):\n",
    "    return x\n",
    "class A:\n",
    "    def m(self):\n",
    "        pass\n",
    "async def g():\n",
    "    await h()\n",
    "if x:\n",
    "else:\n",
    "\"\"\"doc\"\"\"\n",
    "# comment\n",
    "fn main() {\n",
    "}\n",
    "impl A {\n",
    "    fn a(&self) -> u32 { 1 }\n",
    "struct S { x: u8 }\n",
    "let v = vec![1, 2];\n",
    "(",
    ")",
    "[",
    "]",
    "{",
    "}",
    ":",
    "\"",
    "'",
    "\n",
    "    ",
    "\t",
    "é",
    "日本",
    "🦀",
    "\r\n",
    "\\",
    "/*",
    "*/",
];

fn text() -> impl Strategy<Value = String> {
    prop::collection::vec(
        prop_oneof![
            4 => prop::sample::select(PIECES).prop_map(str::to_owned),
            1 => "\\PC{0,8}",
            1 => "[a-z_ ]{0,12}",
        ],
        0..40,
    )
    .prop_map(|pieces| pieces.concat())
}

fn language() -> impl Strategy<Value = Language> {
    prop::sample::select(vec![Language::Python, Language::Rust, Language::Other])
}

/// An edit as raw numbers: the range may be reversed, past the end or inside a
/// character; `Document::apply_edit` must cope.
fn edit() -> impl Strategy<Value = (usize, usize, String)> {
    (0usize..2048, 0usize..64, text())
}

/// The largest char boundary at or before `offset`, clamped (what the engine does).
fn floor(text: &str, offset: usize) -> usize {
    let mut offset = offset.min(text.len());
    while !text.is_char_boundary(offset) {
        offset -= 1;
    }
    offset
}

/// A node as (kind, start byte, end byte, is_error).
type Node = (String, usize, usize, bool);

/// Every node, depth first: the whole tree, not just its S-expression.
fn nodes(document: &Document) -> Vec<Node> {
    let Some(tree) = document.tree() else {
        return Vec::new();
    };
    let mut out = Vec::new();
    let mut cursor = tree.walk();
    loop {
        let node = cursor.node();
        out.push((
            node.kind().to_owned(),
            node.start_byte(),
            node.end_byte(),
            node.is_error() || node.is_missing(),
        ));
        if cursor.goto_first_child() || cursor.goto_next_sibling() {
            continue;
        }
        loop {
            if !cursor.goto_parent() {
                return out;
            }
            if cursor.goto_next_sibling() {
                break;
            }
        }
    }
}

/// The cases per property: a bounded default for CI, `PROPTEST_CASES` for a longer run.
fn cases(default: u32) -> u32 {
    std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|cases| cases.parse().ok())
        .unwrap_or(default)
}

fn engine() -> ContextEngine {
    ContextEngine::new(EngineConfig {
        min_chars_to_chunk: 0,
        ..EngineConfig::default()
    })
    .expect("the default engine builds")
}

/// Applies `edits` to a document of `initial` one by one, and after each checks the
/// text against a plain `String` edited the same way and the tree against a fresh
/// parse.
fn check_incremental(
    language: Language,
    initial: String,
    edits: Vec<(usize, usize, String)>,
) -> Result<(), TestCaseError> {
    let engine = engine();
    let mut document = engine.parse(language, initial.clone());
    let mut expected = initial;
    for (start, len, new_text) in edits {
        // The same clamping as `apply_edit`, on a plain String.
        let from = floor(&expected, start);
        let to = floor(&expected, start.saturating_add(len).max(from));
        expected.replace_range(from..to, &new_text);
        document.apply_edit(&engine, start..start.saturating_add(len), &new_text);
        prop_assert_eq!(document.text(), expected.as_str());
        let fresh = engine.parse(language, expected.clone());
        let fresh_has_error = fresh
            .tree()
            .is_some_and(|tree| tree.root_node().has_error());
        let (ours, theirs) = (nodes(&document), nodes(&fresh));
        if fresh_has_error {
            // Tree-sitter's error recovery may place ERROR nodes differently when it
            // reuses an old tree (docs/robustness.md), down to the root's kind (a
            // `module` holding ERROR nodes, or one ERROR node for the whole text):
            // both parses must still see the errors and cover the whole text.
            let span = |root: &Node| (root.1, root.2);
            prop_assert!(ours.iter().any(|node| node.3), "text: {:?}", expected);
            prop_assert_eq!(
                ours.first().map(span),
                theirs.first().map(span),
                "text: {:?}",
                expected
            );
        } else {
            prop_assert_eq!(ours, theirs, "text: {:?}", expected);
        }
    }
    Ok(())
}

/// A CI run's failure (2026-11-30): after these edits the incremental parse's root is a
/// `module` holding ERROR nodes, the fresh parse's one ERROR node over the whole text.
#[test]
fn error_recovery_may_change_the_roots_kind() {
    let initial = "{\"\"\"doc\"\"\"\nlet v = vec![1, 2];\n    fn a(&self) -> u32 { 1 }\n/*class A:\n((else:\n        pass\nasync def g():\ndef f(x):\nclass A:\nclass A:\ndef f(x):\ndef f(x):\ndef f(x):\ndef f(x):\n";
    let edits = vec![
        (113, 48, "    def m(self):\n &}\n{".to_owned()),
        (
            1974,
            2,
            "日本)é🕴6_  d _z  ]v__>𐰞´ꬭᏒ4K{\timpl A {\n):}_woyg '}\nfn main() {\n    await h()\n    await h()\n`X1&7x𐼼x\"\"\"doc\"\"\"\n{🉃Ѩ".to_owned(),
        ),
    ];
    if let Err(err) = check_incremental(Language::Python, initial.to_owned(), edits) {
        panic!("{err}");
    }
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: cases(64),
        failure_persistence: None,
        ..ProptestConfig::default()
    })]

    #[test]
    fn incremental_parses_equal_fresh_parses(
        language in language(),
        initial in text(),
        edits in prop::collection::vec(edit(), 1..12),
    ) {
        check_incremental(language, initial, edits)?;
    }

    #[test]
    fn context_never_panics_and_surrounds_the_cursor(
        language in language(),
        text in text(),
        cursor in 0usize..4096,
        instruction in prop::option::of("[a-z ]{1,20}"),
    ) {
        let engine = engine();
        let document = engine.parse(language, text.clone());
        let options = ContextOptions {
            instruction: instruction.clone(),
            ..ContextOptions::default()
        };
        let context = engine.context(&document, cursor, &options);
        if context.mode == Mode::Fim {
            let at = floor(&text, cursor);
            prop_assert!(text[..at].ends_with(&context.prefix), "{:?}", context.prefix);
            prop_assert!(text[at..].starts_with(&context.suffix), "{:?}", context.suffix);
        }
        // Chunks of the document, never invented text.
        let _ = engine.chunks(&document);
    }
}
