//! Typing latency, asserted in tokens (never in seconds): a keystroke and an Enter in a
//! long real file cost vps-infer only the tokens that changed, and typing what the
//! ghost text shows costs no backend call at all.
//!
//! Real binaries, Qwen2.5-Coder 0.5B (it has fill-in-the-middle tokens, so the prompt
//! has the layout editors get: context chunks, prefix, suffix), real sockets.

use std::time::Duration;

use cerebrum_tests::lsp_client::{inline_params, inline_text, LspEdge};
use cerebrum_tests::{model_path, VpsInfer};
use serde_json::{json, Value};

/// A real 8 KB Python module (the context engine's benchmark file).
const FILE: &str = include_str!("../../lsp-edge/context/benches/data/inventory.py");
const URI: &str = "file:///work/project/inventory.py";

/// Generous timeouts for a shared machine: they guard against hangs, nothing is timed.
const CONFIG: &str = r#"
[backend]
first_token_timeout_ms = 300000
total_timeout_ms = 300000
"#;

/// Tokens vps-infer evaluates again after each edit by default although they are
/// cached (`cache_reuse_fresh`).
const FRESH: u64 = 8;

/// vps-infer as configured by default: runs shifted past the first difference.
fn start() -> (VpsInfer, LspEdge) {
    let infer = VpsInfer::builder()
        .model("qwen2.5-coder-0.5b", model_path("qwen2.5-coder-0.5b"))
        .arg("--threads")
        .arg("1")
        .start();
    let edge = LspEdge::start(&infer.url(), infer.api_key(), CONFIG, &[]);
    (infer, edge)
}

/// Byte offset of the end of 1-based line `line`.
fn end_of_line(text: &str, line: usize) -> usize {
    let start: usize = text
        .split_inclusive('\n')
        .take(line - 1)
        .map(str::len)
        .sum();
    start + text[start..].find('\n').unwrap_or(text.len() - start)
}

/// What one request cost vps-infer: prompt tokens evaluated and shifted.
#[derive(Debug)]
struct Cost {
    evaluated: u64,
    shifted: u64,
    requests: u64,
}

fn counters(infer: &VpsInfer) -> [u64; 3] {
    let stats = infer.stats();
    let requests = &stats["requests"];
    [
        stats["prompt_tokens_evaluated"].as_u64().unwrap(),
        stats["prompt_tokens_shifted"].as_u64().unwrap(),
        requests["ok"].as_u64().unwrap() + requests["cancelled"].as_u64().unwrap(),
    ]
}

/// Runs `f` and reports what vps-infer did meanwhile.
fn cost<T>(infer: &VpsInfer, f: impl FnOnce() -> T) -> (T, Cost) {
    let before = counters(infer);
    let value = f();
    let after = counters(infer);
    let cost = Cost {
        evaluated: after[0] - before[0],
        shifted: after[1] - before[1],
        requests: after[2] - before[2],
    };
    (value, cost)
}

/// `POST /v1/complete` with the whole file around the cursor, as scripts send it.
fn complete(edge: &LspEdge, prompt: &str, suffix: &str) -> Value {
    let url = format!("http://{}/v1/complete", edge.http);
    let body = json!({"prompt": prompt, "suffix": suffix, "language": "python",
                      "path": "inventory.py", "max_tokens": 4, "temperature": 0});
    std::thread::scope(|scope| {
        scope
            .spawn(|| {
                let runtime = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .unwrap();
                runtime.block_on(async {
                    let response = reqwest::Client::builder()
                        .timeout(Duration::from_secs(600))
                        .build()
                        .unwrap()
                        .post(url)
                        .json(&body)
                        .send()
                        .await
                        .unwrap();
                    assert_eq!(response.status(), 200);
                    response.json::<Value>().await.unwrap()
                })
            })
            .join()
            .unwrap()
    })
}

#[test]
fn a_keystroke_and_an_enter_in_a_long_file_evaluate_only_what_changed() {
    let (infer, edge) = start();
    // The cursor at the end of `history = self.sales.get(sku, [])` in
    // `RestockPlanner.daily_rate`, in the middle of the file.
    let cursor = end_of_line(FILE, 127);
    assert!(FILE[..cursor].ends_with("history = self.sales.get(sku, [])"));
    let (before, after) = FILE.split_at(cursor);

    let (_, cold) = cost(&infer, || complete(&edge, before, after));
    assert!(
        cold.evaluated > 500,
        "the first request reads the prompt: {cold:?}"
    );

    // A keystroke within the line: the edited token, the first tokens after it and
    // the final marker; the rest of the suffix behind the cursor is shifted, not
    // evaluated again. (Not a space: trailing spaces are left out of the prompt, see
    // `heal_trailing_whitespace`.)
    let typed = format!("{before} #");
    let (answer, keystroke) = cost(&infer, || complete(&edge, &typed, after));
    assert_eq!(keystroke.requests, 1, "{answer}");
    assert!(keystroke.evaluated <= FRESH + 8, "{keystroke:?}");
    assert!(
        keystroke.evaluated > FRESH,
        "the tokens right after the edit are read again, not shifted: {keystroke:?}"
    );
    assert!(keystroke.shifted > 50, "the suffix moved: {keystroke:?}");

    // Enter with auto-indent: the new line's tokens, not the window again.
    let entered = format!("{before}\n        ");
    let (answer, enter) = cost(&infer, || complete(&edge, &entered, after));
    assert_eq!(enter.requests, 1, "{answer}");
    assert!(enter.evaluated <= FRESH + 24, "{enter:?}");

    // Three more lines typed back: each Enter stays cheap, but for one at most where
    // the prefix window takes its 16-line step and the prompt is read again (where
    // that falls depends on the cursor's place against the window's limits; the next
    // step is 16 lines' worth of text away).
    let mut text = entered;
    let mut steps = Vec::new();
    for line in ["x = 1", "y = 2", "z = 3"] {
        text.push_str(line);
        text.push_str("\n        ");
        let (_, enter) = cost(&infer, || complete(&edge, &text, after));
        if enter.evaluated > FRESH + 24 {
            steps.push((line, enter));
        }
    }
    assert!(
        steps.len() <= 1,
        "Enters that read the window again: {steps:?}"
    );
}

#[test]
fn typing_what_the_ghost_text_shows_asks_no_model() {
    let (infer, edge) = start();
    let mut client = edge.client();
    client.initialize(
        json!({"completion": {"temperature": 0.0, "max_tokens": 12}}),
        json!({}),
    );
    // Inside `daily_rate`, after `return `: the model has an obvious answer.
    let line = FILE
        .lines()
        .position(|l| l.contains("return sum(history)"))
        .unwrap();
    let text = FILE.replacen(
        "return sum(history) / len(history) if history else 0.0",
        "return ",
        1,
    );
    client.did_open(URI, "python", 1, &text);
    let column = "        return ".len() as u32;
    let response = client.request(
        "textDocument/inlineCompletion",
        inline_params(URI, line as u32, column, None),
    );
    let shown = inline_text(response.result()).expect("a completion");
    let first: String = shown.chars().take(1).collect();
    assert!(shown.chars().count() > 1, "{shown:?}");

    // The user types the first character of the ghost text.
    client.did_change(URI, 2, (line as u32, column), (line as u32, column), &first);
    let (response, typed) = cost(&infer, || {
        client.request(
            "textDocument/inlineCompletion",
            inline_params(
                URI,
                line as u32,
                column + first.encode_utf16().count() as u32,
                None,
            ),
        )
    });
    let rest = inline_text(response.result()).expect("the rest of the completion");
    assert_eq!(format!("{first}{rest}"), shown);
    assert_eq!(typed.requests, 0, "no backend call: {typed:?}");
    assert_eq!(typed.evaluated, 0);

    // Something else typed: the model is asked again.
    client.did_change(URI, 3, (line as u32, 0), (line as u32, 0), "#");
    let (_, other) = cost(&infer, || {
        client.request(
            "textDocument/inlineCompletion",
            inline_params(URI, line as u32, column + 2, None),
        )
    });
    assert_eq!(other.requests, 1, "{other:?}");
}
