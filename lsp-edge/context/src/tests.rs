//! Data-driven tests of the whole pipeline: fixtures with a `$0` cursor in, chunk
//! listings and rendered contexts out.

use expect_test::{expect, Expect};

use crate::chunk::ChunkKind;
use crate::{render_text, ContextEngine, ContextOptions, EngineConfig, Language, Mode};

/// Small limits so that short fixtures exercise splitting and selection.
fn small_config() -> EngineConfig {
    EngineConfig {
        min_chars_to_chunk: 0,
        min_saving: 0.0,
        max_chunk_chars: 400,
        max_chunks: 3,
        prefix_max_lines: 3,
        suffix_max_lines: 1,
        ..EngineConfig::default()
    }
}

/// Splits a fixture at its `$0` marker: the text without it, and its byte offset
/// (the end of the text when there is none).
fn cursor(fixture: &str) -> (String, usize) {
    match fixture.find("$0") {
        Some(offset) => (fixture.replacen("$0", "", 1), offset),
        None => (fixture.to_owned(), fixture.len()),
    }
}

fn list_chunks(language: Language, text: &str, config: EngineConfig) -> String {
    let engine = ContextEngine::new(config).unwrap();
    let doc = engine.parse(language, text.to_owned());
    let chunks = engine.chunks(&doc);
    let lines = crate::chunk::LineIndex::new(text);
    let mut out = String::new();
    let mut last_end = 0;
    for chunk in &chunks {
        // Chunks are ordered, disjoint (blocks overlap on purpose), and cut on
        // character boundaries.
        assert!(
            chunk.range.start >= last_end || chunk.kind == ChunkKind::Block,
            "{chunk:?}"
        );
        assert!(text.is_char_boundary(chunk.range.start) && text.is_char_boundary(chunk.range.end));
        last_end = chunk.range.end;
        let kind = match chunk.kind {
            ChunkKind::Definition => "def",
            ChunkKind::Glue => "glue",
            ChunkKind::Block => "block",
        };
        let first = lines.line_of(chunk.range.start) + 1;
        let last = lines.line_of(chunk.range.end - 1) + 1;
        let first_line = chunk.text(text).lines().next().unwrap_or("").trim_end();
        let lines = format!("{first}-{last}");
        out.push_str(&format!(
            "{lines:<6}{kind:6}{:<22} {first_line}\n",
            chunk.symbol
        ));
    }
    out
}

fn check_chunks(language: Language, fixture: &str, expect: Expect) {
    expect.assert_eq(&list_chunks(language, fixture, small_config()));
}

fn render(language: Language, fixture: &str, config: EngineConfig, opts: ContextOptions) -> String {
    let (text, cursor) = cursor(fixture);
    let engine = ContextEngine::new(config).unwrap();
    let mut ctx = engine.context_for_text(language, &text, cursor, &opts);
    ctx.stats.elapsed_us = 0;
    render_text(&ctx)
}

fn check_fim(language: Language, fixture: &str, expect: Expect) {
    let opts = ContextOptions {
        path: Some("src/app".into()),
        ..ContextOptions::default()
    };
    expect.assert_eq(&render(language, fixture, small_config(), opts));
}

const PYTHON_CLIENT: &str = r#"import os
from typing import List

# Retry policy for flaky calls.
@retry(times=3)
@log
def fetch(url):
    return get(url)

MAX = 10

class Client:
    """A client with a nested config class, big enough to split."""

    class Config:
        timeout = 5
        retries = MAX

    def __init__(self):
        self.config = Client.Config()
        self.conn = os.environ.get("CONN", "localhost:8080")
        self.buffer: List[bytes] = []

    async def send(self, data):
        # Sends and waits for the peer.
        await self.conn.write(data)
        self.buffer.append(data)
        return len(self.buffer)

    @property
    def pending(self):
        return len(self.buffer)

if __name__ == "__main__":
    fetch("https://example.com")
"#;

#[test]
fn python_decorators_nested_classes_and_async_methods() {
    check_chunks(
        Language::Python,
        PYTHON_CLIENT,
        expect![[r#"
            1-2   glue  lines 1-2              import os
            4-8   def   fetch                  # Retry policy for flaky calls.
            10-10 glue  line 10                MAX = 10
            12-13 glue  Client                 class Client:
            15-17 def   Client::Config             class Config:
            19-22 def   Client::__init__           def __init__(self):
            24-28 def   Client::send               async def send(self, data):
            30-32 def   Client::pending            @property
            34-35 glue  lines 34-35            if __name__ == "__main__":
        "#]],
    );
}

#[test]
fn python_small_definitions_stay_whole() {
    check_chunks(
        Language::Python,
        "def a():\n    pass\nclass B:\n    def c(self):\n        pass\n\n\n\nx = a()\n",
        expect![[r#"
            1-2   def   a                      def a():
            3-5   def   B                      class B:
            9-9   glue  line 9                 x = a()
        "#]],
    );
}

#[test]
fn oversized_definitions_split_level_by_level() {
    let config = EngineConfig {
        max_chunk_chars: 40,
        ..small_config()
    };
    let text = "class Outer:\n    class Inner:\n        def a(self):\n            return 1\n\n        def b(self):\n            return 2\n\n    def c(self):\n        x = 1\n        y = 2\n        z = 3\n        return x + y + z\n";
    expect![[r#"
        1-1   glue  Outer                  class Outer:
        2-2   glue  Outer::Inner               class Inner:
        3-3   def   Outer::Inner::a                def a(self):
        4-4   def   Outer::Inner::a                    return 1
        6-6   def   Outer::Inner::b                def b(self):
        7-7   def   Outer::Inner::b                    return 2
        9-10  def   Outer::c                   def c(self):
        11-12 def   Outer::c                       y = 2
        13-13 def   Outer::c                       return x + y + z
    "#]]
    .assert_eq(&list_chunks(Language::Python, text, config));
}

#[test]
fn python_syntax_errors_still_chunk() {
    check_chunks(
        Language::Python,
        "import sys\n\ndef broken(x):\n    return x +\n\ndef fine(y):\n    return y * 2\n\nclass Ok:\n    def m(self:\n        return fine(1)\n",
        expect![[r#"
            1-1   glue  line 1                 import sys
            3-4   def   broken                 def broken(x):
            6-7   def   fine                   def fine(y):
            9-11  def   Ok                     class Ok:
        "#]],
    );
    // An unclosed parenthesis turns the rest of a Python file into one ERROR
    // node: mostly errors, so blocks.
    check_chunks(
        Language::Python,
        "import sys\n\ndef broken(x:\n    return x +\n\ndef fine(y):\n    return y * 2\n",
        expect![[r#"
            1-7   block lines 1-7              import sys
        "#]],
    );
}

#[test]
fn python_unicode_and_crlf() {
    check_chunks(
        Language::Python,
        "# 設定\r\nNAME = \"Grüße 😀\"\r\n\r\ndef 挨拶(名前):\r\n    return f\"こんにちは {名前} 👋\"\r\n\r\nclass Émoji:\r\n    def show(self):\r\n        print(\"🎉\")\r\n",
        expect![[r#"
            1-2   glue  lines 1-2              # 設定
            4-5   def   挨拶                     def 挨拶(名前):
            7-9   def   Émoji                  class Émoji:
        "#]],
    );
}

#[test]
fn python_mostly_errors_falls_back_to_blocks() {
    let config = EngineConfig {
        fallback_block_chars: 40,
        fallback_overlap_chars: 12,
        ..small_config()
    };
    let text = "))) ((( def def :::\n}}} {{{ class ]]]\n@@@ !!! $$$ %%%\n))) ((( ::: def\nlast line here\n";
    expect![[r#"
        1-2   block lines 1-2              ))) ((( def def :::
        3-4   block lines 3-4              @@@ !!! $$$ %%%
        5-5   block line 5                 last line here
    "#]]
    .assert_eq(&list_chunks(Language::Python, text, config));
}

const RUST_ITEMS: &str = r#"use std::collections::HashMap;

/// A key-value store.
#[derive(Debug, Default)]
pub struct Store {
    items: HashMap<String, String>,
}

pub enum Event { Put(String), Delete(String) }

pub trait Backend {
    fn load(&self) -> Store;
}

impl Store {
    /// Creates an empty store.
    pub fn new() -> Self {
        Store { items: HashMap::new() }
    }

    pub async fn sync(&mut self, backend: &dyn Backend) {
        let fresh = backend.load();
        for (key, value) in fresh.items {
            self.items.insert(key, value);
        }
        tokio::task::yield_now().await;
    }

    #[inline]
    pub fn get(&self, key: &str) -> Option<&String> {
        self.items.get(key)
    }
}

mod tests {
    #[test]
    fn empty() {}
}

macro_rules! store {
    () => { Store::new() };
}

const LIMIT: usize = 64;
"#;

#[test]
fn rust_impl_blocks_traits_attributes_and_async_fns() {
    check_chunks(
        Language::Rust,
        RUST_ITEMS,
        expect![[r#"
        1-1   glue  line 1                 use std::collections::HashMap;
        3-7   def   Store                  /// A key-value store.
        9-9   def   Event                  pub enum Event { Put(String), Delete(String) }
        11-13 def   Backend                pub trait Backend {
        15-15 glue  Store                  impl Store {
        16-19 def   Store::new                 /// Creates an empty store.
        21-27 def   Store::sync                pub async fn sync(&mut self, backend: &dyn Backend) {
        29-33 def   Store::get                 #[inline]
        35-38 def   tests                  mod tests {
        40-42 def   store                  macro_rules! store {
        44-44 glue  line 44                const LIMIT: usize = 64;
    "#]],
    );
}

#[test]
fn rust_syntax_errors_still_chunk() {
    check_chunks(
        Language::Rust,
        "fn good() -> u8 { 1 }\n\nfn broken( {\n    let x = ;\n}\n\nstruct After { a: u8 }\n\nimpl After {\n    fn a(&self) -> u8 { self.a }\n}\n",
        expect![[r#"
            1-1   def   good                   fn good() -> u8 { 1 }
            3-5   def   broken                 fn broken( {
            7-7   def   After                  struct After { a: u8 }
            9-11  def   After                  impl After {
        "#]],
    );
}

#[test]
fn rust_unicode_and_crlf() {
    check_chunks(
        Language::Rust,
        "// 日本語のコメント 🦀\r\nconst GREETING: &str = \"héllo 😀\";\r\n\r\nfn grüße() -> &'static str {\r\n    \"👋\"\r\n}\r\n\r\nstruct 点 { x: f32 }\r\n",
        expect![[r#"
            1-2   glue  lines 1-2              // 日本語のコメント 🦀
            4-6   def   grüße                  fn grüße() -> &'static str {
            8-8   def   点                      struct 点 { x: f32 }
        "#]],
    );
}

const TYPESCRIPT_MODULE: &str = r#"import { readFile } from "fs/promises";

/** A cached key-value store. */
export interface Backend {
  load(key: string): Promise<string>;
}

type Key = string;

export enum Mode { Read, Write }

export class Store {
  private items = new Map<Key, string>();

  constructor(private backend: Backend) {}

  // Loads a key through the backend, once.
  async get(key: Key): Promise<string> {
    const cached = this.items.get(key);
    if (cached !== undefined) {
      return cached;
    }
    const value = await this.backend.load(key);
    this.items.set(key, value);
    return value;
  }

  clear(): void {
    this.items.clear();
  }
}

export const parse = async (path: string) => JSON.parse(await readFile(path, "utf8"));

function helper(x: number): number {
  return x * 2;
}
"#;

#[test]
fn typescript_exports_classes_interfaces_and_arrow_functions() {
    check_chunks(
        Language::TypeScript,
        TYPESCRIPT_MODULE,
        expect![[r#"
            1-1   glue  line 1                 import { readFile } from "fs/promises";
            3-6   def   Backend                /** A cached key-value store. */
            8-8   def   Key                    type Key = string;
            10-10 def   Mode                   export enum Mode { Read, Write }
            12-13 glue  Store                  export class Store {
            15-15 def   Store::constructor       constructor(private backend: Backend) {}
            17-26 def   Store::get               // Loads a key through the backend, once.
            28-31 def   Store::clear             clear(): void {
            33-33 def   parse                  export const parse = async (path: string) => JSON.parse(await readFile(path, "utf8"));
            35-37 def   helper                 function helper(x: number): number {
        "#]],
    );
}

#[test]
fn javascript_classes_jsx_and_arrow_functions() {
    check_chunks(
        Language::JavaScript,
        "import React from \"react\";\n\n// Renders one row.\nexport function Row({ item }) {\n  return <li className=\"row\">{item.name}</li>;\n}\n\nclass List extends React.Component {\n  render() {\n    return <ul>{this.props.items.map((item) => <Row item={item} />)}</ul>;\n  }\n}\n\nconst total = (items) => items.reduce((sum, item) => sum + item.price, 0);\n\nmodule.exports = { List, total };\n",
        expect![[r#"
            1-1   glue  line 1                 import React from "react";
            3-6   def   Row                    // Renders one row.
            8-12  def   List                   class List extends React.Component {
            14-14 def   total                  const total = (items) => items.reduce((sum, item) => sum + item.price, 0);
            16-16 glue  line 16                module.exports = { List, total };
        "#]],
    );
}

#[test]
fn go_functions_methods_and_types() {
    check_chunks(
        Language::Go,
        "package store\n\nimport \"sync\"\n\n// Store is a key-value store safe for concurrent use.\ntype Store struct {\n\tmu    sync.Mutex\n\titems map[string]string\n}\n\n// New makes an empty store.\nfunc New() *Store {\n\treturn &Store{items: map[string]string{}}\n}\n\nfunc (s *Store) Get(key string) (string, bool) {\n\ts.mu.Lock()\n\tdefer s.mu.Unlock()\n\tv, ok := s.items[key]\n\treturn v, ok\n}\n\nvar limit = 64\n",
        expect![[r#"
            1-3   glue  lines 1-3              package store
            5-9   def   Store                  // Store is a key-value store safe for concurrent use.
            11-14 def   New                    // New makes an empty store.
            16-21 def   Get                    func (s *Store) Get(key string) (string, bool) {
            23-23 glue  line 23                var limit = 64
        "#]],
    );
}

#[test]
fn c_functions_structs_typedefs_and_macros() {
    check_chunks(
        Language::C,
        "#include <stdlib.h>\n\n#define MAX(a, b) ((a) > (b) ? (a) : (b))\n\nstruct point {\n    int x;\n    int y;\n};\n\ntypedef struct point point_t;\n\n/* Distance from the origin, squared. */\nint norm2(const point_t *p) {\n    return p->x * p->x + p->y * p->y;\n}\n\nchar *copy_name(const char *name) {\n    char *out = malloc(strlen(name) + 1);\n    strcpy(out, name);\n    return out;\n}\n\nstatic int counter = 0;\n",
        expect![[r#"
            1-1   glue  line 1                 #include <stdlib.h>
            3-4   def   MAX                    #define MAX(a, b) ((a) > (b) ? (a) : (b))
            5-8   def   point                  struct point {
            8-8   glue  line 8                 ;
            10-10 def   point_t                typedef struct point point_t;
            12-15 def   norm2                  /* Distance from the origin, squared. */
            17-21 def   copy_name              char *copy_name(const char *name) {
            23-23 glue  line 23                static int counter = 0;
        "#]],
    );
}

#[test]
fn java_classes_constructors_and_annotated_methods() {
    check_chunks(
        Language::Java,
        "package store;\n\nimport java.util.HashMap;\n\n/** A key-value store. */\npublic class Store {\n    private final HashMap<String, String> items = new HashMap<>();\n\n    public Store() {}\n\n    @Override\n    public String toString() {\n        return \"Store(\" + items.size() + \")\";\n    }\n\n    // Stores a value and returns the old one.\n    public String put(String key, String value) {\n        String old = items.get(key);\n        items.put(key, value);\n        return old;\n    }\n\n    interface Listener {\n        void changed(String key);\n    }\n}\n\nenum Mode { READ, WRITE }\n",
        expect![[r#"
            1-3   glue  lines 1-3              package store;
            5-7   glue  Store                  /** A key-value store. */
            9-9   def   Store::Store               public Store() {}
            11-14 def   Store::toString            @Override
            16-21 def   Store::put                 // Stores a value and returns the old one.
            23-26 def   Store::Listener            interface Listener {
            28-28 def   Mode                   enum Mode { READ, WRITE }
        "#]],
    );
}

#[test]
fn other_languages_chunk_in_overlapping_blocks() {
    let config = EngineConfig {
        fallback_block_chars: 30,
        fallback_overlap_chars: 10,
        ..small_config()
    };
    let text = "line one\nline two 😀\nline three\nline four\nline five\nline six\nline seven\n";
    expect![[r#"
        1-2   block lines 1-2              line one
        3-4   block lines 3-4              line three
        4-6   block lines 4-6              line four
        6-7   block lines 6-7              line six
    "#]]
    .assert_eq(&list_chunks(Language::Other, text, config));
}

const PYTHON_SERVICE: &str = r#"import json

def load_users(path):
    with open(path) as f:
        return json.load(f)

def format_user(user):
    return f"{user['name']} <{user['email']}>"

def unrelated_math(a, b):
    return a * b + 42

def fetch_user(users, user_id):
    for user in users:
        if user["id"] == user_id:
            return user
    return None

def main():
    users = load_users("users.json")
    user = fetch_user(users, 7)
    print(format_$0)

def format_user(user):
    return f"{user['name']} <{user['email']}>"
"#;

#[test]
fn fim_adds_definitions_used_near_the_cursor() {
    // `fetch_user` and `load_users` are called near the cursor and come first;
    // `format_` is half typed and does not count. `unrelated_math` matches
    // nothing and is left out rather than guessed at.
    check_fim(
        Language::Python,
        PYTHON_SERVICE,
        expect![[r#"
        mode: fim
        --- extra: src/app::load_users ---
        def load_users(path):
            with open(path) as f:
                return json.load(f)
        --- extra: src/app::format_user ---
        def format_user(user):
            return f"{user['name']} <{user['email']}>"
        --- extra: src/app::fetch_user ---
        def fetch_user(users, user_id):
            for user in users:
                if user["id"] == user_id:
                    return user
            return None
        --- prefix ---
        def main():
            users = load_users("users.json")
            user = fetch_user(users, 7)
            print(format_
        --- suffix ---
        )

        --- stats ---
        chunks: 7 found, 6 unique, 3 selected
        chars: 511 before, 437 after, 14.5% reduction
        time: 0 us
    "#]],
    );
}

#[test]
fn by_default_fim_sends_its_windows_alone_and_instructions_chunks() {
    // Long enough to chunk, with prefix and suffix windows that leave code out.
    let config = EngineConfig {
        min_chars_to_chunk: 0,
        min_saving: 0.0,
        prefix_max_lines: 3,
        suffix_max_lines: 1,
        ..EngineConfig::default()
    };
    let engine = ContextEngine::new(config).unwrap();
    let (text, at) = cursor(PYTHON_SERVICE);
    let fim = engine.context_for_text(Language::Python, &text, at, &ContextOptions::default());
    assert_eq!(fim.mode, Mode::Fim);
    assert!(fim.extra.is_empty(), "{:?}", fim.extra);
    assert_eq!(fim.stats.chunks_selected, 0);
    assert!(fim.prefix.len() + fim.suffix.len() < text.len());

    let opts = ContextOptions {
        instruction: Some("Make load_users handle a missing file".into()),
        ..ContextOptions::default()
    };
    let instruction = engine.context_for_text(Language::Python, &text, at, &opts);
    assert_eq!(instruction.mode, Mode::Instruction);
    assert_eq!(instruction.stats.chunks_selected, 3);
}

#[test]
fn fim_in_rust_impl() {
    let fixture = RUST_ITEMS.replace(
        "self.items.get(key)",
        "self.items.get(key).or_else(|| Store::$0)",
    );
    check_fim(
        Language::Rust,
        &fixture,
        expect![[r#"
        mode: fim
        --- extra: src/app::Store ---
        /// A key-value store.
        #[derive(Debug, Default)]
        pub struct Store {
            items: HashMap<String, String>,
        }
        --- extra: src/app::Event ---
        pub enum Event { Put(String), Delete(String) }
        --- extra: src/app::Store::sync ---
            pub async fn sync(&mut self, backend: &dyn Backend) {
                let fresh = backend.load();
                for (key, value) in fresh.items {
                    self.items.insert(key, value);
                }
                tokio::task::yield_now().await;
            }
        --- prefix ---

            #[inline]
            pub fn get(&self, key: &str) -> Option<&String> {
                self.items.get(key).or_else(|| Store::
        --- suffix ---
        )
            }
        --- stats ---
        chunks: 11 found, 11 unique, 3 selected
        chars: 841 before, 562 after, 33.2% reduction
        time: 0 us
    "#]],
    );
}

#[test]
fn small_documents_are_sent_whole() {
    let config = EngineConfig::default();
    let out = render(
        Language::Python,
        "def f():\n    return $0\n",
        config,
        ContextOptions::default(),
    );
    expect![[r#"
        mode: fim
        --- prefix ---
        def f():
            return 
        --- suffix ---

        --- stats ---
        chunks: 0 found, 0 unique, 0 selected
        chars: 21 before, 21 after, 0.0% reduction
        time: 0 us
    "#]]
    .assert_eq(&out);
}

/// A file of a few kilobytes goes to the model whole, its first line included; past
/// `min_chars_to_chunk` the prefix is a window and the rest is chosen.
#[test]
fn files_of_a_few_kilobytes_are_sent_whole() {
    let engine = ContextEngine::new(EngineConfig::default()).unwrap();
    let threshold = engine.config().min_chars_to_chunk;
    let function = |i| format!("def helper_{i}(value):\n    return value * {i} + 1\n\n\n");
    let all: String = (0..200).map(function).collect();
    for (chars, whole) in [(threshold - 200, true), (threshold + 200, false)] {
        // Whole functions, about `chars` long.
        let end = all[..chars].rfind("\n\n\n").map_or(0, |at| at + 3);
        let text = all[..end].to_owned();
        let cursor = text.len() / 2;
        let doc = engine.parse(Language::Python, text.clone());
        let ctx = engine.context(&doc, cursor, &ContextOptions::default());
        assert_eq!(ctx.prefix == text[..cursor], whole, "{} chars", text.len());
        assert_eq!(ctx.suffix == text[cursor..], whole, "{} chars", text.len());
        if whole {
            assert!(ctx.extra.is_empty());
        }
    }
}

#[test]
fn instruction_mode_keeps_the_enclosing_chunk_and_ranks_by_instruction() {
    let opts = ContextOptions {
        instruction: Some("Make load_users handle a missing file".into()),
        path: Some("svc.py".into()),
        ..ContextOptions::default()
    };
    let config = EngineConfig {
        instruction_max_chunks: 2,
        ..small_config()
    };
    expect![[r#"
        mode: instruction
        instruction: Make load_users handle a missing file
        chunks: svc.py::load_users, svc.py::main
        --- prompt ---
        # INSTRUCTION: Make load_users handle a missing file

        Here is the code:
        ```python
        def load_users(path):
            with open(path) as f:
                return json.load(f)

        def main():
            users = load_users("users.json")
            user = fetch_user(users, 7)
            print(format_)
        ```

        Refactored code:
        ```python
        --- stats ---
        chunks: 7 found, 6 unique, 2 selected
        chars: 548 before, 291 after, 46.9% reduction
        time: 0 us
    "#]]
    .assert_eq(&render(Language::Python, PYTHON_SERVICE, config, opts));
}

#[test]
fn instruction_in_the_text_is_extracted() {
    let fixture = format!("# TODO: convert fetch_user to a dict lookup\n{PYTHON_SERVICE}");
    let config = EngineConfig {
        instruction_max_chunks: 2,
        ..small_config()
    };
    let out = render(
        Language::Python,
        &fixture,
        config,
        ContextOptions::default(),
    );
    expect![[r#"
        mode: instruction
        instruction: convert fetch_user to a dict lookup
        chunks: fetch_user, main
        --- prompt ---
        # INSTRUCTION: convert fetch_user to a dict lookup

        Here is the code:
        ```python
        def fetch_user(users, user_id):
            for user in users:
                if user["id"] == user_id:
                    return user
            return None

        def main():
            users = load_users("users.json")
            user = fetch_user(users, 7)
            print(format_)
        ```

        Refactored code:
        ```python
        --- stats ---
        chunks: 7 found, 6 unique, 2 selected
        chars: 555 before, 342 after, 38.4% reduction
        time: 0 us
    "#]]
    .assert_eq(&out);
}

#[test]
fn selection_is_always_kept() {
    let (text, _) = cursor(PYTHON_SERVICE);
    let start = text.find("def unrelated_math").unwrap();
    let opts = ContextOptions {
        instruction: Some("Add type hints".into()),
        selection: Some(start..start + 10),
        ..ContextOptions::default()
    };
    let config = EngineConfig {
        instruction_max_chunks: 1,
        ..small_config()
    };
    let engine = ContextEngine::new(config).unwrap();
    let ctx = engine.context_for_text(Language::Python, &text, 0, &opts);
    let labels: Vec<&str> = ctx.extra.iter().map(|c| c.label.as_str()).collect();
    // The chunk at the cursor (offset 0) and the selected one, over instruction_max_chunks.
    assert_eq!(labels, ["line 1", "unrelated_math"]);
}

#[test]
fn saving_under_the_minimum_sends_the_document_whole() {
    let config = EngineConfig {
        min_saving: 0.10,
        prefix_max_lines: 100,
        suffix_max_lines: 100,
        ..small_config()
    };
    let (text, cursor) = cursor(PYTHON_SERVICE);
    let engine = ContextEngine::new(config).unwrap();
    let ctx = engine.context_for_text(Language::Python, &text, cursor, &ContextOptions::default());
    assert_eq!(ctx.prefix.len() + ctx.suffix.len(), text.len());
    assert!(ctx.extra.is_empty());
    assert_eq!(ctx.stats.reduction_percent, 0.0);
}

/// Typing at the cursor must not change the extra chunks or the start of the
/// prefix: that leading text is what the inference server's KV cache holds.
#[test]
fn keystrokes_keep_the_leading_text_stable() {
    let (mut text, mut cursor) = cursor(PYTHON_SERVICE);
    let engine = ContextEngine::new(small_config()).unwrap();
    let mut doc = engine.parse(Language::Python, text.clone());
    let first = engine.context(&doc, cursor, &ContextOptions::default());
    assert!(!first.extra.is_empty());
    for typed in ["u", "s", "e", "r", "(", "u", "s", "e", "r", ")"] {
        doc.apply_edit(&engine, cursor..cursor, typed);
        text.insert_str(cursor, typed);
        cursor += typed.len();
        assert_eq!(doc.text(), text);
        let ctx = engine.context(&doc, cursor, &ContextOptions::default());
        assert_eq!(ctx.extra, first.extra, "after typing {typed:?}");
        assert!(ctx.prefix.starts_with(&first.prefix), "{:?}", ctx.prefix);
    }
}

#[test]
fn context_json_has_the_documented_shape() {
    let engine = ContextEngine::new(small_config()).unwrap();
    let (text, cursor) = cursor(PYTHON_SERVICE);
    let ctx = engine.context_for_text(Language::Python, &text, cursor, &ContextOptions::default());
    let mut json = serde_json::to_value(&ctx).unwrap();
    json["stats"]["elapsed_us"] = 0.into();
    let keys = |value: &serde_json::Value| {
        value
            .as_object()
            .unwrap()
            .keys()
            .cloned()
            .collect::<Vec<_>>()
            .join(",")
    };
    assert_eq!(json["mode"], "fim");
    expect!["extra,instruction,mode,prefix,prompt,stats,suffix"].assert_eq(&keys(&json));
    expect!["chars_after,chars_before,chunks_selected,chunks_total,chunks_unique,elapsed_us,reduction_percent"]
        .assert_eq(&keys(&json["stats"]));
    expect!["label,text"].assert_eq(&keys(&json["extra"][0]));
}

#[test]
fn engine_is_send_and_sync() {
    fn shared<T: Send + Sync>() {}
    shared::<ContextEngine>();
    shared::<crate::Document>();
}

/// The documents kept by path only make re-parsing cheaper: results are the
/// same as from a fresh parse.
#[test]
fn kept_documents_give_the_same_context_as_fresh_parses() {
    let engine = ContextEngine::new(small_config()).unwrap();
    let (text, cursor) = cursor(PYTHON_SERVICE);
    let kept = ContextOptions {
        path: Some("svc.py".into()),
        ..ContextOptions::default()
    };
    let edits = [
        text.clone(),
        text.replacen("print(format_", "print(format_user(", 1),
        text.replacen("import json", "import json, os", 1),
        format!("# TODO: add logging\n{text}"),
        text.clone(),
    ];
    for edited in &edits {
        let cursor = cursor.min(edited.len());
        let mut a = engine.context_for_text(Language::Python, edited, cursor, &kept);
        let fresh = ContextEngine::new(small_config()).unwrap();
        let mut b = fresh.context_for_text(Language::Python, edited, cursor, &kept);
        a.stats.elapsed_us = 0;
        b.stats.elapsed_us = 0;
        assert_eq!(a, b);
    }
}

/// The quality levers (off by default): the enclosing definition whole, its frame
/// (class lines and constructor) first, and chunks folded into the prefix.
#[test]
fn fim_levers_reach_the_enclosing_definition_and_its_frame() {
    let fixture = PYTHON_CLIENT.replace(
        "return len(self.buffer)\n\n    @property",
        "return len($0self.buffer)\n\n    @property",
    );
    let (text, cursor) = cursor(&fixture);
    let plain = ContextEngine::new(small_config()).unwrap();
    let ctx = plain.context_for_text(Language::Python, &text, cursor, &ContextOptions::default());
    assert!(!ctx.prefix.contains("async def send"), "{}", ctx.prefix);

    let config = EngineConfig {
        enclosing_max_chars: 1_000,
        frame_boost: 50.0,
        ..small_config()
    };
    let engine = ContextEngine::new(config.clone()).unwrap();
    let ctx = engine.context_for_text(Language::Python, &text, cursor, &ContextOptions::default());
    assert!(
        ctx.prefix.starts_with("    async def send(self, data):"),
        "{}",
        ctx.prefix
    );
    let labels: Vec<&str> = ctx.extra.iter().map(|c| c.label.as_str()).collect();
    assert!(labels.contains(&"Client::__init__"), "{labels:?}");

    let folded = ContextEngine::new(EngineConfig {
        chunks_in_prefix: true,
        ..config
    })
    .unwrap();
    let folded =
        folded.context_for_text(Language::Python, &text, cursor, &ContextOptions::default());
    assert!(folded.extra.is_empty());
    assert_eq!(folded.stats.chunks_selected, ctx.extra.len());
    for chunk in &ctx.extra {
        assert!(folded.prefix.contains(&chunk.text), "{}", chunk.label);
    }
    assert!(folded.prefix.ends_with(&ctx.prefix));
}

#[test]
fn a_model_with_its_own_windows_gets_them() {
    let mut config = small_config();
    config.models.insert(
        "narrow".into(),
        crate::ModelWindows {
            prefix_max_lines: Some(1),
            ..crate::ModelWindows::default()
        },
    );
    let engine = ContextEngine::new(config).unwrap();
    let (text, at) = cursor("a = 1\nb = 2\nc = 3\nd = $0\n");
    let doc = engine.parse(Language::Python, text);
    let prefix = |model: Option<&str>| {
        let options = ContextOptions {
            model: model.map(str::to_owned),
            ..ContextOptions::default()
        };
        engine.context(&doc, at, &options).prefix
    };
    assert_eq!(prefix(None), "a = 1\nb = 2\nc = 3\nd = ");
    assert_eq!(prefix(Some("other")), prefix(None));
    assert_eq!(prefix(Some("narrow")), "c = 3\nd = ");
}

#[test]
fn the_enclosing_definition_is_reached_back_to_from_its_start_even_when_split() {
    // Longer than `max_chunk_chars`, so its chunk is split into parts and the part
    // holding the cursor starts inside the function.
    let body: String = (0..30)
        .map(|i| format!("    total += values[{i}] * {i}\n"))
        .collect::<String>()
        .replace("values[20] * 20", "values[20] * $020");
    let fixture = format!(
        "import math\n\n\ndef weighted(values):\n    total = 0\n{body}    return total\n\n\nprint(weighted([1]))\n"
    );
    let prefix = |enclosing_max_chars| {
        let config = EngineConfig {
            max_chunks: 0,
            enclosing_max_chars,
            ..small_config()
        };
        let (text, at) = cursor(&fixture);
        let engine = ContextEngine::new(config).unwrap();
        let context =
            engine.context_for_text(Language::Python, &text, at, &ContextOptions::default());
        context.prefix
    };
    let window = prefix(0);
    assert!(window.starts_with("    total += values[1"), "{window}");
    let whole = prefix(2_000);
    assert!(whole.starts_with("def weighted(values):\n"), "{whole}");
    // Further back than allowed: the window stays.
    assert_eq!(prefix(100), window);
}

#[test]
fn fim_sends_code_like_the_cursors_from_outside_the_windows() {
    let fixture = "\
def test_parse_header():
    raw = b\"Host: example.com\"
    header = parse_header(raw)
    assert header.name == \"Host\"

def test_unrelated():
    pass

def test_parse_header_twice():
    raw = b\"Host: example.com\"
    header = parse_header(raw)
    assert header$0
";
    let config = EngineConfig {
        similar_snippets: 1,
        similar_lines: 2,
        max_chunks: 0,
        ..small_config()
    };
    let opts = ContextOptions {
        path: Some("tests/test_parse.py".into()),
        ..ContextOptions::default()
    };
    expect![[r#"
        mode: fim
        --- extra: tests/test_parse.py::lines 2-5 ---
            raw = b"Host: example.com"
            header = parse_header(raw)
            assert header.name == "Host"

        --- prefix ---
        def test_parse_header_twice():
            raw = b"Host: example.com"
            header = parse_header(raw)
            assert header
        --- suffix ---

        --- stats ---
        chunks: 3 found, 3 unique, 0 selected
        chars: 264 before, 238 after, 9.8% reduction
        time: 0 us
    "#]]
    .assert_eq(&render(Language::Python, fixture, config, opts));
}

/// The snippets sit at the head of the prompt: a new line typed keeps them, though
/// the lines above the cursor would now pick others; a cursor far away picks again.
#[test]
fn new_lines_keep_the_similar_snippets_until_the_cursor_moves_away() {
    let filler: String = (0..60).map(|i| format!("x{i} = {i}\n")).collect();
    let fixture = format!(
        "\
def test_parse_header():
    raw = b\"Host: example.com\"
    header = parse_header(raw)
    assert header.name == \"Host\"

def test_read_body():
    body = read_body(stream)
    size = len(body)
    assert size > 0

{filler}
def test_parse_header_twice():
    raw = b\"Host: example.com\"
    header = parse_header(raw)
    $0
"
    );
    let mut config = EngineConfig {
        similar_snippets: 1,
        similar_lines: 2,
        max_chunks: 0,
        prefix_max_lines: 8,
        window_step_lines: 1,
        ..small_config()
    };
    config.models.insert(
        "no-snippets".into(),
        crate::ModelWindows {
            similar_snippets: Some(0),
            ..crate::ModelWindows::default()
        },
    );
    let engine = ContextEngine::new(config.clone()).unwrap();
    let (text, mut at) = cursor(&fixture);
    let mut doc = engine.parse(Language::Python, text);
    let opts = ContextOptions::default();
    let first = engine.context(&doc, at, &opts).extra;
    assert_eq!(first.len(), 1);
    assert!(first[0].text.contains("parse_header(raw)"), "{first:?}");

    let typed = "body = read_body(stream)\n    size = len(body)\n    ";
    doc.apply_edit(&engine, at..at, typed);
    at += typed.len();
    let fresh = engine.context_for_text(Language::Python, doc.text(), at, &opts);
    assert!(
        fresh.extra[0].text.contains("read_body"),
        "{:?}",
        fresh.extra
    );
    assert_eq!(engine.context(&doc, at, &opts).extra, first);

    // A model allowed none gets none, whatever the document kept.
    let none = ContextOptions {
        model: Some("no-snippets".into()),
        ..ContextOptions::default()
    };
    assert_eq!(engine.context(&doc, at, &none).extra, []);

    // Forty lines up, in the filler: chosen afresh.
    let far = doc.text().find("x30 = 30").unwrap();
    let fresh = engine.context_for_text(Language::Python, doc.text(), far, &opts);
    assert_ne!(fresh.extra, first);
    assert_eq!(engine.context(&doc, far, &opts).extra, fresh.extra);

    // Kept for no lines (`similar_keep_lines = 0`): a new line chooses them again.
    let eager = ContextEngine::new(EngineConfig {
        similar_keep_lines: Some(0),
        ..config
    })
    .unwrap();
    let (text, at) = cursor(&fixture);
    let mut doc = eager.parse(Language::Python, text);
    assert_eq!(eager.context(&doc, at, &opts).extra, first);
    doc.apply_edit(&eager, at..at, typed);
    let below = eager.context(&doc, at + typed.len(), &opts).extra;
    assert!(below[0].text.contains("read_body"), "{below:?}");
}
