//! Functions in a document, found by each language's `functions.scm`, and checks on
//! model rewrites of them: the engine side of the "Refactor to async" code action.
//!
//! No node kinds are named here. The query captures `@function` (the definition),
//! `@name`, and optionally `@parameters`, `@wrapper` (a node that belongs to the
//! definition and encloses it, like Python's decorators), `@async` (present when the
//! function is async) and `@container` (a class, impl or trait: functions inside one
//! are methods; `@method` instead of `@function` marks a definition that is a method
//! wherever it is, like Go's). Several patterns may match one definition; their
//! captures add up.

use std::collections::{HashMap, HashSet};
use std::ops::Range;

use tree_sitter::{Node, QueryCursor, StreamingIterator};

use crate::document::{floor_char_boundary, parse};
use crate::{Document, FunctionQuery, Language};

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
    /// The parameter list; the body follows it. Empty, right after the name, when
    /// the query captures none.
    pub params: Range<usize>,
}

impl FunctionInfo {
    /// The parameters the function's body uses (`text` is the text the function
    /// was found in). A rewrite that stops using one has dropped part of the
    /// function's work (SmolLM2's favourite way to "follow" an instruction is to
    /// replace every call with `await asyncio.sleep(1)`).
    pub fn used_parameters(&self, text: &str) -> Vec<String> {
        let body: HashSet<&str> =
            crate::rank::identifiers(&text[self.params.end..self.range.end]).collect();
        let mut used: Vec<String> = Vec::new();
        for word in crate::rank::identifiers(&text[self.params.clone()]) {
            if body.contains(word) && word != "self" && !used.iter().any(|seen| seen == word) {
                used.push(word.to_owned());
            }
        }
        used
    }
}

/// One definition the query matched, with what all its matches captured.
struct Definition<'t> {
    /// The node that holds the cursor when the cursor is "in" the function.
    node: Node<'t>,
    /// The wrapper, or the node itself: the bytes a rewrite replaces.
    outer: Node<'t>,
    name: Range<usize>,
    params: Option<Range<usize>>,
    is_async: bool,
    is_method: bool,
}

/// The functions and containers of a tree, by node id.
struct Functions<'t> {
    definitions: HashMap<usize, Definition<'t>>,
    containers: HashSet<usize>,
}

impl<'t> Functions<'t> {
    /// Runs `language`'s function query over the nodes of `root` that overlap
    /// `range`. Those include every ancestor of a node in the range, so what makes a
    /// function in the range a method (its container) is found too, and a code
    /// action at a cursor does not query the whole file.
    fn find(language: Language, root: Node<'t>, text: &str, range: Range<usize>) -> Functions<'t> {
        let mut functions = Functions {
            definitions: HashMap::new(),
            containers: HashSet::new(),
        };
        let Ok(query) = FunctionQuery::built_in(language) else {
            return functions;
        };
        let mut cursor = QueryCursor::new();
        cursor.set_byte_range(range);
        let mut matches = cursor.matches(&query.query, root, text.as_bytes());
        while let Some(found) = matches.next() {
            let (mut node, mut name, mut params, mut wrapper) = (None, None, None, None);
            let (mut is_async, mut is_method) = (false, false);
            for capture in found.captures {
                let index = Some(capture.index);
                if capture.index == query.function {
                    node = Some(capture.node);
                } else if index == query.method {
                    node = Some(capture.node);
                    is_method = true;
                } else if capture.index == query.name {
                    name = Some(capture.node.byte_range());
                } else if index == query.parameters {
                    params = Some(capture.node.byte_range());
                } else if index == query.wrapper {
                    wrapper = Some(capture.node);
                } else if index == query.is_async {
                    is_async = true;
                } else if index == query.container {
                    functions.containers.insert(capture.node.id());
                }
            }
            let (Some(node), Some(name)) = (node, name) else {
                continue;
            };
            let definition = functions
                .definitions
                .entry(node.id())
                .or_insert(Definition {
                    node,
                    outer: node,
                    name,
                    params: None,
                    is_async: false,
                    is_method: false,
                });
            definition.is_async |= is_async;
            definition.is_method |= is_method;
            definition.params = definition.params.take().or(params);
            if let Some(wrapper) = wrapper {
                definition.outer = wrapper;
            }
        }
        functions
    }

    fn describe(&self, definition: &Definition<'t>, text: &str) -> FunctionInfo {
        let mut kind = if definition.is_method {
            "method"
        } else {
            "function"
        };
        let mut ancestor = definition.outer.parent().filter(|_| !definition.is_method);
        while let Some(node) = ancestor {
            if self.definitions.contains_key(&node.id()) {
                break;
            }
            if self.containers.contains(&node.id()) {
                kind = "method";
                break;
            }
            ancestor = node.parent();
        }
        FunctionInfo {
            name: text[definition.name.clone()].to_owned(),
            range: definition.outer.byte_range(),
            is_async: definition.is_async,
            kind,
            params: definition
                .params
                .clone()
                .unwrap_or(definition.name.end..definition.name.end),
        }
    }

    /// The outermost definitions inside `within`, in document order (looking into
    /// classes, impls and modules, not into functions).
    fn within(&self, root: Node<'t>, text: &str, within: Range<usize>) -> Vec<FunctionInfo> {
        let mut found = Vec::new();
        let mut stack = vec![root];
        while let Some(node) = stack.pop() {
            if node.end_byte() <= within.start || node.start_byte() >= within.end {
                continue;
            }
            if let Some(definition) = self.definitions.get(&node.id()) {
                let outer = definition.outer.byte_range();
                if outer.start >= within.start && outer.end <= within.end {
                    found.push(self.describe(definition, text));
                }
                continue;
            }
            let mut walker = node.walk();
            let children: Vec<Node<'t>> = node.children(&mut walker).collect();
            stack.extend(children.into_iter().rev());
        }
        found
    }
}

/// The innermost function or method whose definition contains `cursor`.
pub fn enclosing_function(doc: &Document, cursor: usize) -> Option<FunctionInfo> {
    let tree = doc.tree()?;
    let cursor = floor_char_boundary(doc.text(), cursor);
    let root = tree.root_node();
    let functions = Functions::find(doc.language(), root, doc.text(), cursor..cursor + 1);
    let mut node = root.descendant_for_byte_range(cursor, cursor)?;
    loop {
        if let Some(definition) = functions.definitions.get(&node.id()) {
            if definition.node.byte_range().contains(&cursor) {
                return Some(functions.describe(definition, doc.text()));
            }
        }
        node = node.parent()?;
    }
}

/// The outermost function definitions wholly inside `range` of a document, in
/// document order; functions nested in them are not listed.
pub fn functions_in(doc: &Document, range: Range<usize>) -> Vec<FunctionInfo> {
    let Some(tree) = doc.tree() else {
        return Vec::new();
    };
    let root = tree.root_node();
    Functions::find(doc.language(), root, doc.text(), range.clone()).within(root, doc.text(), range)
}

/// Why a model's rewrite is not accepted. The messages complete "the model's
/// answer was rejected: ...".
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RewriteError {
    #[error("{0} code cannot be parsed")]
    Unparsable(Language),
    #[error("it has a syntax error at line {line}, column {column}")]
    Syntax { line: usize, column: usize },
    #[error("it does not define `{0}`")]
    Missing(String),
    #[error("`{0}` is not async")]
    NotAsync(String),
    #[error("it neither defines an async function nor awaits anything")]
    NoAwait,
    #[error("`{function}` no longer uses its parameter `{parameter}`")]
    DroppedParameter { function: String, parameter: String },
}

/// What a rewrite must keep of the code it replaces.
#[derive(Debug, Clone, Copy, Default)]
pub struct RewriteRules<'a> {
    /// Functions the rewrite must still define.
    pub keep: &'a [String],
    /// The kept functions must be async; with none to keep, the code must at least
    /// await something.
    pub require_async: bool,
    /// A function, and the parameters its body used: the rewrite must still use them.
    pub used_parameters: Option<(&'a str, &'a [String])>,
}

/// Checks a model's rewrite against `rules`: `code` must parse as `language` without
/// ERROR or MISSING nodes and keep what the rules ask for. The code is dedented
/// first, since a rewritten method arrives indented. This is the one validator: the
/// refactor action runs it on every answer.
pub fn validate_rewrite(
    language: Language,
    code: &str,
    rules: &RewriteRules<'_>,
) -> Result<(), RewriteError> {
    let code = dedent(code);
    let functions = rewrite_functions(language, &code)?;
    for name in rules.keep {
        let mine: Vec<&FunctionInfo> = functions.iter().filter(|f| &f.name == name).collect();
        if mine.is_empty() {
            return Err(RewriteError::Missing(name.clone()));
        }
        if rules.require_async && !mine.iter().any(|f| f.is_async) {
            return Err(RewriteError::NotAsync(name.clone()));
        }
    }
    if rules.require_async && rules.keep.is_empty() {
        let awaits = crate::rank::identifiers(&code).any(|w| w == "await" || w == "async");
        if !awaits {
            return Err(RewriteError::NoAwait);
        }
    }
    if let Some((name, used)) = rules.used_parameters {
        let Some(function) = functions.iter().find(|f| f.name == name) else {
            return Err(RewriteError::Missing(name.to_owned()));
        };
        let still_used = function.used_parameters(&code);
        if let Some(parameter) = used.iter().find(|param| !still_used.contains(param)) {
            return Err(RewriteError::DroppedParameter {
                function: name.to_owned(),
                parameter: parameter.clone(),
            });
        }
    }
    Ok(())
}

/// The outermost functions a model's rewrite defines, with ranges into `code`, or
/// the rewrite's first syntax error. A method alone does not parse in every
/// language (`async get() {}` is an error outside a class in TypeScript); where the
/// language's table entry has a `method_wrapper`, code that fails alone is tried
/// inside it, and the error reported is the one of the code alone.
pub fn rewrite_functions(
    language: Language,
    code: &str,
) -> Result<Vec<FunctionInfo>, RewriteError> {
    let tree = parse(language, code, None).ok_or(RewriteError::Unparsable(language))?;
    let root = tree.root_node();
    if !root.has_error() {
        let whole = 0..code.len();
        return Ok(Functions::find(language, root, code, whole.clone()).within(root, code, whole));
    }
    let at = first_error(root).start_position();
    let error = RewriteError::Syntax {
        line: at.row + 1,
        column: at.column + 1,
    };
    let Some((before, after)) = language.spec().and_then(|spec| spec.method_wrapper) else {
        return Err(error);
    };
    let wrapped = format!("{before}{code}{after}");
    let Some(tree) = parse(language, &wrapped, None).filter(|tree| !tree.root_node().has_error())
    else {
        return Err(error);
    };
    let root = tree.root_node();
    let inside = before.len()..before.len() + code.len();
    let shift = |range: Range<usize>| range.start - inside.start..range.end - inside.start;
    Ok(Functions::find(language, root, &wrapped, inside.clone())
        .within(root, &wrapped, inside.clone())
        .into_iter()
        .map(|info| FunctionInfo {
            range: shift(info.range),
            params: shift(info.params),
            ..info
        })
        .collect())
}

/// [`validate_rewrite`] for "Refactor to async" of one function: `code` must define
/// an async function called `name`.
pub fn validate_async_rewrite(
    language: Language,
    code: &str,
    name: &str,
) -> Result<(), RewriteError> {
    let keep = [name.to_owned()];
    let rules = RewriteRules {
        keep: &keep,
        require_async: true,
        used_parameters: None,
    };
    validate_rewrite(language, code, &rules)
}

/// The first ERROR or MISSING node on the way down from `root` (or `root` itself):
/// where the syntax error is.
fn first_error(root: Node<'_>) -> Node<'_> {
    let mut node = root;
    'descend: loop {
        if node.is_error() || node.is_missing() {
            return node;
        }
        let mut walker = node.walk();
        for child in node.children(&mut walker) {
            if child.has_error() || child.is_missing() {
                node = child;
                continue 'descend;
            }
        }
        return node;
    }
}

/// Removes the indentation common to all non-blank lines; blank lines become empty.
pub fn dedent(code: &str) -> String {
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

    /// Every outermost function of a fixture, one per line: kind, name, parameters,
    /// and the first line of its range.
    fn check_functions(language: Language, text: &str, expect: Expect) {
        let engine = ContextEngine::new(EngineConfig::default()).unwrap();
        let doc = engine.parse(language, text.to_owned());
        let mut actual = String::new();
        for info in functions_in(&doc, 0..text.len()) {
            let first_line = text[info.range.clone()].lines().next().unwrap_or("");
            actual.push_str(&format!(
                "{} {}{} {} | {first_line}\n",
                info.kind,
                if info.is_async { "async " } else { "" },
                info.name,
                &text[info.params.clone()],
            ));
        }
        expect.assert_eq(&actual);
    }

    #[test]
    fn functions_in_a_range_are_the_outermost_ones() {
        let text = "@cache\ndef a(x):\n    def inner():\n        pass\n\nclass B:\n    async def m(self, y):\n        return y\n";
        check_functions(
            Language::Python,
            text,
            expect![[r#"
                function a (x) | @cache
                method async m (self, y) | async def m(self, y):
            "#]],
        );
        let engine = ContextEngine::new(EngineConfig::default()).unwrap();
        let doc = engine.parse(Language::Python, text.to_owned());
        // Function bodies are not looked into: a range inside `a` finds nothing,
        // though `inner` lies wholly inside it.
        let inner = text.find("    def inner").unwrap()..text.find("\nclass").unwrap();
        assert!(functions_in(&doc, inner).is_empty());
        assert!(functions_in(&doc, 0..3).is_empty());
    }

    /// Functions are looked for only around the cursor or the range; the class
    /// around them and their decorators are still found.
    #[test]
    fn a_cursor_deep_in_a_file_finds_its_method_and_decorator() {
        let mut text = "class C:\n".to_owned();
        for i in 0..40 {
            text.push_str(&format!(
                "    @property\n    def m{i}(self):\n        return {i}\n"
            ));
        }
        let engine = ContextEngine::new(EngineConfig::default()).unwrap();
        let doc = engine.parse(Language::Python, text.clone());
        let info = enclosing_function(&doc, text.find("return 35").unwrap()).unwrap();
        assert_eq!((info.kind, info.name.as_str()), ("method", "m35"));
        assert!(text[info.range.clone()].starts_with("@property\n    def m35"));
        let start = text.find("    @property\n    def m20").unwrap();
        let end = text.find("    @property\n    def m21").unwrap();
        let found = functions_in(&doc, start..end);
        assert_eq!(found.len(), 1);
        assert_eq!((found[0].kind, found[0].name.as_str()), ("method", "m20"));
        assert_eq!(found[0].range.start, start + 4);
    }

    #[test]
    fn typescript_and_javascript_functions() {
        let text = "export async function load(path: string): Promise<string> {\n  return await read(path);\n}\n\nconst parse = async (raw: string) => JSON.parse(raw);\nconst double = x => x * 2;\n\nclass Store {\n  constructor(private db: Db) {}\n  async get(key: string) {\n    return this.db.get(key);\n  }\n  put(key: string, value: string): void {}\n}\n";
        check_functions(
            Language::TypeScript,
            text,
            expect![[r#"
                function async load (path: string) | async function load(path: string): Promise<string> {
                function async parse (raw: string) | const parse = async (raw: string) => JSON.parse(raw);
                function double x | const double = x => x * 2;
                method constructor (private db: Db) | constructor(private db: Db) {}
                method async get (key: string) | async get(key: string) {
                method put (key: string, value: string) | put(key: string, value: string): void {}
            "#]],
        );
        check_functions(
            Language::JavaScript,
            "function* ids() { yield 1; }\nexport default class View {\n  render() { return <div>{this.props.x}</div>; }\n}\nasync function main() { await run(); }\n",
            expect![[r#"
                function ids () | function* ids() { yield 1; }
                method render () | render() { return <div>{this.props.x}</div>; }
                function async main () | async function main() { await run(); }
            "#]],
        );
    }

    #[test]
    fn go_c_and_java_functions() {
        check_functions(
            Language::Go,
            "package main\n\nfunc Add(a, b int) int { return a + b }\n\nfunc (s *Store) Get(key string) string {\n\treturn s.m[key]\n}\n",
            expect![[r#"
                function Add (a, b int) | func Add(a, b int) int { return a + b }
                method Get (key string) | func (s *Store) Get(key string) string {
            "#]],
        );
        check_functions(
            Language::C,
            "static int add(int a, int b) { return a + b; }\nchar *name(struct user *u) {\n    return u->name;\n}\nint prototype(void);\n",
            expect![[r#"
                function add (int a, int b) | static int add(int a, int b) { return a + b; }
                function name (struct user *u) | char *name(struct user *u) {
            "#]],
        );
        check_functions(
            Language::Java,
            "public class Store {\n    public Store(Db db) { this.db = db; }\n    @Override\n    public String get(String key) {\n        return db.get(key);\n    }\n}\n",
            expect![[r#"
                method Store (Db db) | public Store(Db db) { this.db = db; }
                method get (String key) | @Override
            "#]],
        );
    }

    /// A rewritten method arrives alone, which TypeScript, JavaScript and Java parse
    /// only inside a class: the validator checks it there, and reports errors at
    /// their place in the code as sent.
    #[test]
    fn methods_alone_are_validated_inside_a_class() {
        let method =
            "async get(key: string): Promise<string> {\n  return await this.db.get(key);\n}\n";
        assert_eq!(
            validate_async_rewrite(Language::TypeScript, method, "get"),
            Ok(())
        );
        assert_eq!(
            validate_async_rewrite(
                Language::JavaScript,
                "  async get(key) {\n    return key;\n  }\n",
                "get"
            ),
            Ok(())
        );
        assert_eq!(
            validate_async_rewrite(
                Language::TypeScript,
                "get(key: string) {\n  return key;\n}\n",
                "get"
            ),
            Err(RewriteError::NotAsync("get".into()))
        );
        assert_eq!(
            validate_async_rewrite(Language::TypeScript, "async get(key: string {\n}\n", "get"),
            Err(RewriteError::Syntax { line: 1, column: 1 })
        );
        let java = "public String get(String key) {\n    return items.get(key);\n}\n";
        let functions = rewrite_functions(Language::Java, java).unwrap();
        assert_eq!(functions.len(), 1);
        assert_eq!(&java[functions[0].range.clone()], java.trim_end());
        assert_eq!(&java[functions[0].params.clone()], "(String key)");
        // Go has no wrapper and needs none: a method parses at the top level.
        assert!(rewrite_functions(Language::Go, "func (s *S) Get() int { return 1 }\n").is_ok());
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
            Err(RewriteError::NotAsync("fetch".into()))
        );
        assert_eq!(
            validate_async_rewrite(Language::Python, "async def other():\n    pass\n", "fetch"),
            Err(RewriteError::Missing("fetch".into()))
        );
        let broken = validate_async_rewrite(Language::Python, "async def fetch(:\n", "fetch");
        assert!(broken
            .unwrap_err()
            .to_string()
            .contains("syntax error at line 1"));
        assert_eq!(
            validate_async_rewrite(Language::Rust, "pub async fn fetch() -> u8 { 1 }", "fetch"),
            Ok(())
        );
        assert!(validate_async_rewrite(Language::Rust, "async fn fetch() { 1 +", "fetch").is_err());
        assert!(validate_async_rewrite(Language::Other, "x", "fetch").is_err());
    }
}
