//! vps-infer speaking llama.cpp's server API and OpenAI's API, end to end: the real
//! binary, SmolLM2 (Qwen2.5-Coder for infill), real HTTP on loopback. One test per route
//! family; llama.cpp's own suite runs through `scripts/llama-server-tests`.

use std::time::{Duration, Instant};

use cerebrum_tests::{assert_error, model_path, sse_events, VpsInfer, TEST_API_KEY};
use serde_json::{json, Value};

const SMOL: &str = "smollm2-135m";
const QWEN: &str = "qwen2.5-coder-0.5b";

fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(300))
        .build()
        .unwrap()
}

/// POST with the key as `Authorization: Bearer`, as llama.cpp's and OpenAI's clients send it.
async fn send(server: &VpsInfer, path: &str, body: &Value) -> reqwest::Response {
    client()
        .post(format!("{}{path}", server.url()))
        .bearer_auth(TEST_API_KEY)
        .json(body)
        .send()
        .await
        .unwrap()
}

async fn post(server: &VpsInfer, path: &str, body: Value) -> (u16, Value) {
    let response = send(server, path, &body).await;
    let status = response.status().as_u16();
    let text = response.text().await.unwrap();
    let value = serde_json::from_str(&text)
        .unwrap_or_else(|e| panic!("{path} answered no JSON ({e}): {text}"));
    (status, value)
}

/// A streamed answer: its `data:` payloads, `[DONE]` left out, and whether it was last.
async fn post_stream(server: &VpsInfer, path: &str, body: Value) -> (Vec<Value>, bool) {
    let response = send(server, path, &body).await;
    assert_eq!(response.status(), 200, "{path}");
    let text = response.text().await.unwrap();
    let done_last = text
        .lines()
        .rfind(|l| l.starts_with("data:"))
        .is_some_and(|l| l.trim() == "data: [DONE]");
    let without_done: String = text
        .lines()
        .filter(|l| l.trim() != "data: [DONE]")
        .map(|l| format!("{l}\n"))
        .collect();
    (sse_events(&without_done), done_last)
}

async fn get(server: &VpsInfer, path: &str) -> (u16, Value) {
    let response = client()
        .get(format!("{}{path}", server.url()))
        .bearer_auth(TEST_API_KEY)
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    (status, response.json().await.unwrap())
}

#[tokio::test]
async fn llama_cpp_completion_tokenize_and_props() {
    let server = VpsInfer::start_smol();
    let body = json!({
        "prompt": "def add(a, b):\n    return",
        "n_predict": 8, "temperature": 0, "cache_prompt": true
    });
    let (status, first) = post(&server, "/completion", body.clone()).await;
    assert_eq!(status, 200, "{first}");
    assert_eq!(first["stop"], true);
    assert!(first["content"].is_string(), "{first}");
    assert!(
        ["eos", "limit", "word"].contains(&first["stop_type"].as_str().unwrap()),
        "{first}"
    );
    let timings = &first["timings"];
    let predicted = timings["predicted_n"].as_u64().unwrap();
    assert!((1..=8).contains(&predicted), "{first}");
    assert!(timings["prompt_n"].as_u64().unwrap() > 0, "{first}");
    assert_eq!(first["generation_settings"]["n_predict"], 8, "{first}");

    // The same prompt again: the KV cache holds it, and llama.cpp's fields say so.
    let (_, again) = post(&server, "/completion", body.clone()).await;
    assert_eq!(
        again["content"], first["content"],
        "greedy is deterministic"
    );
    let cached = again["tokens_cached"].as_u64().unwrap();
    assert!(cached > 0, "{again}");
    assert_eq!(again["timings"]["cache_n"], cached, "{again}");

    // Streamed: chunks with `stop: false`, then the whole answer with `stop: true`.
    let mut streamed = body.clone();
    streamed["stream"] = json!(true);
    let (events, _) = post_stream(&server, "/completion", streamed).await;
    let (last, chunks) = events.split_last().unwrap();
    assert!(chunks.iter().all(|c| c["stop"] == false), "{events:?}");
    assert_eq!(last["stop"], true, "{last}");
    let text: String = events
        .iter()
        .map(|c| c["content"].as_str().unwrap())
        .collect();
    assert_eq!(text, first["content"].as_str().unwrap());

    // `/completions` is the same route, as in llama.cpp.
    let (status, other) = post(&server, "/completions", body).await;
    assert_eq!(status, 200, "{other}");
    assert_eq!(other["content"], first["content"]);

    // Tokenize and back.
    let content = "What is the capital of France?";
    let (status, tokens) = post(&server, "/tokenize", json!({ "content": content })).await;
    assert_eq!(status, 200, "{tokens}");
    let ids = tokens["tokens"].as_array().unwrap().clone();
    assert!(ids.len() > 4 && ids.iter().all(Value::is_i64), "{tokens}");
    let (_, text) = post(&server, "/detokenize", json!({ "tokens": ids })).await;
    assert_eq!(text["content"], content);
    let (_, pieces) = post(
        &server,
        "/tokenize",
        json!({ "content": "héllo 🤗", "with_pieces": true }),
    )
    .await;
    let pieces = pieces["tokens"].as_array().unwrap();
    assert!(
        pieces
            .iter()
            .all(|p| p["id"].is_i64() && !p["piece"].is_null()),
        "{pieces:?}"
    );
    // An id outside the vocabulary is a clear error, not a crash of llama.cpp.
    let (status, error) = post(&server, "/detokenize", json!({ "tokens": [1, 99999999] })).await;
    assert_error(status, &error, 400, "invalid_request_error");

    let (status, props) = get(&server, "/props").await;
    assert_eq!(status, 200, "{props}");
    assert!(
        props["default_generation_settings"]["n_ctx"]
            .as_u64()
            .unwrap()
            >= 256
    );
    assert!(
        props["chat_template"]
            .as_str()
            .is_some_and(|t| !t.is_empty()),
        "{props}"
    );
    assert_eq!(props["fim"], false, "SmolLM2 has no FIM tokens");

    // Features llama.cpp has and we do not are refused by name.
    let (status, error) = post(&server, "/completion", json!({"prompt": "a", "n_probs": 3})).await;
    assert_error(status, &error, 400, "invalid_request_error");
    assert!(error["error"]["message"]
        .as_str()
        .unwrap()
        .contains("n_probs"));

    // The routes share the engine's statistics with /v1/inference.
    let stats = server.stats();
    assert_eq!(stats["requests"]["ok"], 4, "{stats}");
    assert_eq!(stats["requests"]["rejected"]["invalid"], 1, "{stats}");
}

#[tokio::test]
async fn llama_cpp_infill_with_qwen() {
    let server = VpsInfer::start(&[(QWEN, &model_path(QWEN)), (SMOL, &model_path(SMOL))]);
    let body = json!({
        "input_extra": [{"filename": "geometry.py", "text": "def square(x):\n    return x * x\n"}],
        "input_prefix": "from geometry import square\n\n\ndef sum_of_squares(values):\n",
        "prompt": "    total = ",
        "input_suffix": "\n    return total\n",
        "n_predict": 24, "temperature": 0, "stop": ["\n"]
    });
    let (status, answer) = post(&server, "/infill", body.clone()).await;
    assert_eq!(status, 200, "{answer}");
    let content = answer["content"].as_str().unwrap();
    assert!(!content.trim().is_empty(), "{answer}");
    assert!(!content.contains('\n'), "stopped at the newline: {answer}");

    // n_indent: every line after the first is indented at least this much, or the
    // answer ends before that line's first character.
    let mut indented = body.clone();
    indented["n_indent"] = json!(4);
    indented["n_predict"] = json!(64);
    indented["stop"] = json!([]);
    indented["input_suffix"] = json!("\n\n\nprint(sum_of_squares([1, 2]))\n");
    let (status, answer) = post(&server, "/infill", indented).await;
    assert_eq!(status, 200, "{answer}");
    let content = answer["content"].as_str().unwrap();
    for line in content.split('\n').skip(1) {
        let indent = line.len() - line.trim_start_matches([' ', '\t']).len();
        assert!(
            indent >= 4 || indent == line.len(),
            "a line indented by {indent} in {content:?}"
        );
    }

    // A malformed `input_extra` is a 400 that names the field.
    let mut bad = body.clone();
    bad["input_extra"] = json!([{ "filename": 123, "text": "x" }]);
    let (status, error) = post(&server, "/infill", bad).await;
    assert_error(status, &error, 400, "invalid_request_error");
    assert!(error["error"]["message"]
        .as_str()
        .unwrap()
        .contains("input_extra"));

    // A model without FIM tokens cannot infill, and says so.
    let mut smol = body;
    smol["model"] = json!(SMOL);
    let (status, error) = post(&server, "/infill", smol).await;
    assert_error(status, &error, 400, "invalid_request_error");
    assert!(error["error"]["message"]
        .as_str()
        .unwrap()
        .contains("fill-in-the-middle"));
}

#[tokio::test]
async fn openai_completions_chat_and_models() {
    let server = VpsInfer::start_smol();

    let (status, models) = get(&server, "/v1/models").await;
    assert_eq!(status, 200);
    assert_eq!(models["object"], "list", "{models}");
    assert_eq!(models["data"][0]["id"], SMOL, "{models}");
    assert_eq!(models["data"][0]["object"], "model", "{models}");
    assert_eq!(
        models["models"][0]["name"], SMOL,
        "ours stays beside: {models}"
    );

    // A model name the server does not know falls back to its default, as llama.cpp does.
    let (status, done) = post(
        &server,
        "/v1/completions",
        json!({"model": "davinci-002", "prompt": "1, 2, 3, 4,", "max_tokens": 4, "temperature": 0}),
    )
    .await;
    assert_eq!(status, 200, "{done}");
    assert_eq!(done["object"], "text_completion");
    assert_eq!(done["model"], SMOL);
    let choice = &done["choices"][0];
    assert!(choice["text"].is_string(), "{done}");
    assert!(["stop", "length"].contains(&choice["finish_reason"].as_str().unwrap()));
    assert!(
        done["usage"]["completion_tokens"].as_u64().unwrap() <= 4,
        "{done}"
    );

    let (events, done_last) = post_stream(
        &server,
        "/v1/completions",
        json!({"prompt": "1, 2, 3, 4,", "max_tokens": 4, "temperature": 0, "stream": true}),
    )
    .await;
    assert!(done_last, "a stream ends with data: [DONE]");
    let text: String = events
        .iter()
        .map(|e| e["choices"][0]["text"].as_str().unwrap())
        .collect();
    assert_eq!(text, choice["text"].as_str().unwrap());
    assert!(events.last().unwrap()["choices"][0]["finish_reason"].is_string());

    let chat = json!({
        "model": "gpt-4o",
        "messages": [
            {"role": "system", "content": "You answer in one word."},
            {"role": "user", "content": "What colour is the sky?"}
        ],
        "max_tokens": 8, "temperature": 0
    });
    let (status, answer) = post(&server, "/v1/chat/completions", chat.clone()).await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["object"], "chat.completion");
    let message = &answer["choices"][0]["message"];
    assert_eq!(message["role"], "assistant");
    assert!(!message["content"].as_str().unwrap().is_empty(), "{answer}");

    let mut streamed = chat;
    streamed["stream"] = json!(true);
    streamed["stream_options"] = json!({"include_usage": true});
    let (events, done_last) = post_stream(&server, "/v1/chat/completions", streamed).await;
    assert!(done_last);
    assert_eq!(events[0]["choices"][0]["delta"]["role"], "assistant");
    let usage = events.last().unwrap();
    assert_eq!(usage["choices"], json!([]), "{usage}");
    assert!(usage["usage"]["completion_tokens"].as_u64().unwrap() > 0);
    let text: String = events
        .iter()
        .filter_map(|e| e["choices"][0]["delta"]["content"].as_str())
        .collect();
    assert_eq!(text, message["content"].as_str().unwrap());

    // Errors come in OpenAI's envelope, which also carries our code and type.
    let (status, error) = post(&server, "/v1/chat/completions", json!({"messages": []})).await;
    assert_error(status, &error, 400, "invalid_request_error");
    assert!(error["error"].get("param").is_some(), "{error}");

    // A wrong key is refused on these routes too.
    let response = client()
        .post(format!("{}/v1/completions", server.url()))
        .bearer_auth("not-the-key")
        .json(&json!({"prompt": "x"}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 401);
}

#[tokio::test]
async fn a_dropped_llama_cpp_stream_stops_decoding() {
    let server = VpsInfer::start_smol();
    let n_predict = 2000;
    let mut response = send(
        &server,
        "/completion",
        &json!({
            "prompt": "List every integer from 1 to 5000, one per line:\n1\n2\n3\n",
            "n_predict": n_predict, "temperature": 0.8, "seed": 7, "stream": true
        }),
    )
    .await;
    assert_eq!(response.status(), 200);
    let mut seen = String::new();
    while !seen.contains("\"stop\":false") {
        let chunk = response.chunk().await.unwrap().expect("a first chunk");
        seen.push_str(&String::from_utf8_lossy(&chunk));
    }
    drop(response);

    let deadline = Instant::now() + Duration::from_secs(60);
    let stats = loop {
        let stats = server.stats();
        if stats["requests"]["cancelled"] == 1 {
            break stats;
        }
        assert!(Instant::now() < deadline, "no cancel counted: {stats}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(
        stats["tokens_generated"].as_u64().unwrap() < n_predict,
        "decoding ran on after the client left: {stats}"
    );
}
