//! Functions around a cursor, and checks on model rewrites of them: the engine side
//! of the "Refactor to async" code action.

use std::ops::Range;

use tree_sitter::Node;

use crate::document::{floor_char_boundary, parse};
use crate::{Document, Language};

/// A function or method definition in a document.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct FunctionInfo {
    pub name: String,
    /// Byte range from the first decorator (Python) or the `fn`/`async`/`pub`
    /// keyword to the end of the body. It starts at a token, not at the line
    /// start: a replacement's first line must not carry the indentation.
    pub range: Range<usize>,
    pub is_async: bool,
    /// `"function"`, or `"method"` inside a class, impl or trait.
    pub kind: &'static str,
}

fn is_function(language: Language, node: Node<'_>) -> bool {
    match language {
        Language::Python => node.kind() == "function_definition",
        Language::Rust => node.kind() == "function_item",
        Language::Other => false,
    }
}

fn is_type_body(language: Language, node: Node<'_>) -> bool {
    match language {
        Language::Python => node.kind() == "class_definition",
        Language::Rust => matches!(node.kind(), "impl_item" | "trait_item"),
        Language::Other => false,
    }
}

fn describe(language: Language, text: &str, node: Node<'_>) -> Option<FunctionInfo> {
    let name_node = node.child_by_field_name("name")?;
    let name = name_node.utf8_text(text.as_bytes()).ok()?.to_owned();
    // Everything before the name (`pub async fn`, `async def`) says whether it is
    // async; the decorators of a decorated Python function are outside the node.
    let head = &text[node.start_byte()..name_node.start_byte()];
    let is_async = crate::rank::identifiers(head).any(|word| word == "async");
    let mut outer = node;
    if let Some(parent) = node.parent().filter(|p| p.kind() == "decorated_definition") {
        outer = parent;
    }
    let mut kind = "function";
    let mut ancestor = outer.parent();
    while let Some(node) = ancestor {
        if is_function(language, node) {
            break;
        }
        if is_type_body(language, node) {
            kind = "method";
            break;
        }
        ancestor = node.parent();
    }
    Some(FunctionInfo {
        name,
        range: outer.byte_range(),
        is_async,
        kind,
    })
}

/// The innermost function or method whose definition contains `cursor`.
pub fn enclosing_function(doc: &Document, cursor: usize) -> Option<FunctionInfo> {
    let tree = doc.tree()?;
    let cursor = floor_char_boundary(doc.text(), cursor);
    let mut node = tree.root_node().descendant_for_byte_range(cursor, cursor)?;
    loop {
        if is_function(doc.language(), node) && node.byte_range().contains(&cursor) {
            return describe(doc.language(), doc.text(), node);
        }
        node = node.parent()?;
    }
}

/// Checks a model's rewrite: `code` must parse as `language` without ERROR or
/// MISSING nodes and define an async function called `name`. Python code is
/// dedented first, since a rewritten method arrives indented.
pub fn validate_async_rewrite(language: Language, code: &str, name: &str) -> Result<(), String> {
    let code = match language {
        Language::Python => dedent(code),
        _ => code.to_owned(),
    };
    let tree =
        parse(language, &code, None).ok_or_else(|| format!("cannot parse {language} code"))?;
    let root = tree.root_node();
    if root.has_error() {
        let at = first_error(root).map_or(root.start_position(), |node| node.start_position());
        return Err(format!(
            "the rewrite has a syntax error at line {}, column {}",
            at.row + 1,
            at.column + 1
        ));
    }
    let mut found = None;
    let mut stack = vec![root];
    while let Some(node) = stack.pop() {
        if is_function(language, node) {
            if let Some(info) = describe(language, &code, node).filter(|info| info.name == name) {
                found = Some(info.is_async);
                if info.is_async {
                    break;
                }
            }
        }
        let mut walker = node.walk();
        stack.extend(node.children(&mut walker));
    }
    match found {
        Some(true) => Ok(()),
        Some(false) => Err(format!("`{name}` is in the rewrite but is not async")),
        None => Err(format!("the rewrite does not define `{name}`")),
    }
}

fn first_error(node: Node<'_>) -> Option<Node<'_>> {
    if node.is_error() || node.is_missing() {
        return Some(node);
    }
    let mut walker = node.walk();
    let children: Vec<Node<'_>> = node.children(&mut walker).collect();
    children
        .into_iter()
        .filter(|child| child.has_error())
        .find_map(first_error)
}

/// Removes the indentation common to all non-blank lines.
fn dedent(code: &str) -> String {
    let indentation = |line: &str| line.len() - line.trim_start_matches([' ', '\t']).len();
    let indent = code
        .lines()
        .filter(|line| !line.trim().is_empty())
        .map(indentation)
        .min()
        .unwrap_or(0);
    code.split_inclusive('\n')
        .map(|line| {
            if line.trim().is_empty() {
                line.trim_start_matches([' ', '\t'])
            } else {
                &line[indent..]
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{ContextEngine, EngineConfig};
    use expect_test::{expect, Expect};

    fn check(language: Language, fixture: &str, expect: Expect) {
        let cursor = fixture.find("$0").unwrap();
        let text = fixture.replace("$0", "");
        let engine = ContextEngine::new(EngineConfig::default()).unwrap();
        let doc = engine.parse(language, text.clone());
        let actual = match enclosing_function(&doc, cursor) {
            Some(info) => format!(
                "{} {}{} {:?}",
                info.kind,
                if info.is_async { "async " } else { "" },
                info.name,
                &text[info.range]
            ),
            None => "none".to_owned(),
        };
        expect.assert_eq(&actual);
    }

    #[test]
    fn python_functions_and_methods() {
        check(
            Language::Python,
            "@retry(3)\ndef fetch(url):\n    return get(u$0rl)\n",
            expect![[r#"function fetch "@retry(3)\ndef fetch(url):\n    return get(url)""#]],
        );
        check(
            Language::Python,
            "class A:\n    async def run(self):\n        def inner():\n            pass\n        awa$0it x\n",
            expect![[r#"method async run "async def run(self):\n        def inner():\n            pass\n        await x""#]],
        );
        check(
            Language::Python,
            "def outer():\n    def inner():\n        re$0turn 1\n",
            expect![[r#"function inner "def inner():\n        return 1""#]],
        );
        check(Language::Python, "x = 1$0\n", expect!["none"]);
    }

    #[test]
    fn rust_functions_and_methods() {
        check(
            Language::Rust,
            "impl S {\n    pub async fn go(&self) {\n        self.$0x();\n    }\n}\n",
            expect![[r#"method async go "pub async fn go(&self) {\n        self.x();\n    }""#]],
        );
        check(
            Language::Rust,
            "/// Docs.\nfn main() { let s = \"😀\"; $0 }\n",
            expect![[r#"function main "fn main() { let s = \"😀\";  }""#]],
        );
    }

    #[test]
    fn async_rewrites_are_validated() {
        let ok = "    async def fetch(self, url):\n        return await get(url)\n";
        assert_eq!(
            validate_async_rewrite(Language::Python, ok, "fetch"),
            Ok(())
        );
        assert_eq!(
            validate_async_rewrite(Language::Python, "def fetch(url):\n    pass\n", "fetch"),
            Err("`fetch` is in the rewrite but is not async".into())
        );
        assert_eq!(
            validate_async_rewrite(Language::Python, "async def other():\n    pass\n", "fetch"),
            Err("the rewrite does not define `fetch`".into())
        );
        let broken = validate_async_rewrite(Language::Python, "async def fetch(:\n", "fetch");
        assert!(broken.unwrap_err().contains("syntax error at line 1"));
        assert_eq!(
            validate_async_rewrite(Language::Rust, "pub async fn fetch() -> u8 { 1 }", "fetch"),
            Ok(())
        );
        assert!(validate_async_rewrite(Language::Rust, "async fn fetch() { 1 +", "fetch").is_err());
        assert!(validate_async_rewrite(Language::Other, "x", "fetch").is_err());
    }
}
