//! The languages added as data, end to end: the real binaries, vps-infer on the real
//! SmolLM2 model, and an LSP client on a real TCP socket. Inline completions in
//! TypeScript and Go, and "Refactor to async" offered where the language table has an
//! instruction (TypeScript, JavaScript) and nowhere else (Go, C, Java).
//!
//! SmolLM2 has no fill-in-the-middle tokens: lsp-edge falls back to plain completions,
//! as in `lsp_e2e.rs`.

use cerebrum_tests::lsp_client::{
    inline_params, inline_text, LspClient, LspEdge, PATIENT_CONFIG as CONFIG,
};
use cerebrum_tests::VpsInfer;
use serde_json::{json, Value};

const TS_URI: &str = "file:///work/project/src/cart.ts";
const TS_TEXT: &str = "export interface Item {\n  name: string;\n  price: number;\n}\n\nexport function total(items: Item[]): number {\n  return items.reduce((sum, item) => sum + item.price, 0);\n}\n\nexport function cheapest(items: Item[]): Item | undefined {\n  \n}\n";

const GO_URI: &str = "file:///work/project/cart.go";
const GO_TEXT: &str = "package cart\n\ntype Item struct {\n\tName  string\n\tPrice int\n}\n\nfunc Total(items []Item) int {\n\tsum := 0\n\tfor _, item := range items {\n\t\tsum += item.Price\n\t}\n\treturn sum\n}\n\nfunc Cheapest(items []Item) Item {\n\t\n}\n";

const JAVA_URI: &str = "file:///work/project/Cart.java";
const JAVA_TEXT: &str = "class Cart {\n    int total(int[] prices) {\n        int sum = 0;\n        for (int p : prices) sum += p;\n        return sum;\n    }\n}\n";

const JS_URI: &str = "file:///work/project/cart.js";
const JS_TEXT: &str = "const fs = require(\"fs\");\n\nfunction load(path) {\n  return JSON.parse(fs.readFileSync(path, \"utf8\"));\n}\n";

fn start() -> (VpsInfer, LspEdge) {
    let infer = VpsInfer::start_smol_one_thread();
    let edge = LspEdge::start(&infer.url(), infer.api_key(), CONFIG, &[]);
    (infer, edge)
}

/// The LSP position of the first `needle` in ASCII `text`, plus `shift` characters.
fn position(text: &str, needle: &str, shift: usize) -> (u32, u32) {
    let at = text
        .find(needle)
        .unwrap_or_else(|| panic!("{needle:?} not in the fixture"))
        + shift;
    let line = text[..at].matches('\n').count();
    let character = at - text[..at].rfind('\n').map_or(0, |i| i + 1);
    (line as u32, character as u32)
}

/// Asks for an inline completion at `(line, character)` and checks that one comes
/// back, inserted at the cursor.
fn inline_completion(client: &mut LspClient, uri: &str, (line, character): (u32, u32)) {
    let response = client.request(
        "textDocument/inlineCompletion",
        inline_params(uri, line, character, None),
    );
    let result = response.result();
    let text = inline_text(result).unwrap_or_else(|| panic!("an inline completion item: {result}"));
    assert!(!text.trim().is_empty(), "{result}");
    let at = json!({"line": line, "character": character});
    assert_eq!(
        result["items"][0]["range"],
        json!({"start": at, "end": at}),
        "{result}"
    );
    eprintln!("--- {uri} completion:\n{text}");
}

fn code_action_titles(
    client: &mut LspClient,
    uri: &str,
    (line, character): (u32, u32),
) -> Vec<String> {
    let at = json!({"line": line, "character": character});
    let response = client.request(
        "textDocument/codeAction",
        json!({
            "textDocument": {"uri": uri},
            "range": {"start": at, "end": at},
            "context": {"diagnostics": []},
        }),
    );
    let actions: Vec<Value> = response.result().as_array().cloned().unwrap_or_default();
    actions
        .iter()
        .filter_map(|action| action["title"].as_str().map(str::to_owned))
        .collect()
}

#[test]
fn inline_completions_in_typescript_and_go_over_tcp() {
    let (_infer, edge) = start();
    let mut client = edge.client();
    client.initialize(
        json!({"completion": {"temperature": 0.0, "budget_ms": 240000}}),
        json!({"general": {"positionEncodings": ["utf-16"]}}),
    );

    client.did_open(TS_URI, "typescript", 1, TS_TEXT);
    inline_completion(&mut client, TS_URI, position(TS_TEXT, "  \n}\n", 2));

    client.did_open(GO_URI, "go", 1, GO_TEXT);
    inline_completion(&mut client, GO_URI, position(GO_TEXT, "\t\n}\n", 1));
    client.shutdown();
}

/// The action list answers without the model, so this needs no generation: it shows
/// the language table reaching the code action.
#[test]
fn refactor_to_async_is_offered_only_where_the_language_has_async() {
    let (_infer, edge) = start();
    let mut client = edge.client();
    client.initialize(
        json!({}),
        json!({"general": {"positionEncodings": ["utf-16"]}}),
    );
    client.did_open(TS_URI, "typescript", 1, TS_TEXT);
    client.did_open(JS_URI, "javascript", 1, JS_TEXT);
    client.did_open(GO_URI, "go", 1, GO_TEXT);
    client.did_open(JAVA_URI, "java", 1, JAVA_TEXT);

    let refactor = vec!["Refactor to async".to_owned()];
    let ts = code_action_titles(&mut client, TS_URI, position(TS_TEXT, "items.reduce", 0));
    assert_eq!(ts, refactor);
    let js = code_action_titles(&mut client, JS_URI, position(JS_TEXT, "JSON.parse", 0));
    assert_eq!(js, refactor);
    // Outside any function: nothing.
    let ts_top = code_action_titles(&mut client, TS_URI, position(TS_TEXT, "price: number", 0));
    assert!(ts_top.is_empty(), "{ts_top:?}");
    // Go and Java have no async functions: no action, rather than another language's
    // instruction.
    let go = code_action_titles(&mut client, GO_URI, position(GO_TEXT, "sum += item", 0));
    assert!(go.is_empty(), "{go:?}");
    let java = code_action_titles(&mut client, JAVA_URI, position(JAVA_TEXT, "sum += p", 0));
    assert!(java.is_empty(), "{java:?}");
    client.shutdown();
}
