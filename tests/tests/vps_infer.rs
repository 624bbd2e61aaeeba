//! vps-infer end to end: the real binary, the real SmolLM2 model (and Qwen2.5-Coder for
//! fill-in-the-middle), real HTTP on loopback.

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

async fn post(server: &VpsInfer, path: &str, body: Value) -> (u16, Value) {
    let response = client()
        .post(format!("{}{path}", server.url()))
        .header("X-API-Key", TEST_API_KEY)
        .json(&body)
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    (status, response.json().await.unwrap())
}

/// `POST /v1/inference` with the key, answering the raw response (for streams and headers).
async fn send_inference(server: &VpsInfer, body: Value) -> reqwest::Response {
    client()
        .post(format!("{}/v1/inference", server.url()))
        .header("X-API-Key", TEST_API_KEY)
        .json(&body)
        .send()
        .await
        .unwrap()
}

async fn get(server: &VpsInfer, path: &str) -> (u16, Value) {
    let response = client()
        .get(format!("{}{path}", server.url()))
        .header("X-API-Key", TEST_API_KEY)
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    (status, response.json().await.unwrap())
}

/// Code the model should continue: long enough to matter for the cache.
fn python_prefix() -> String {
    let mut s = String::from("import math\n\n");
    for i in 0..12 {
        s.push_str(&format!(
            "def area_{i}(radius):\n    \"\"\"Area of circle number {i}.\"\"\"\n    return math.pi * radius ** 2\n\n\n"
        ));
    }
    s
}

#[tokio::test]
async fn health_needs_no_key_and_reports_state() {
    let server = VpsInfer::start_smol();
    let response = client()
        .get(format!("{}/health", server.url()))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["status"], "ok", "{body}");
    assert_eq!(
        body["model_loaded"],
        Value::Null,
        "nothing is loaded before the first request"
    );
    for field in ["cpu_percent", "memory_available_mb", "uptime_s"] {
        assert!(body.get(field).is_some(), "{field} missing: {body}");
    }
}

#[tokio::test]
async fn requests_without_or_with_a_wrong_key_get_401() {
    let server = VpsInfer::start_smol();
    let url = format!("{}/v1/stats", server.url());
    let no_key = client().get(&url).send().await.unwrap();
    assert_eq!(no_key.status(), 401);
    let body: Value = no_key.json().await.unwrap();
    assert_error(401, &body, 401, "authentication_error");

    let wrong = client()
        .get(&url)
        .header("X-API-Key", "nope")
        .send()
        .await
        .unwrap();
    assert_eq!(wrong.status(), 401);

    let bearer = client()
        .get(&url)
        .bearer_auth(TEST_API_KEY)
        .send()
        .await
        .unwrap();
    assert_eq!(bearer.status(), 200);
    let (_, stats) = get(&server, "/v1/stats").await;
    assert_eq!(stats["requests"]["rejected"]["auth"], 2, "{stats}");

    let inference = client()
        .post(format!("{}/v1/inference", server.url()))
        .json(&json!({"prompt": "x"}))
        .send()
        .await
        .unwrap();
    assert_eq!(inference.status(), 401);
}

#[tokio::test]
async fn non_streamed_inference_answers_text_and_stats() {
    let server = VpsInfer::start_smol();
    let (status, body) = post(
        &server,
        "/v1/inference",
        json!({"prompt": "def add(a, b):\n    return", "max_tokens": 8, "temperature": 0}),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    for field in [
        "text",
        "model",
        "prompt_tokens",
        "cached_tokens",
        "total_tokens",
        "inference_time",
        "tokens_per_second",
        "stop_reason",
    ] {
        assert!(body.get(field).is_some(), "{field} missing: {body}");
    }
    assert_eq!(body["model"], SMOL);
    assert!(body["total_tokens"].as_u64().unwrap() >= 1, "{body}");
    assert!(body["total_tokens"].as_u64().unwrap() <= 8, "{body}");
    assert!(["eos", "length", "stop"].contains(&body["stop_reason"].as_str().unwrap()));
    assert!(!body["text"].as_str().unwrap().is_empty() || body["stop_reason"] == "eos");

    let (_, health) = get(&server, "/health").await;
    assert_eq!(health["model_loaded"], SMOL, "{health}");
    assert_eq!(health["default_model"], SMOL, "{health}");
}

#[tokio::test]
async fn streamed_inference_sends_tokens_then_done() {
    let server = VpsInfer::start_smol();
    let response = send_inference(
        &server,
        json!({"prompt": "Once upon a time", "max_tokens": 12, "temperature": 0, "stream": true}),
    )
    .await;
    assert_eq!(response.status(), 200);
    assert!(response.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/event-stream"));
    let events = sse_events(&response.text().await.unwrap());
    let (last, tokens) = events.split_last().expect("events");
    assert_eq!(last["done"], true, "{last}");
    assert!(!tokens.is_empty(), "no token events");
    let streamed: String = tokens
        .iter()
        .map(|e| e["token"].as_str().expect("token event"))
        .collect();
    assert_eq!(streamed, last["text"].as_str().unwrap());
    assert_eq!(last["model"], SMOL);
    assert!(last["total_tokens"].as_u64().unwrap() >= tokens.len() as u64);
    assert!(last["tokens_per_second"].as_f64().unwrap() > 0.0);

    // The same at temperature 0 without streaming gives the same text.
    let (_, plain) = post(
        &server,
        "/v1/inference",
        json!({"prompt": "Once upon a time", "max_tokens": 12, "temperature": 0}),
    )
    .await;
    assert_eq!(plain["text"], last["text"]);
}

#[tokio::test]
async fn shared_prefix_reuses_the_cache_and_matches_a_cold_run() {
    let server = VpsInfer::start_smol();
    let prefix = python_prefix();
    let first = format!("{prefix}def perimeter(radius):\n");
    let second = format!("{prefix}def diameter(radius):\n");
    let body = |p: &str| json!({"prompt": p, "max_tokens": 16, "temperature": 0});

    let (_, a) = post(&server, "/v1/inference", body(&first)).await;
    assert_eq!(a["cached_tokens"], 0, "first request is cold: {a}");
    let (_, warm) = post(&server, "/v1/inference", body(&second)).await;
    let prompt_tokens = warm["prompt_tokens"].as_u64().unwrap();
    let cached = warm["cached_tokens"].as_u64().unwrap();
    assert!(
        cached > prompt_tokens / 2,
        "expected most of {prompt_tokens} tokens reused: {warm}"
    );

    // Unload: the cache is gone and the same prompt runs cold.
    let (status, cleanup) = post(&server, "/v1/cleanup", json!({})).await;
    assert_eq!(status, 200, "{cleanup}");
    let (_, cold) = post(&server, "/v1/inference", body(&second)).await;
    assert_eq!(cold["cached_tokens"], 0, "{cold}");
    assert_eq!(
        cold["text"], warm["text"],
        "a cached run must generate what a cold run does"
    );

    let (_, stats) = get(&server, "/v1/stats").await;
    assert!(
        stats["prompt_tokens_reused"].as_u64().unwrap() >= cached,
        "{stats}"
    );
    assert!(
        stats["prompt_tokens_evaluated"].as_u64().unwrap() > 0,
        "{stats}"
    );
}

#[tokio::test]
async fn a_rejected_first_line_never_reaches_the_client() {
    let server = VpsInfer::start_smol();
    let prompt = format!("{}def perimeter(radius):\n", python_prefix());
    let body = |reject: &[&str], stream: bool| {
        json!({"prompt": prompt, "max_tokens": 24, "temperature": 0, "stream": stream,
               "reject_first_line": reject})
    };
    let first_line = |text: &str| text.split('\n').next().unwrap().trim_end().to_owned();

    // Cold, then warm: answers after reuse may differ from a cold one (batch
    // shapes), so the warm answer is the one to compare with below.
    post(&server, "/v1/inference", body(&[], false)).await;
    let (_, plain) = post(&server, "/v1/inference", body(&[], false)).await;
    assert!(plain["cached_tokens"].as_u64().unwrap() > 0, "{plain}");
    let plain_text = plain["text"].as_str().unwrap().to_owned();
    let line = first_line(&plain_text);
    assert!(!line.trim().is_empty(), "{plain}");

    // Rejected: another first line, streamed as it is answered.
    let response = send_inference(&server, body(&[&line, "unrelated"], true)).await;
    assert_eq!(response.status(), 200);
    let events = sse_events(&response.text().await.unwrap());
    let (last, tokens) = events.split_last().expect("events");
    let streamed: String = tokens
        .iter()
        .map(|e| e["token"].as_str().expect("token event"))
        .collect();
    let text = last["text"].as_str().unwrap();
    assert_eq!(streamed, text);
    assert_ne!(first_line(text), line, "{last}");
    assert!(!text.trim().is_empty(), "{last}");

    // Backing up left the sequence as it was: the plain request answers as before.
    let (_, again) = post(&server, "/v1/inference", body(&[], false)).await;
    assert_eq!(again["cached_tokens"], plain["cached_tokens"], "{again}");
    assert_eq!(again["text"], plain_text.as_str());
}

/// The text of a non-streamed `/v1/inference` answer to `body`, which must succeed.
async fn answer_text(server: &VpsInfer, body: Value) -> String {
    let (status, answer) = post(server, "/v1/inference", body).await;
    assert_eq!(status, 200, "{answer}");
    answer["text"].as_str().unwrap().to_owned()
}

#[tokio::test]
async fn the_first_line_goes_no_deeper_than_asked() {
    let server = VpsInfer::start_smol();
    let block = "for i in range(3):\n    for j in range(3):\n        print(i, j)\n";
    // The prompt ends in two spaces of indentation; SmolLM2 adds a third.
    let prompt = format!("{}for i in range(3):\n  ", block.repeat(3));
    let answer = |max_indent: Option<&str>| {
        let body = json!({"prompt": prompt, "max_tokens": 12, "temperature": 0,
                          "first_line_max_indent": max_indent});
        answer_text(&server, body)
    };
    let plain = answer(None).await;
    assert!(plain.starts_with(" for"), "{plain:?}");

    // One more space is allowed: the same answer.
    assert_eq!(answer(Some(" ")).await, plain);
    // None: the first line starts without one.
    let capped = answer(Some("")).await;
    assert!(!capped.starts_with([' ', '\t']), "{capped:?}");
}

#[tokio::test]
async fn a_first_line_asked_to_have_text_has_some() {
    let server = VpsInfer::start_smol();
    // After these lines SmolLM2 starts with a blank line.
    let answer = |not_blank: bool| {
        let body = json!({"prompt": "x = 1\ny = 2\n", "max_tokens": 12, "temperature": 0,
                          "first_line_not_blank": not_blank});
        answer_text(&server, body)
    };
    let plain = answer(false).await;
    assert!(plain.starts_with('\n'), "{plain:?}");
    let with_text = answer(true).await;
    let first_line = with_text.split('\n').next().unwrap();
    assert!(!first_line.trim().is_empty(), "{with_text:?}");
}

#[tokio::test]
async fn a_dropped_stream_stops_decoding() {
    let server = VpsInfer::start_smol();
    let max_tokens = 2000;
    let mut response = send_inference(
        &server,
        json!({
            "prompt": "List every integer from 1 to 5000, one per line:\n1\n2\n3\n",
            "max_tokens": max_tokens, "temperature": 0.8, "seed": 7, "stream": true
        }),
    )
    .await;
    assert_eq!(response.status(), 200);
    cerebrum_tests::read_until_first_token(&mut response).await;
    drop(response);

    let deadline = Instant::now() + Duration::from_secs(60);
    let stats = loop {
        let (_, stats) = get(&server, "/v1/stats").await;
        if stats["requests"]["cancelled"] == 1 {
            break stats;
        }
        assert!(Instant::now() < deadline, "no cancel counted: {stats}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let generated = stats["tokens_generated"].as_u64().unwrap();
    assert!(
        generated < max_tokens,
        "decoding ran on after the client left: {stats}"
    );
    // And it stays stopped.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (_, later) = get(&server, "/v1/stats").await;
    assert_eq!(later["tokens_generated"].as_u64().unwrap(), generated);
}

#[tokio::test]
async fn cleanup_unloads_and_the_next_request_reloads() {
    let server = VpsInfer::start_smol();
    let body = json!({"prompt": "Hello", "max_tokens": 2});
    post(&server, "/v1/inference", body.clone()).await;
    let (_, health) = get(&server, "/health").await;
    assert_eq!(health["model_loaded"], SMOL);

    let (status, report) = post(&server, "/v1/cleanup", json!({})).await;
    assert_eq!(status, 200);
    assert_eq!(report["unloaded"], SMOL, "{report}");
    assert!(
        report["freed_bytes"].as_u64().unwrap() > 50_000_000,
        "{report}"
    );
    let (_, health) = get(&server, "/health").await;
    assert_eq!(health["model_loaded"], Value::Null, "{health}");
    let (_, again) = post(&server, "/v1/cleanup", json!({})).await;
    assert_eq!(
        again["unloaded"],
        Value::Null,
        "nothing left to unload: {again}"
    );

    let (status, _) = post(&server, "/v1/inference", body).await;
    assert_eq!(status, 200);
    let (_, stats) = get(&server, "/v1/stats").await;
    assert_eq!(stats["model_loads"], 2, "{stats}");
    assert_eq!(stats["loaded_model"], SMOL, "{stats}");
}

#[tokio::test]
async fn fill_in_the_middle_with_qwen_and_model_switch() {
    let server = VpsInfer::start(&[(SMOL, &model_path(SMOL)), (QWEN, &model_path(QWEN))]);
    let (_, models) = get(&server, "/v1/models").await;
    let names: Vec<&str> = models["models"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, [QWEN, SMOL]);

    let (status, fim) = post(
        &server,
        "/v1/inference",
        json!({
            "model": QWEN,
            "prompt": "def fibonacci(n):\n    if n < 2:\n        return n\n    return ",
            "suffix": "\n\n\nprint(fibonacci(10))\n",
            "extra": [{"label": "util.py::memo", "text": "def memo(f):\n    return f\n"}],
            "max_tokens": 24, "temperature": 0, "stop": ["\n"]
        }),
    )
    .await;
    assert_eq!(status, 200, "{fim}");
    assert_eq!(fim["model"], QWEN);
    let text = fim["text"].as_str().unwrap();
    assert!(
        text.contains("fibonacci(n - 1)") || text.contains("fibonacci(n-1)"),
        "{text:?}"
    );
    let (_, health) = get(&server, "/health").await;
    assert_eq!(health["model_loaded"], QWEN);

    // Switch to the other model, which is the default.
    let (status, smol) = post(
        &server,
        "/v1/inference",
        json!({"prompt": "Hi", "max_tokens": 2}),
    )
    .await;
    assert_eq!(status, 200, "{smol}");
    assert_eq!(smol["model"], SMOL);
    let (_, stats) = get(&server, "/v1/stats").await;
    assert_eq!(stats["loaded_model"], SMOL);
    assert_eq!(stats["model_loads"], 2);

    let (status, missing) = post(
        &server,
        "/v1/inference",
        json!({"prompt": "x", "model": "gpt-9"}),
    )
    .await;
    assert_error(status, &missing, 404, "not_found_error");
}

#[tokio::test]
async fn bad_requests_get_clear_400_and_413() {
    let server = VpsInfer::builder()
        .model(SMOL, model_path(SMOL))
        .arg("--ctx-size")
        .arg("512")
        .start();
    let cases = [
        (json!({"prompt": 5}), "prompt"),
        (json!({"max_tokens": 4}), "prompt"),
        (json!({"prompt": "x", "max_tokens": 0}), "max_tokens"),
        (json!({"prompt": "x", "max_tokens": 5000}), "max_tokens"),
        (json!({"prompt": "x", "temperature": 2.5}), "temperature"),
        (json!({"prompt": "x", "stream": "yes"}), "stream"),
        (json!({"prompt": "x", "extra": [{"label": "a"}]}), "extra"),
        (json!({"prompt": "x", "bogus": 1}), "bogus"),
        (json!({"prompt": ""}), "prompt"),
        (
            json!({"prompt": "x", "reject_first_line": ["a\nb"]}),
            "reject_first_line[0]",
        ),
        (
            json!({"prompt": "x", "reject_first_line": vec!["a"; 9]}),
            "reject_first_line",
        ),
        (
            json!({"prompt": "x", "first_line_max_indent": "  x"}),
            "first_line_max_indent",
        ),
        (
            json!({"prompt": "x", "first_line_max_indent": " ".repeat(257)}),
            "first_line_max_indent",
        ),
    ];
    for (body, field) in cases {
        let (status, answer) = post(&server, "/v1/inference", body.clone()).await;
        assert_error(status, &answer, 400, "invalid_request_error");
        let message = answer["error"]["message"].as_str().unwrap();
        assert!(message.contains(field), "{body} -> {message}");
    }

    let raw = client()
        .post(format!("{}/v1/inference", server.url()))
        .header("X-API-Key", TEST_API_KEY)
        .header("content-type", "application/json")
        .body("{\"prompt\": ")
        .send()
        .await
        .unwrap();
    assert_eq!(raw.status(), 400);

    let (status, too_long) = post(
        &server,
        "/v1/inference",
        json!({"prompt": "word ".repeat(600), "max_tokens": 16}),
    )
    .await;
    assert_error(status, &too_long, 400, "exceed_context_size_error");

    let (status, no_fim) = post(
        &server,
        "/v1/inference",
        json!({"prompt": "def f(", "suffix": ")", "max_tokens": 4}),
    )
    .await;
    // SmolLM2's vocabulary has StarCoder-style FIM tokens; either it fills the middle or
    // it says clearly that it cannot.
    if status != 200 {
        assert_error(status, &no_fim, 400, "invalid_request_error");
        assert!(no_fim["error"]["message"]
            .as_str()
            .unwrap()
            .contains("fill-in-the-middle"));
    }

    let big = json!({"prompt": "x".repeat(70 * 1024)});
    let (status, answer) = post(&server, "/v1/inference", big).await;
    assert_error(status, &answer, 413, "payload_too_large");

    let (status, answer) = get(&server, "/v1/nothing-here").await;
    assert_error(status, &answer, 404, "not_found_error");
}

#[tokio::test]
async fn memory_guard_refuses_with_503_and_retry_after() {
    let server = VpsInfer::builder()
        .model(SMOL, model_path(SMOL))
        .env("CEREBRUM_GUARD_MIN_FREE_MEMORY_MB", "100000000")
        .start();
    // The guard samples once a second.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let response = send_inference(&server, json!({"prompt": "x", "max_tokens": 1})).await;
        if response.status() == 503 {
            assert!(response.headers().contains_key("retry-after"));
            let body: Value = response.json().await.unwrap();
            assert_error(503, &body, 503, "unavailable_error");
            assert!(body["error"]["message"]
                .as_str()
                .unwrap()
                .contains("memory"));
            break;
        }
        assert!(Instant::now() < deadline, "guard never refused");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let (_, health) = get(&server, "/health").await;
    assert_eq!(health["status"], "degraded", "{health}");
    let (_, stats) = get(&server, "/v1/stats").await;
    assert!(stats["requests"]["rejected"]["memory"].as_u64().unwrap() >= 1);
}

#[tokio::test]
async fn cpu_guard_counts_other_processes_only() {
    let server = VpsInfer::builder()
        .model(SMOL, model_path(SMOL))
        .env("CEREBRUM_GUARD_MAX_CPU_PERCENT", "20")
        .start();
    // This test process is "another process": keep both cores busy.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let spinners: Vec<_> = (0..2)
        .map(|_| {
            let stop = stop.clone();
            std::thread::spawn(move || {
                let mut x = 0u64;
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    x = x.wrapping_mul(6364136223846793005).wrapping_add(1);
                    std::hint::black_box(x);
                }
            })
        })
        .collect();
    let deadline = Instant::now() + Duration::from_secs(30);
    let refused = loop {
        let response = send_inference(&server, json!({"prompt": "x", "max_tokens": 1})).await;
        if response.status() == 503 {
            break response.json::<Value>().await.unwrap();
        }
        if Instant::now() > deadline {
            break Value::Null;
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    };
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    for s in spinners {
        s.join().unwrap();
    }
    assert_error(503, &refused, 503, "unavailable_error");
    assert!(
        refused["error"]["message"]
            .as_str()
            .unwrap()
            .contains("CPU"),
        "{refused}"
    );
}

#[tokio::test]
async fn a_full_queue_is_refused_at_once() {
    let server = VpsInfer::builder()
        .model(SMOL, model_path(SMOL))
        .env("CEREBRUM_QUEUE_SIZE", "1")
        .start();
    // Two long generations hold both sequences...
    let mut busy = Vec::new();
    for i in 0..2 {
        let mut response = send_inference(&server, json!({"prompt": format!("Count to a thousand ({i}):"), "max_tokens": 1500, "temperature": 0.9, "stream": true})).await;
        assert_eq!(response.status(), 200);
        response.chunk().await.unwrap();
        busy.push(response);
    }
    // ...one more waits for a sequence...
    let url = server.url();
    let waiting = tokio::spawn(async move {
        client()
            .post(format!("{url}/v1/inference"))
            .header("X-API-Key", TEST_API_KEY)
            .json(&json!({"prompt": "x", "max_tokens": 1}))
            .send()
            .await
            .map(|r| r.status().as_u16())
    });
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (_, stats) = get(&server, "/v1/stats").await;
        if stats["queue_depth"] == 1 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the second request never queued: {stats}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // ...and the next is turned away.
    let response = send_inference(&server, json!({"prompt": "x", "max_tokens": 1})).await;
    assert_eq!(response.status(), 503);
    assert!(response.headers().contains_key("retry-after"));
    drop(busy);
    assert_eq!(waiting.await.unwrap().unwrap(), 200);
}

#[tokio::test]
async fn sigterm_ends_open_streams_and_exits_quickly() {
    let mut server = VpsInfer::start_smol();
    let mut stream = send_inference(&server, json!({"prompt": "Tell a very long story:", "max_tokens": 3000, "temperature": 0.9, "stream": true})).await;
    assert_eq!(stream.status(), 200);
    stream.chunk().await.unwrap();
    let status = server
        .service
        .terminate(Duration::from_secs(10))
        .expect("vps-infer did not exit within 10 s of SIGTERM");
    assert!(status.success(), "exit status {status}");
    // The stream ended rather than hanging, and never claimed to be complete.
    let rest = tokio::time::timeout(Duration::from_secs(5), async {
        let mut tail = String::new();
        while let Ok(Some(chunk)) = stream.chunk().await {
            tail.push_str(&String::from_utf8_lossy(&chunk));
        }
        tail
    })
    .await
    .expect("the stream stayed open after shutdown");
    assert!(!rest.contains("\"done\":true"), "{rest}");
}

#[test]
fn bad_configuration_names_the_field_and_exits_non_zero() {
    let bin = cerebrum_tests::binary("vps-infer");
    let out = std::process::Command::new(&bin)
        .args(["--model", "nameonly"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("NAME=PATH"));

    let model = model_path(SMOL);
    let out = std::process::Command::new(&bin)
        .args(["--listen", "0.0.0.0:0", "--model"])
        .arg(format!("m={}", model.display()))
        .env_remove("CEREBRUM_API_KEY")
        .output()
        .unwrap();
    assert!(
        !out.status.success(),
        "must refuse a public address without a key"
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains("api_key"));

    let dir = cerebrum_tests::TempDir::new("cfg");
    let file = dir.path().join("vps-infer.toml");
    std::fs::write(&file, "[guard]\nmax_cpu_percent = \"lots\"\n").unwrap();
    let out = std::process::Command::new(&bin)
        .arg("--config")
        .arg(&file)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("max_cpu_percent"), "{stderr}");
}

#[tokio::test]
async fn concurrent_first_requests_load_once_and_idle_unloads() {
    let server = VpsInfer::builder()
        .model(SMOL, model_path(SMOL))
        .env("CEREBRUM_IDLE_UNLOAD_SECS", "2")
        .start();
    let requests = (0..3).map(|i| {
        let url = server.url();
        tokio::spawn(async move {
            client()
                .post(format!("{url}/v1/inference"))
                .header("X-API-Key", TEST_API_KEY)
                .json(&json!({"prompt": format!("Number {i}:"), "max_tokens": 2}))
                .send()
                .await
                .map(|r| r.status().as_u16())
        })
    });
    for r in requests.collect::<Vec<_>>() {
        assert_eq!(r.await.unwrap().unwrap(), 200);
    }
    let (_, stats) = get(&server, "/v1/stats").await;
    assert_eq!(stats["model_loads"], 1, "{stats}");
    assert_eq!(stats["requests"]["ok"], 3, "{stats}");

    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (_, health) = get(&server, "/health").await;
        if health["model_loaded"].is_null() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "never unloaded when idle: {health}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test]
async fn chat_mode_wraps_the_prompt_in_the_chat_template() {
    let server = VpsInfer::start_smol();
    let (status, plain) = post(
        &server,
        "/v1/inference",
        json!({"prompt": "What is the capital of France?", "max_tokens": 12, "temperature": 0}),
    )
    .await;
    assert_eq!(status, 200, "{plain}");
    let (status, chat) = post(
        &server,
        "/v1/inference",
        json!({"prompt": "What is the capital of France?", "chat": true,
               "system": "Answer in one word.", "max_tokens": 12, "temperature": 0}),
    )
    .await;
    assert_eq!(status, 200, "{chat}");
    // The template adds its own tokens around the prompt and the model answers it.
    assert!(
        chat["prompt_tokens"].as_u64() > plain["prompt_tokens"].as_u64(),
        "{chat}"
    );
    assert!(chat["text"].as_str().unwrap().contains("Paris"), "{chat}");

    let (status, err) = post(
        &server,
        "/v1/inference",
        json!({"prompt": "x", "system": "y"}),
    )
    .await;
    assert_error(status, &err, 400, "invalid_request_error");
}
