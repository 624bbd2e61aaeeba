//! "Refactor to async" end to end: the real binaries, vps-infer on the real
//! Qwen2.5-Coder 0.5B model (and SmolLM2, which is too small to follow the
//! instruction), and an LSP client on a real TCP socket.

use std::time::{Duration, Instant};

use cerebrum_context::{validate_async_rewrite, Language};
use cerebrum_tests::lsp_client::{LspClient, LspEdge};
use cerebrum_tests::{model_path, VpsInfer};
use serde_json::{json, Value};

/// Generous timeouts: the CPU is shared with compilers (these guard against hangs;
/// nothing is timed).
const CONFIG: &str = r#"
[backend]
first_token_timeout_ms = 240000
total_timeout_ms = 480000
"#;

const QWEN: &str = "qwen2.5-coder-0.5b";
const SMOL: &str = "smollm2-135m";

const PY_URI: &str = "file:///work/project/status.py";
const PY_TEXT: &str = "import time\n\nimport requests\n\n\ndef fetch_status(url):\n    time.sleep(1)\n    response = requests.get(url)\n    return response.status_code\n\n\nasync def already_async(url):\n    return url\n";

const RS_URI: &str = "file:///work/project/src/read.rs";
const RS_TEXT: &str = "use std::path::Path;\nuse std::time::Duration;\n\nfn wait_and_read(path: &Path) -> std::io::Result<String> {\n    std::thread::sleep(Duration::from_millis(100));\n    let text = std::fs::read_to_string(path)?;\n    Ok(text.trim().to_owned())\n}\n";

fn start() -> (VpsInfer, LspEdge) {
    let infer = VpsInfer::start(&[(QWEN, &model_path(QWEN)), (SMOL, &model_path(SMOL))]);
    let edge = LspEdge::start(&infer.url(), infer.api_key(), CONFIG, &[]);
    (infer, edge)
}

fn initialize(client: &mut LspClient, options: Value) -> Value {
    client.initialize(
        options,
        json!({"window": {"workDoneProgress": true}, "general": {"positionEncodings": ["utf-16"]}}),
    )
}

fn position(text: &str, needle: &str) -> Value {
    let at = text
        .find(needle)
        .unwrap_or_else(|| panic!("{needle:?} not in the fixture"));
    let line = text[..at].matches('\n').count();
    let character = at - text[..at].rfind('\n').map_or(0, |i| i + 1);
    json!({"line": line, "character": character})
}

fn code_actions(client: &mut LspClient, uri: &str, text: &str, at: &str) -> Vec<Value> {
    let cursor = position(text, at);
    let response = client.request(
        "textDocument/codeAction",
        json!({
            "textDocument": {"uri": uri},
            "range": {"start": cursor, "end": cursor},
            "context": {"diagnostics": []},
        }),
    );
    response.result().as_array().cloned().unwrap_or_default()
}

/// Byte offset of an LSP position in ASCII text.
fn offset(text: &str, position: &Value) -> usize {
    let line = position["line"].as_u64().unwrap() as usize;
    let character = position["character"].as_u64().unwrap() as usize;
    let start: usize = text.split_inclusive('\n').take(line).map(str::len).sum();
    start + character
}

/// Applies a resolved action's single versioned edit; returns the new text and the
/// replaced byte range.
fn apply(text: &str, action: &Value, version: i32) -> (String, std::ops::Range<usize>) {
    let changes = action["edit"]["documentChanges"]
        .as_array()
        .expect("documentChanges");
    assert_eq!(changes.len(), 1, "{action}");
    assert_eq!(
        changes[0]["textDocument"]["version"], version,
        "a versioned edit: {action}"
    );
    let edits = changes[0]["edits"].as_array().unwrap();
    assert_eq!(edits.len(), 1, "{action}");
    let range = offset(text, &edits[0]["range"]["start"])..offset(text, &edits[0]["range"]["end"]);
    let mut edited = text.to_owned();
    edited.replace_range(range.clone(), edits[0]["newText"].as_str().unwrap());
    (edited, range)
}

/// Offers, resolves and applies "Refactor to async" for the function holding `at`,
/// and checks the result: the edit replaces exactly `function`, the rest of the file is
/// byte for byte the same, and the new function parses and is async.
fn refactor_function(
    client: &mut LspClient,
    uri: &str,
    language: Language,
    text: &str,
    at: &str,
    function: &str,
    name: &str,
) {
    let actions = code_actions(client, uri, text, at);
    assert_eq!(actions.len(), 1, "{actions:?}");
    let action = &actions[0];
    assert_eq!(action["title"], "Refactor to async");
    assert_eq!(action["kind"], "refactor.rewrite");
    assert!(
        action.get("edit").is_none(),
        "the list answers before any model work: {action}"
    );

    let resolved = client.request("codeAction/resolve", action.clone());
    let resolved = resolved.result();
    let (edited, range) = apply(text, resolved, 1);
    assert_eq!(
        &text[range.clone()],
        function,
        "the edit replaces exactly the function"
    );
    let new_function = &edited[range.start..edited.len() - (text.len() - range.end)];
    assert_eq!(
        &edited[..range.start],
        &text[..range.start],
        "text before the function is unchanged"
    );
    assert_eq!(
        &edited[range.start + new_function.len()..],
        &text[range.end..],
        "text after it is unchanged"
    );
    validate_async_rewrite(language, new_function, name)
        .unwrap_or_else(|err| panic!("{err}:\n{new_function}"));
    eprintln!("--- {name} became:\n{new_function}");
}

#[test]
fn refactor_to_async_over_tcp_on_qwen() {
    let (_infer, edge) = start();
    let mut client = edge.client();
    let capabilities = initialize(&mut client, json!({}))["capabilities"].clone();
    assert_eq!(
        capabilities["codeActionProvider"]["resolveProvider"], true,
        "{capabilities}"
    );
    assert_eq!(
        capabilities["executeCommandProvider"]["commands"],
        json!(["cerebrum.instruct"])
    );

    client.did_open(PY_URI, "python", 1, PY_TEXT);
    client.did_open(RS_URI, "rust", 1, RS_TEXT);

    // No action where it makes no sense.
    assert!(code_actions(&mut client, PY_URI, PY_TEXT, "import requests").is_empty());
    assert!(code_actions(&mut client, PY_URI, PY_TEXT, "return url").is_empty());

    let py_function = "def fetch_status(url):\n    time.sleep(1)\n    response = requests.get(url)\n    return response.status_code";
    refactor_function(
        &mut client,
        PY_URI,
        Language::Python,
        PY_TEXT,
        "requests.get",
        py_function,
        "fetch_status",
    );
    let rs_function = &RS_TEXT[RS_TEXT.find("fn wait_and_read").unwrap()..RS_TEXT.len() - 1];
    refactor_function(
        &mut client,
        RS_URI,
        Language::Rust,
        RS_TEXT,
        "std::thread::sleep",
        rs_function,
        "wait_and_read",
    );

    // Any instruction, through `cerebrum.instruct`: the server asks the editor to
    // apply a versioned edit of exactly the function.
    let start = position(PY_TEXT, "def fetch_status");
    let id = client.send_request(
        "workspace/executeCommand",
        json!({
            "command": "cerebrum.instruct",
            "arguments": [{"instruction": "add type hints", "uri": PY_URI, "range": {"start": start, "end": start}}],
        }),
    );
    let (_, request) = client.wait_for("workspace/applyEdit", |m| {
        m["method"] == "workspace/applyEdit"
    });
    let (edited, range) = apply(PY_TEXT, &request["params"], 1);
    assert_eq!(&PY_TEXT[range.clone()], py_function, "{request}");
    assert!(edited.contains("def fetch_status("), "{edited}");
    // The test client answers the server's requests with `null`, which is no
    // `ApplyWorkspaceEditResult`: lsp-edge reports the edit as refused.
    let response = client.response(id);
    assert!(
        response.error_message().contains("refused the edit"),
        "{:?}",
        response.outcome
    );

    // The work showed as progress with a token count.
    let reports: Vec<Value> = client
        .notifications("$/progress")
        .into_iter()
        .filter(|params| params["value"]["kind"] == "report")
        .collect();
    assert!(
        reports.iter().any(|params| params["value"]["message"]
            .as_str()
            .is_some_and(|m| m.ends_with(" tokens"))),
        "{reports:?}"
    );
    client.shutdown();
}

#[test]
fn a_model_too_small_to_follow_fails_clearly_without_an_edit() {
    let (_infer, edge) = start();
    let mut client = edge.client();
    initialize(&mut client, json!({"models": {"refactor": SMOL}}));
    client.did_open(PY_URI, "python", 1, PY_TEXT);
    let actions = code_actions(&mut client, PY_URI, PY_TEXT, "time.sleep");
    assert_eq!(actions.len(), 1, "{actions:?}");

    let response = client.request("codeAction/resolve", actions[0].clone());
    assert_eq!(response.error_code(), -32803, "{:?}", response.outcome);
    let message = response.error_message();
    assert!(
        message.contains("could not follow the instruction"),
        "{message}"
    );
    assert!(message.contains("nothing was changed"), "{message}");
    assert!(
        client.notifications("workspace/applyEdit").is_empty()
            && !client
                .messages()
                .iter()
                .any(|m| m["method"] == "workspace/applyEdit"),
        "no edit is ever sent"
    );
    client.shutdown();
}

#[test]
fn cancelling_the_resolve_stops_the_generation_on_vps_infer() {
    let (infer, edge) = start();
    let mut client = edge.client();
    initialize(&mut client, json!({}));
    client.did_open(PY_URI, "python", 1, PY_TEXT);
    let actions = code_actions(&mut client, PY_URI, PY_TEXT, "time.sleep");
    assert_eq!(actions.len(), 1, "{actions:?}");

    let id = client.send_request("codeAction/resolve", actions[0].clone());
    // Cancel once tokens are flowing, so the decode is under way on vps-infer.
    client.wait_for("a progress report with tokens", |m| {
        m["method"] == "$/progress"
            && m["params"]["value"]["kind"] == "report"
            && m["params"]["value"]["message"]
                .as_str()
                .is_some_and(|s| s != "0 tokens")
    });
    client.notify("$/cancelRequest", json!({"id": id}));
    let response = client.response(id);
    assert_eq!(response.error_code(), -32800, "{:?}", response.outcome);

    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let stats = infer.stats();
        if stats["requests"]["cancelled"].as_u64() >= Some(1) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "vps-infer counted no cancel: {stats}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    client.shutdown();
}

const TS_URI: &str = "file:///work/project/src/config.ts";
const TS_TEXT: &str = "import * as fs from \"fs\";\n\nexport function readConfig(path: string): string {\n  const text = fs.readFileSync(path, \"utf8\");\n  return text.trim();\n}\n";

/// A language added as data: TypeScript's instruction (from the language table) is
/// enough for the 0.5B model, and the rewrite is checked by TypeScript's queries.
#[test]
fn refactor_to_async_in_typescript_on_qwen() {
    let (_infer, edge) = start();
    let mut client = edge.client();
    initialize(&mut client, json!({}));
    client.did_open(TS_URI, "typescript", 1, TS_TEXT);
    // `export` stays outside the replaced range.
    let ts_function = &TS_TEXT[TS_TEXT.find("function readConfig").unwrap()..TS_TEXT.len() - 1];
    refactor_function(
        &mut client,
        TS_URI,
        Language::TypeScript,
        TS_TEXT,
        "fs.readFileSync",
        ts_function,
        "readConfig",
    );
    client.shutdown();
}
