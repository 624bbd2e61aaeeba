//! lsp-edge end to end: the real binaries, vps-infer on the real SmolLM2 model, and an
//! LSP client on a real TCP socket (or through `lsp-edge connect` over stdio), driving
//! lsp-edge as an editor would.
//!
//! SmolLM2 has no fill-in-the-middle tokens: lsp-edge's first FIM request gets vps-infer's
//! 400 and it falls back to plain completions, which these tests go through.

use std::net::SocketAddr;
use std::process::Command;
use std::time::Duration;

use cerebrum_tests::lsp_client::{
    inline_params, inline_text, LspClient, LspEdge, PATIENT_CONFIG as CONFIG, WAIT,
};
use cerebrum_tests::{binary, free_port, model_path, Service, VpsInfer, TEST_API_KEY};
use serde_json::{json, Value};

/// Deterministic answers, and a `textDocument/completion` budget that never cuts
/// an answer short on a busy machine.
fn greedy() -> Value {
    json!({"completion": {"temperature": 0.0, "budget_ms": 240000}})
}

const PY_URI: &str = "file:///work/project/shapes.py";
const PY_TEXT: &str = "import math\n\n\ndef area_of_circle(radius):\n    return math.pi * radius ** 2\n\n\ndef circumference_of_circle(radius):\n";

const RS_URI: &str = "file:///work/project/src/main.rs";
const RS_TEXT: &str = "fn main() {\n}\n";

/// Text the model continues for a long while (so that requests stay in flight).
const COUNTING: &str = "Counting from one to two hundred: 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12,";

fn counting_options() -> Value {
    json!({"completion": {"temperature": 0.0, "max_tokens": 60, "max_lines": 100}})
}

/// vps-infer on SmolLM2 with one llama.cpp thread: these tests run side by side on a
/// small shared machine, where several servers spinning on every core each would
/// slow all of them to a crawl.
fn start() -> (VpsInfer, LspEdge) {
    let infer = VpsInfer::start_smol_one_thread();
    let edge = LspEdge::start(&infer.url(), infer.api_key(), CONFIG, &[]);
    (infer, edge)
}

/// The text of a `CompletionList`'s first item's edit, and the edit's range start.
fn completion_edit(result: &Value) -> Option<(String, Value)> {
    let item = result["items"].get(0)?;
    let edit = &item["textEdit"];
    Some((
        edit["newText"].as_str()?.to_owned(),
        edit["range"]["start"].clone(),
    ))
}

#[test]
fn documents_edits_and_inline_completions_over_tcp() {
    let (_infer, edge) = start();
    let mut client = edge.client();
    let init = client.initialize(
        greedy(),
        json!({"general": {"positionEncodings": ["utf-16"]}}),
    );
    let caps = &init["capabilities"];
    assert_eq!(caps["positionEncoding"], "utf-16", "{init}");
    assert_eq!(
        caps["textDocumentSync"]["change"], 2,
        "incremental sync: {init}"
    );
    assert_eq!(caps["inlineCompletionProvider"], true, "{init}");
    assert!(caps["completionProvider"].is_object(), "{init}");
    assert_eq!(init["serverInfo"]["name"], "lsp-edge");

    // Python: open, then type the body of the second function in small edits.
    client.did_open(PY_URI, "python", 1, PY_TEXT);
    client.did_change(PY_URI, 2, (8, 0), (8, 0), "    ");
    client.did_change(PY_URI, 3, (8, 4), (8, 4), "re");
    client.did_change(PY_URI, 4, (8, 6), (8, 6), "tx");
    client.did_change(PY_URI, 5, (8, 7), (8, 8), ""); // a typo, deleted
    client.did_change(PY_URI, 6, (8, 7), (8, 7), "urn");
    // A stale version (a reordering) must be ignored, not applied.
    client.did_change(PY_URI, 3, (0, 0), (0, 0), "GARBAGE");

    // The server's view of the text shows in the completion item: its edit replaces
    // the word before the cursor, which the server read from its own copy.
    let response = client.request(
        "textDocument/completion",
        json!({"textDocument": {"uri": PY_URI}, "position": {"line": 8, "character": 10}}),
    );
    let list = response.result();
    assert_eq!(list["isIncomplete"], true, "{list}");
    let (new_text, start) =
        completion_edit(list).unwrap_or_else(|| panic!("a completion item: {list}"));
    assert!(new_text.starts_with("return"), "{new_text:?}");
    assert_eq!(start, json!({"line": 8, "character": 4}));

    // Inline completion without a partialResultToken: one answer, no progress.
    let response = client.request(
        "textDocument/inlineCompletion",
        inline_params(PY_URI, 8, 10, None),
    );
    let result = response.result();
    let text = inline_text(result).unwrap_or_else(|| panic!("an inline completion item: {result}"));
    assert!(!text.trim().is_empty(), "{result}");
    let item = &result["items"][0];
    assert_eq!(
        item["range"],
        json!({"start": {"line": 8, "character": 10}, "end": {"line": 8, "character": 10}}),
    );
    // Never more than the enclosing block: nothing at the top level after the body.
    for line in text.lines().skip(1) {
        assert!(
            line.trim().is_empty() || line.starts_with("    "),
            "the completion left the function body: {text:?}"
        );
    }

    // With a partialResultToken: partial results stream before the final answer.
    let id = client.send_request(
        "textDocument/inlineCompletion",
        inline_params(PY_URI, 8, 10, Some("py-stream")),
    );
    let response = client.response(id);
    let final_text = inline_text(response.result()).unwrap_or_default();
    let partials = client.progress("py-stream");
    assert!(
        !partials.is_empty(),
        "no partial results: {:?}",
        client.messages()
    );
    for (index, value) in &partials {
        assert!(
            *index < response.index,
            "a partial result after the final answer"
        );
        let partial = inline_text(value).unwrap_or_default();
        assert!(!partial.is_empty(), "{value}");
    }
    // At temperature 0 the streamed request and the plain one give the same answer.
    assert_eq!(final_text, text);

    // Rust: a line with multi-byte characters before the cursor, typed incrementally;
    // positions are UTF-16 code units ("é" one, "😀" two).
    client.did_open(RS_URI, "rust", 1, RS_TEXT);
    client.did_change(RS_URI, 2, (0, 11), (0, 11), "\n    let s = \"é😀\"; pri");
    let line = "    let s = \"é😀\"; pri";
    let cursor = line.encode_utf16().count() as u32;
    assert_eq!(cursor, 22);
    let id = client.send_request(
        "textDocument/completion",
        json!({
            "textDocument": {"uri": RS_URI},
            "position": {"line": 1, "character": cursor},
            "partialResultToken": "rs-menu",
        }),
    );
    let response = client.response(id);
    let list = response.result();
    assert_eq!(list["isIncomplete"], true, "{list}");
    let (new_text, start) =
        completion_edit(list).unwrap_or_else(|| panic!("a completion item: {list}"));
    assert!(new_text.starts_with("pri"), "{new_text:?}");
    assert_eq!(start, json!({"line": 1, "character": 19}));
    for (index, value) in client.progress("rs-menu") {
        assert!(index < response.index);
        assert_eq!(value["isIncomplete"], true, "{value}");
    }
    let response = client.request(
        "textDocument/inlineCompletion",
        inline_params(RS_URI, 1, cursor, None),
    );
    let item = &response.result()["items"][0];
    assert_eq!(
        item["range"]["start"],
        json!({"line": 1, "character": 22}),
        "{item}"
    );

    // Positions past the end clamp instead of failing.
    let response = client.request(
        "textDocument/inlineCompletion",
        inline_params(RS_URI, 99, 99, None),
    );
    if let Some(item) = response.result()["items"].get(0) {
        assert_eq!(item["range"]["start"], json!({"line": 3, "character": 0}));
    }

    // A closed document is gone: asking about it is an error, not a crash.
    client.notify(
        "textDocument/didClose",
        json!({"textDocument": {"uri": RS_URI}}),
    );
    let response = client.request(
        "textDocument/inlineCompletion",
        inline_params(RS_URI, 0, 0, None),
    );
    assert_eq!(response.error_code(), -32602, "{:?}", response.outcome);
    assert!(response.error_message().contains("not open"));

    client.shutdown();
    assert!(
        client.wait_closed(WAIT),
        "the server closes the session after exit"
    );
}

#[test]
fn cancel_supersede_and_load_shedding() {
    let (infer, edge) = start();
    let mut client = edge.client();
    client.initialize(counting_options(), json!({}));
    for name in ["a", "b", "c", "d"] {
        client.did_open(
            &format!("file:///notes/{name}.txt"),
            "plaintext",
            1,
            COUNTING,
        );
    }
    let at_end = |name: &str, token: Option<&str>| {
        inline_params(
            &format!("file:///notes/{name}.txt"),
            0,
            COUNTING.len() as u32,
            token,
        )
    };

    // $/cancelRequest: the request answers RequestCancelled and vps-infer stops decoding.
    let id = client.send_request(
        "textDocument/inlineCompletion",
        at_end("a", Some("cancel-me")),
    );
    client.wait_for("a partial result", |m| m["params"]["token"] == "cancel-me");
    client.notify("$/cancelRequest", json!({"id": id}));
    let response = client.response(id);
    assert_eq!(response.error_code(), -32800, "{:?}", response.outcome);

    // A newer request for the same document supersedes the older one.
    let older = client.send_request("textDocument/inlineCompletion", at_end("b", Some("older")));
    client.wait_for("a partial result", |m| m["params"]["token"] == "older");
    let newer = client.send_request("textDocument/inlineCompletion", at_end("b", None));
    let response = client.response(older);
    assert_eq!(response.error_code(), -32800, "{:?}", response.outcome);
    assert!(
        response.error_message().contains("superseded"),
        "{:?}",
        response.outcome
    );
    let response = client.response(newer);
    let text = inline_text(response.result()).unwrap_or_default();
    assert!(text.contains("13"), "the count goes on: {text:?}");

    // Three generations at once with a limit of two: the third is shed at once.
    let ids = client.send_requests_at_once(&[
        ("textDocument/inlineCompletion", at_end("b", None)),
        ("textDocument/inlineCompletion", at_end("c", None)),
        ("textDocument/inlineCompletion", at_end("d", None)),
    ]);
    let shed = client.response(ids[2]);
    assert_eq!(shed.error_code(), -32802, "{:?}", shed.outcome);
    assert!(
        shed.error_message().contains("2 generations"),
        "{:?}",
        shed.outcome
    );
    for id in &ids[..2] {
        let response = client.response(*id);
        assert!(
            response.index > shed.index,
            "the shed request was answered first"
        );
        response.result();
    }

    // The cancelled and the superseded streams were dropped, which vps-infer counts.
    let stats = infer.stats();
    assert!(
        stats["requests"]["cancelled"].as_u64() >= Some(2),
        "vps-infer saw the dropped streams as cancelled: {stats}"
    );
}

/// vps-infer on a fixed port, so that it can come back where lsp-edge expects it.
fn vps_infer_on(addr: SocketAddr) -> Service {
    let mut cmd = Command::new(binary("vps-infer"));
    cmd.arg("--listen")
        .arg(addr.to_string())
        .arg("--model")
        .arg(format!(
            "smollm2-135m={}",
            model_path("smollm2-135m").display()
        ))
        .args(["--threads", "1"])
        .env("CEREBRUM_API_KEY", TEST_API_KEY)
        .env("CEREBRUM_GUARD_MAX_CPU_PERCENT", "100")
        .env("CEREBRUM_GUARD_MIN_FREE_MEMORY_MB", "0");
    Service::spawn("vps-infer", cmd, addr)
}

#[test]
fn breaker_opens_when_vps_infer_stops_and_closes_when_it_returns() {
    let addr: SocketAddr = ([127, 0, 0, 1], free_port()).into();
    let mut infer = vps_infer_on(addr);
    let config = format!(
        "{CONFIG}connect_timeout_ms = 2000\n[breaker]\ncooldown_ms = 500\nmax_cooldown_ms = 1000\n"
    );
    let edge = LspEdge::start(&format!("http://{addr}"), TEST_API_KEY, &config, &[]);
    let mut client = edge.client();
    // What the model says does not matter here: keep each answer short.
    client.initialize(json!({"completion": {"max_tokens": 8}}), json!({}));
    client.did_open(PY_URI, "python", 1, PY_TEXT);
    let ask = |client: &mut LspClient| {
        client.request(
            "textDocument/inlineCompletion",
            inline_params(PY_URI, 8, 0, None),
        )
    };
    ask(&mut client).result();

    infer.terminate(Duration::from_secs(10));

    // Connection errors until the breaker opens; then it refuses at once, clearly.
    let mut connection_errors = 0;
    loop {
        let response = ask(&mut client);
        assert_eq!(response.error_code(), -32803, "{:?}", response.outcome);
        let message = response.error_message();
        if message.contains("circuit breaker open") {
            break;
        }
        assert!(message.contains("cannot reach vps-infer"), "{message}");
        connection_errors += 1;
        assert!(connection_errors < 20, "the breaker never opened");
    }
    assert!(
        connection_errors >= 3,
        "opened after {connection_errors} failures"
    );
    client.wait_for("the editor being told the breaker opened", |m| {
        m["method"] == "window/showMessage"
            && m["params"]["message"]
                .as_str()
                .is_some_and(|s| s.contains("unavailable"))
    });

    // vps-infer returns: a probe goes through after the cooldown and closes the breaker.
    let _infer = vps_infer_on(addr);
    let mut recovered = false;
    for _ in 0..400 {
        let response = ask(&mut client);
        if response.outcome.is_ok() {
            recovered = true;
            break;
        }
        std::thread::sleep(Duration::from_millis(250));
    }
    assert!(recovered, "completions never recovered");
    client.wait_for("the editor being told vps-infer is back", |m| {
        m["method"] == "window/showMessage"
            && m["params"]["message"]
                .as_str()
                .is_some_and(|s| s.contains("answers again"))
    });
}

#[test]
fn the_same_through_lsp_edge_connect_over_stdio() {
    let (_infer, edge) = start();
    let mut client = edge.connect_client();
    let init = client.initialize(
        greedy(),
        json!({"general": {"positionEncodings": ["utf-8", "utf-16"]}}),
    );
    assert_eq!(init["capabilities"]["positionEncoding"], "utf-8", "{init}");
    client.did_open(PY_URI, "python", 1, PY_TEXT);
    client.did_change(PY_URI, 2, (8, 0), (8, 0), "    return");

    let id = client.send_request(
        "textDocument/inlineCompletion",
        inline_params(PY_URI, 8, 10, Some("bridged")),
    );
    let response = client.response(id);
    let text = inline_text(response.result()).unwrap_or_default();
    assert!(!text.trim().is_empty(), "{:?}", response.outcome);
    let partials = client.progress("bridged");
    assert!(!partials.is_empty(), "partial results pass the bridge");
    assert!(partials.iter().all(|(index, _)| *index < response.index));

    // Cancellation passes the bridge too.
    client.did_open("file:///notes/n.txt", "plaintext", 1, COUNTING);
    let id = client.send_request(
        "textDocument/inlineCompletion",
        inline_params("file:///notes/n.txt", 0, COUNTING.len() as u32, Some("n")),
    );
    client.wait_for("a partial result", |m| m["params"]["token"] == "n");
    client.notify("$/cancelRequest", json!({"id": id}));
    assert_eq!(client.response(id).error_code(), -32800);

    client.shutdown();
    assert!(
        client.wait_closed(WAIT),
        "the bridge ends when the session does"
    );
}
