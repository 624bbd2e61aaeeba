//! The languages the engine parses, as data: one [`languages!`] entry per language
//! (its names, grammar, comment marker and refactor instruction) plus its query files
//! under `queries/<name>/`. Nothing else in the workspace names a language's syntax.

use std::fmt;
use std::path::Path;

/// Everything the engine knows about one parsed language. Read it through
/// [`Language::spec`].
#[derive(Debug)]
pub struct LanguageSpec {
    /// The name used in query directories, code fences and config (`python`).
    pub name: &'static str,
    /// LSP `languageId`s, and other names people use for it (`python3`).
    pub lsp_ids: &'static [&'static str],
    /// File extensions, without the dot.
    pub extensions: &'static [&'static str],
    /// The tree-sitter grammar. A function, not a value, because a grammar crate
    /// exports a `LanguageFn` that only becomes a `tree_sitter::Language` at run time.
    pub grammar: fn() -> tree_sitter::Language,
    /// What starts a line comment.
    pub line_comment: &'static str,
    /// The instruction behind "Refactor to async"; `None` for a language without
    /// async functions, which then gets no such action.
    pub async_instruction: Option<&'static str>,
    /// The text a method needs before and after it to parse on its own, where a
    /// method alone is not valid code (Java's and JavaScript's methods live only in
    /// a class body). A model's rewrite of a method is checked inside it.
    pub method_wrapper: Option<(&'static str, &'static str)>,
    /// The built-in `queries/<name>/chunks.scm`.
    pub(crate) chunks_query: &'static str,
    /// The built-in `queries/<name>/functions.scm`.
    pub(crate) functions_query: &'static str,
}

/// Declares the [`Language`] enum and its table from one entry per language, so that
/// the variant, its spec and its query files cannot drift apart. The spec's name is
/// the enum variant lowercased (that is also its serde name), and the queries are
/// compiled in from `queries/<name>/`.
macro_rules! languages {
    ($($(#[$doc:meta])* $variant:ident $name:literal { $($field:ident: $value:expr,)* })*) => {
        /// A language the engine knows. `Other` text is still chunked, by line-cut
        /// blocks.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
        #[serde(rename_all = "lowercase")]
        pub enum Language {
            $($(#[$doc])* $variant,)*
            Other,
        }

        /// The specs, in the order of the enum's variants (`Other` has none).
        static LANGUAGES: &[LanguageSpec] = &[$(LanguageSpec {
            name: $name,
            chunks_query: include_str!(concat!("../../../queries/", $name, "/chunks.scm")),
            functions_query: include_str!(concat!("../../../queries/", $name, "/functions.scm")),
            $($field: $value,)*
        },)*];

        impl Language {
            /// Every language with a grammar, for tests and query loading.
            pub const PARSED: &'static [Language] = &[$(Language::$variant,)*];
        }
    };
}

languages! {
    Python "python" {
        lsp_ids: &["python", "python3"],
        extensions: &["py", "pyi"],
        grammar: || tree_sitter_python::LANGUAGE.into(),
        line_comment: "#",
        async_instruction: Some(
            "Refactor to use async/await: make it an `async def`, use \
             `await asyncio.sleep(...)` instead of `time.sleep(...)`, and \
             `httpx.AsyncClient` with `await` instead of `requests`.",
        ),
        method_wrapper: None,
    }
    // The one-shot example matters: without it Qwen2.5-Coder 0.5B writes Rust's
    // `.await` as a prefix (`await sleep(d)`), which does not parse.
    Rust "rust" {
        lsp_ids: &["rust"],
        extensions: &["rs"],
        grammar: || tree_sitter_rust::LANGUAGE.into(),
        line_comment: "//",
        async_instruction: Some(
            "Refactor to use async/await. Example: `fn load(p: &Path) -> String { \
             std::thread::sleep(D); std::fs::read_to_string(p).unwrap() }` becomes \
             `async fn load(p: &Path) -> String { tokio::time::sleep(D).await; \
             tokio::fs::read_to_string(p).await.unwrap() }` (in Rust, `.await` comes \
             after the expression).",
        ),
        method_wrapper: None,
    }
    // `.tsx` (`typescriptreact`) needs tree-sitter-typescript's separate TSX grammar,
    // so it is not mapped here: a TSX file parsed as TypeScript would be mostly errors.
    TypeScript "typescript" {
        lsp_ids: &["typescript", "ts"],
        extensions: &["ts", "mts", "cts"],
        grammar: || tree_sitter_typescript::LANGUAGE_TYPESCRIPT.into(),
        line_comment: "//",
        // Small models forget the `Promise` return type and the `await` on calls
        // that already return promises; the example shows both.
        async_instruction: Some(
            "Refactor to use async/await. Example: `function load(path: string): string { \
             sleepSync(100); return fs.readFileSync(path, \"utf8\"); }` becomes \
             `async function load(path: string): Promise<string> { await sleep(100); \
             return await fs.promises.readFile(path, \"utf8\"); }` (an `async` function \
             returns a `Promise`, and `await` goes before each call that returns one).",
        ),
        method_wrapper: Some(("class Wrapper {\n", "\n}")),
    }
    // The grammar parses JSX too, so React files are JavaScript here.
    JavaScript "javascript" {
        lsp_ids: &["javascript", "javascriptreact", "js", "jsx"],
        extensions: &["js", "mjs", "cjs", "jsx"],
        grammar: || tree_sitter_javascript::LANGUAGE.into(),
        line_comment: "//",
        async_instruction: Some(
            "Refactor to use async/await. Example: `function load(path) { \
             sleepSync(100); return fs.readFileSync(path, \"utf8\"); }` becomes \
             `async function load(path) { await sleep(100); \
             return await fs.promises.readFile(path, \"utf8\"); }` (mark the function \
             `async`, and put `await` before each call that returns a promise).",
        ),
        method_wrapper: Some(("class Wrapper {\n", "\n}")),
    }
    // Go, C and Java have no async functions (goroutines, threads and futures are
    // library matters), so they get no "Refactor to async".
    Go "go" {
        lsp_ids: &["go", "golang"],
        extensions: &["go"],
        grammar: || tree_sitter_go::LANGUAGE.into(),
        line_comment: "//",
        async_instruction: None,
        method_wrapper: None,
    }
    C "c" {
        lsp_ids: &["c"],
        extensions: &["c", "h"],
        grammar: || tree_sitter_c::LANGUAGE.into(),
        line_comment: "//",
        async_instruction: None,
        method_wrapper: None,
    }
    Java "java" {
        lsp_ids: &["java"],
        extensions: &["java"],
        grammar: || tree_sitter_java::LANGUAGE.into(),
        line_comment: "//",
        async_instruction: None,
        method_wrapper: Some(("class Wrapper {\n", "\n}")),
    }
}

impl Language {
    /// Maps an LSP language id, a file extension or a common name; unknown names
    /// give `Other`.
    pub fn from_name(name: &str) -> Language {
        let name = name.trim().trim_start_matches('.').to_ascii_lowercase();
        Language::PARSED
            .iter()
            .copied()
            .find(|language| {
                language.spec().is_some_and(|spec| {
                    spec.name == name
                        || spec.lsp_ids.contains(&name.as_str())
                        || spec.extensions.contains(&name.as_str())
                })
            })
            .unwrap_or(Language::Other)
    }

    /// Maps a file path by its extension.
    pub fn from_path(path: &Path) -> Language {
        path.extension()
            .and_then(|ext| ext.to_str())
            .map_or(Language::Other, Language::from_name)
    }

    /// The language's entry in the table; `None` for `Other`.
    pub fn spec(self) -> Option<&'static LanguageSpec> {
        LANGUAGES.get(self as usize)
    }

    /// The name used in query directories and code fences (`python`, `rust`).
    pub fn name(self) -> &'static str {
        self.spec().map_or("other", |spec| spec.name)
    }

    /// The info string for a Markdown code fence; empty for `Other`.
    pub fn fence_tag(self) -> &'static str {
        self.spec().map_or("", |spec| spec.name)
    }

    /// The instruction behind "Refactor to async", or `None` where the language has
    /// no async functions (and for `Other`).
    pub fn async_instruction(self) -> Option<&'static str> {
        self.spec().and_then(|spec| spec.async_instruction)
    }

    pub(crate) fn grammar(self) -> Option<tree_sitter::Language> {
        self.spec().map(|spec| (spec.grammar)())
    }
}

impl fmt::Display for Language {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_paths_map_to_languages() {
        assert_eq!(Language::from_name("python"), Language::Python);
        assert_eq!(Language::from_name("PY"), Language::Python);
        assert_eq!(Language::from_name("rs"), Language::Rust);
        assert_eq!(Language::from_name("rust"), Language::Rust);
        assert_eq!(Language::from_name("cobol"), Language::Other);
        assert_eq!(
            Language::from_path(Path::new("src/app.py")),
            Language::Python
        );
        assert_eq!(Language::from_path(Path::new("lib.rs")), Language::Rust);
        assert_eq!(Language::from_path(Path::new("Makefile")), Language::Other);
    }

    #[test]
    fn new_languages_map_by_id_and_extension() {
        let cases = [
            ("typescript", Language::TypeScript),
            ("app.mts", Language::TypeScript),
            ("javascriptreact", Language::JavaScript),
            ("view.jsx", Language::JavaScript),
            ("go", Language::Go),
            ("main.go", Language::Go),
            ("c", Language::C),
            ("util.h", Language::C),
            ("java", Language::Java),
            ("Main.java", Language::Java),
        ];
        for (name, language) in cases {
            let found = match name.contains('.') {
                true => Language::from_path(Path::new(name)),
                false => Language::from_name(name),
            };
            assert_eq!(found, language, "{name}");
        }
    }

    /// The table is indexed by the enum's discriminant; every entry's name is its
    /// variant's serde name, so config files and query folders agree.
    #[test]
    fn the_table_lines_up_with_the_enum() {
        assert_eq!(LANGUAGES.len(), Language::PARSED.len());
        for &language in Language::PARSED {
            let serde_name = serde_json::to_value(language).unwrap();
            assert_eq!(serde_name, language.name());
            assert_eq!(Language::from_name(language.name()), language);
            assert!(language.grammar().is_some(), "{language}");
        }
        assert!(Language::Other.spec().is_none());
        assert_eq!(Language::Other.name(), "other");
        assert_eq!(Language::Go.async_instruction(), None);
        assert!(Language::TypeScript.async_instruction().is_some());
    }
}
