//! The router through `oneshot`, against a fake vps-infer on a loopback socket (the
//! real one, with the real model, is exercised in `tests/tests/http_api.rs`).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Body;
use axum::http::{header, Request, StatusCode};
use axum::response::sse::{Event, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use futures::StreamExt;
use serde_json::{json, Value};
use tower::ServiceExt;

use super::*;
use crate::config::Config;

/// What the fake vps-infer does and has seen.
#[derive(Default)]
struct Fake {
    tokens: Vec<&'static str>,
    /// Delay before each token (a slow model, for disconnects).
    delay: Duration,
    /// Refuse FIM requests as a model without FIM tokens would.
    no_fim: bool,
    requests: Mutex<Vec<Value>>,
    /// Streams dropped before their end.
    cancelled: AtomicUsize,
}

struct DropGuard(Arc<Fake>, bool);

impl Drop for DropGuard {
    fn drop(&mut self) {
        if !self.1 {
            self.0.cancelled.fetch_add(1, Ordering::SeqCst);
        }
    }
}

async fn fake_inference(
    axum::extract::State(fake): axum::extract::State<Arc<Fake>>,
    Json(body): Json<Value>,
) -> Response {
    fake.requests.lock().unwrap().push(body.clone());
    if fake.no_fim && body.get("suffix").is_some() {
        let envelope = json!({"error": {"code": 400, "type": "invalid_request_error",
            "message": "model fake has no FIM tokens"}});
        return (StatusCode::BAD_REQUEST, Json(envelope)).into_response();
    }
    let tokens: Vec<String> = fake.tokens.iter().map(|t| t.to_string()).collect();
    let state = (fake.clone(), tokens, 0usize, DropGuard(fake.clone(), false));
    let events = futures::stream::unfold(Some(state), |state| async move {
        let (fake, tokens, i, mut guard) = state?;
        tokio::time::sleep(fake.delay).await;
        if i < tokens.len() {
            let event = Event::default().data(json!({ "token": tokens[i] }).to_string());
            return Some((
                Ok::<_, std::convert::Infallible>(event),
                Some((fake, tokens, i + 1, guard)),
            ));
        }
        guard.1 = true;
        let done = json!({"done": true, "text": tokens.concat(), "model": "fake",
            "prompt_tokens": 7, "cached_tokens": 0, "total_tokens": tokens.len(),
            "inference_time": 0.01, "tokens_per_second": 123.0, "stop_reason": "eos"});
        Some((Ok(Event::default().data(done.to_string())), None))
    });
    Sse::new(events).into_response()
}

async fn fake_health() -> Json<Value> {
    Json(json!({"status": "ok", "model_loaded": "fake", "default_model": "fake"}))
}

/// Starts the fake on a free loopback port; returns it and its URL.
async fn start_fake(fake: Fake) -> (Arc<Fake>, String) {
    let fake = Arc::new(fake);
    let router = Router::new()
        .route("/v1/inference", post(fake_inference))
        .route("/health", get(fake_health))
        .with_state(fake.clone());
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, router).await.unwrap() });
    (fake, url)
}

fn hello_fake() -> Fake {
    Fake {
        tokens: vec!["\n    ", "print(", "\"hello\")"],
        ..Fake::default()
    }
}

fn state_for(url: &str, edit: impl FnOnce(&mut Config)) -> HttpState {
    let mut config = Config::default();
    config.backend.url = url.to_owned();
    edit(&mut config);
    HttpState::new(Edge::new(config).unwrap())
}

async fn call(state: &HttpState, request: Request<Body>) -> Response {
    app(state.clone()).oneshot(request).await.unwrap()
}

fn post_json(path: &str, body: impl Into<Body>) -> Request<Body> {
    Request::post(path).body(body.into()).unwrap()
}

async fn json_of(response: Response) -> Value {
    let bytes = axum::body::to_bytes(response.into_body(), usize::MAX)
        .await
        .unwrap();
    serde_json::from_slice(&bytes)
        .unwrap_or_else(|err| panic!("not JSON ({err}): {}", String::from_utf8_lossy(&bytes)))
}

fn sse_data(body: &str) -> Vec<Value> {
    body.lines()
        .filter_map(|line| line.strip_prefix("data:"))
        .map(|data| serde_json::from_str(data.trim()).unwrap())
        .collect()
}

fn assert_envelope(body: &Value, code: u16, kind: &str) {
    assert_eq!(body["error"]["code"], code, "{body}");
    assert_eq!(body["error"]["type"], kind, "{body}");
    assert!(body["error"]["message"]
        .as_str()
        .is_some_and(|m| !m.is_empty()));
}

const HELLO: &str = r#"{"prompt": "def hello():", "language": "python", "temperature": 0}"#;

#[tokio::test]
async fn http_complete_answers_json_with_text_chunking_and_timings() {
    let (fake, url) = start_fake(hello_fake()).await;
    let state = state_for(&url, |_| {});
    let response = call(&state, post_json("/v1/complete", HELLO)).await;
    assert_eq!(response.status(), StatusCode::OK);
    let body = json_of(response).await;
    assert_eq!(body["text"], "\n    print(\"hello\")");
    assert_eq!(body["cached"], false);
    assert_eq!(body["stop_reason"], "eos");
    let chunking = &body["chunking"];
    assert_eq!(chunking["chunked"], false);
    assert_eq!(chunking["chars_before"], 12);
    assert_eq!(chunking["chars_after"], 12);
    for field in [
        "edge_overhead_ms",
        "backend_ms",
        "total_ms",
        "tokens_per_second",
    ] {
        assert!(body["timings"][field].is_number(), "{field}: {body}");
    }
    let sent = fake.requests.lock().unwrap()[0].clone();
    assert_eq!(sent["prompt"], "def hello():");
    assert_eq!(sent["temperature"], 0.0);
    assert_eq!(sent["stream"], true);
}

#[tokio::test]
async fn http_complete_streams_token_events_then_done() {
    let (_fake, url) = start_fake(hello_fake()).await;
    let state = state_for(&url, |_| {});
    let body = r#"{"prompt": "def hello():", "language": "python", "stream": true}"#;
    let response = call(&state, post_json("/v1/complete", body)).await;
    assert_eq!(response.status(), StatusCode::OK);
    let content_type = response.headers()[header::CONTENT_TYPE].to_str().unwrap();
    assert!(
        content_type.starts_with("text/event-stream"),
        "{content_type}"
    );
    let bytes = axum::body::to_bytes(response.into_body(), usize::MAX)
        .await
        .unwrap();
    let events = sse_data(&String::from_utf8_lossy(&bytes));
    let tokens: Vec<&str> = events.iter().filter_map(|e| e["token"].as_str()).collect();
    assert_eq!(tokens, ["\n    ", "print(", "\"hello\")"]);
    let done = events.last().unwrap();
    assert_eq!(done["done"], true);
    assert_eq!(done["text"], "\n    print(\"hello\")");
    assert!(done["chunking"]["chunks"].is_number(), "{done}");
    assert!(done["timings"]["edge_overhead_ms"].is_number(), "{done}");
    assert_eq!(
        state.edge().limiter.in_flight(),
        0,
        "the slot is freed at the end"
    );
}

#[tokio::test]
async fn http_repeated_temperature_zero_request_is_a_cache_hit() {
    let (fake, url) = start_fake(hello_fake()).await;
    let state = state_for(&url, |_| {});
    let first = json_of(call(&state, post_json("/v1/complete", HELLO)).await).await;
    let second = json_of(call(&state, post_json("/v1/complete", HELLO)).await).await;
    assert_eq!(first["cached"], false);
    assert_eq!(second["cached"], true);
    assert_eq!(first["text"], second["text"]);
    assert_eq!(fake.requests.lock().unwrap().len(), 1);
    // Another temperature is not cached.
    let warm = r#"{"prompt": "def hello():", "temperature": 0.7}"#;
    json_of(call(&state, post_json("/v1/complete", warm)).await).await;
    json_of(call(&state, post_json("/v1/complete", warm)).await).await;
    assert_eq!(fake.requests.lock().unwrap().len(), 3);
    let stats = json_of(
        call(
            &state,
            Request::get("/v1/stats").body(Body::empty()).unwrap(),
        )
        .await,
    )
    .await;
    assert_eq!(stats["cache"]["hits"], 1, "{stats}");
    assert_eq!(stats["cache"]["entries"], 1, "{stats}");
    assert_eq!(stats["requests"]["ok"], 4, "{stats}");
}

#[tokio::test]
async fn http_body_over_16_kb_is_413_with_the_envelope() {
    let state = state_for("http://127.0.0.1:9", |_| {});
    let prompt = "x".repeat(17 * 1024);
    let body = json!({ "prompt": prompt }).to_string();
    let response = call(&state, post_json("/v1/complete", body)).await;
    assert_eq!(response.status(), StatusCode::PAYLOAD_TOO_LARGE);
    assert_envelope(&json_of(response).await, 413, "payload_too_large");
}

#[tokio::test]
async fn http_malformed_json_and_wrong_types_get_400_naming_the_field() {
    let state = state_for("http://127.0.0.1:9", |_| {});
    for (body, needle) in [
        (r#"{"prompt": 5}"#, "prompt:"),
        (r#"{"prompt": "x", "max_tokens": "many"}"#, "max_tokens:"),
        (r#"{"prompt": "x", "max_tokens": 0}"#, "max_tokens:"),
        (r#"{"prompt": "x", "temperature": 3}"#, "temperature:"),
        (r#"{"prompt": "x", "stream": "yes"}"#, "stream:"),
        (r#"{"prompt": "x", "tempreature": 0}"#, "tempreature"),
        (r#"{"language": "python"}"#, "prompt"),
        (r#"{"prompt": ""}"#, "prompt:"),
        ("not json", "not valid JSON"),
        ("", "body is empty"),
        (r#"{"prompt": "x""#, "not valid JSON (EOF while parsing"),
        (
            r#"[{"prompt": "x"}]"#,
            "body is an array; expected a JSON object",
        ),
    ] {
        let response = call(&state, post_json("/v1/complete", body)).await;
        assert_eq!(response.status(), StatusCode::BAD_REQUEST, "{body}");
        let answer = json_of(response).await;
        assert_envelope(&answer, 400, "invalid_request_error");
        let message = answer["error"]["message"].as_str().unwrap();
        assert!(message.contains(needle), "{body}: {message}");
    }
    assert_eq!(state.stats().invalid.get(), 12);
}

#[tokio::test]
async fn http_sheds_past_the_shared_limit_with_retry_after() {
    let (fake, url) = start_fake(hello_fake()).await;
    let state = state_for(&url, |_| {});
    // The LSP side holds both slots.
    let _a = state.edge().limiter.try_acquire().unwrap();
    let _b = state.edge().limiter.try_acquire().unwrap();
    let response = call(&state, post_json("/v1/complete", HELLO)).await;
    assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(response.headers()[header::RETRY_AFTER], "1");
    let body = json_of(response).await;
    assert_envelope(&body, 503, "unavailable_error");
    assert!(
        body["error"]["message"].as_str().unwrap().contains("shed"),
        "{body}"
    );
    assert!(fake.requests.lock().unwrap().is_empty());
    assert_eq!(state.stats().shed.get(), 1);
}

#[tokio::test]
async fn http_breaker_open_refuses_at_once_with_the_reason() {
    // Nothing listens on this port: each request fails to connect.
    let dead = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", dead.local_addr().unwrap());
    drop(dead);
    let state = state_for(&url, |_| {});
    let body = r#"{"prompt": "def f():", "temperature": 0.5}"#;
    for _ in 0..3 {
        let response = call(&state, post_json("/v1/complete", body)).await;
        assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
        let answer = json_of(response).await;
        assert!(
            answer["error"]["message"]
                .as_str()
                .unwrap()
                .contains("cannot reach"),
            "{answer}"
        );
    }
    let response = call(&state, post_json("/v1/complete", body)).await;
    assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
    let retry: u64 = response.headers()[header::RETRY_AFTER]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=10).contains(&retry), "{retry}");
    let answer = json_of(response).await;
    let message = answer["error"]["message"].as_str().unwrap();
    assert!(message.contains("circuit breaker open"), "{message}");
    assert!(
        message.contains("cannot reach"),
        "the reason is given: {message}"
    );

    let health =
        json_of(call(&state, Request::get("/health").body(Body::empty()).unwrap()).await).await;
    assert_eq!(health["status"], "degraded", "{health}");
    assert_eq!(health["backend"]["reachable"], false, "{health}");
    assert_eq!(health["backend"]["breaker"]["state"], "open", "{health}");
    let stats = json_of(
        call(
            &state,
            Request::get("/v1/stats").body(Body::empty()).unwrap(),
        )
        .await,
    )
    .await;
    assert_eq!(stats["requests"]["breaker_refused"], 1, "{stats}");
    assert_eq!(stats["requests"]["failed"], 3, "{stats}");
    assert_eq!(stats["breaker"]["state"], "open", "{stats}");
}

#[tokio::test]
async fn http_batch_answers_in_order_with_per_item_errors() {
    let (fake, url) = start_fake(hello_fake()).await;
    let state = state_for(&url, |_| {});
    let body = json!({"requests": [
        {"prompt": "def a():", "temperature": 0.3},
        {"prompt": "def b():", "max_tokens": 0},
        {"prompt": 7},
        {"prompt": "def c():", "temperature": 0.3},
    ]});
    let response = call(&state, post_json("/v1/complete/batch", body.to_string())).await;
    assert_eq!(response.status(), StatusCode::OK);
    let answer = json_of(response).await;
    let results = answer["results"].as_array().unwrap();
    assert_eq!(results.len(), 4);
    assert_eq!(results[0]["text"], "\n    print(\"hello\")");
    assert_envelope(&results[1], 400, "invalid_request_error");
    assert!(results[1]["error"]["message"]
        .as_str()
        .unwrap()
        .starts_with("requests[1].max_tokens"));
    assert!(results[2]["error"]["message"]
        .as_str()
        .unwrap()
        .starts_with("requests[2].prompt"));
    assert_eq!(results[3]["text"], "\n    print(\"hello\")");
    let prompts: Vec<Value> = fake
        .requests
        .lock()
        .unwrap()
        .iter()
        .map(|r| r["prompt"].clone())
        .collect();
    assert_eq!(prompts, [json!("def a():"), json!("def c():")]);
}

#[tokio::test]
async fn http_token_is_required_when_configured() {
    let (_fake, url) = start_fake(hello_fake()).await;
    let state = state_for(&url, |config| {
        config.http.token = Some(Secret::new("s3cret"))
    });
    let response = call(&state, post_json("/v1/complete", HELLO)).await;
    assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
    assert_envelope(&json_of(response).await, 401, "authentication_error");
    let wrong = Request::post("/v1/complete")
        .header(header::AUTHORIZATION, "Bearer nope")
        .body(Body::from(HELLO))
        .unwrap();
    assert_eq!(call(&state, wrong).await.status(), StatusCode::UNAUTHORIZED);
    let right = Request::post("/v1/complete")
        .header(header::AUTHORIZATION, "Bearer s3cret")
        .body(Body::from(HELLO))
        .unwrap();
    assert_eq!(call(&state, right).await.status(), StatusCode::OK);
    let health = Request::get("/health").body(Body::empty()).unwrap();
    assert_eq!(
        call(&state, health).await.status(),
        StatusCode::OK,
        "health needs no token"
    );
    let metrics = Request::get("/metrics").body(Body::empty()).unwrap();
    assert_eq!(
        call(&state, metrics).await.status(),
        StatusCode::UNAUTHORIZED
    );
}

#[tokio::test]
async fn http_dropped_stream_cancels_the_backend_and_frees_the_slot() {
    let (fake, url) = start_fake(Fake {
        tokens: vec!["tok"; 10_000],
        delay: Duration::from_millis(5),
        ..Fake::default()
    })
    .await;
    let state = state_for(&url, |_| {});
    let body = r#"{"prompt": "count forever", "stream": true, "temperature": 0.5}"#;
    let response = call(&state, post_json("/v1/complete", body)).await;
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(
        state.edge().limiter.in_flight(),
        1,
        "the slot is held while streaming"
    );
    let mut data = response.into_body().into_data_stream();
    let first = data.next().await.unwrap().unwrap();
    assert!(String::from_utf8_lossy(&first).contains("\"token\""));
    drop(data);
    // The backend sees its stream dropped, the slot is freed, and the cancel counted.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while fake.cancelled.load(Ordering::SeqCst) == 0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the backend stream was never dropped"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(state.edge().limiter.in_flight(), 0);
    assert_eq!(state.stats().cancelled.get(), 1);
}

#[tokio::test]
async fn http_fim_refusal_falls_back_to_a_plain_prompt() {
    let (fake, url) = start_fake(Fake {
        no_fim: true,
        ..hello_fake()
    })
    .await;
    let state = state_for(&url, |_| {});
    let body = r#"{"prompt": "def add(a, b):\n    ", "suffix": "\n\nprint(add(1, 2))\n", "language": "py"}"#;
    let first = json_of(call(&state, post_json("/v1/complete", body)).await).await;
    assert_eq!(first["fim"], false, "{first}");
    assert_eq!(first["text"], "\n    print(\"hello\")");
    // The refusal is remembered: the next request goes out plain at once.
    json_of(call(&state, post_json("/v1/complete", body)).await).await;
    let sent = fake.requests.lock().unwrap();
    assert_eq!(sent.len(), 3);
    assert!(sent[0].get("suffix").is_some());
    assert!(sent[1].get("suffix").is_none() && sent[2].get("suffix").is_none());
}

#[tokio::test]
async fn http_stats_and_metrics_report_the_same_counters() {
    let (_fake, url) = start_fake(hello_fake()).await;
    let state = state_for(&url, |_| {});
    call(&state, post_json("/v1/complete", HELLO)).await;
    let stats = json_of(
        call(
            &state,
            Request::get("/v1/stats").body(Body::empty()).unwrap(),
        )
        .await,
    )
    .await;
    assert_eq!(stats["requests"]["ok"], 1, "{stats}");
    assert_eq!(stats["breaker"]["state"], "closed");
    assert_eq!(stats["max_in_flight"], 2);
    for field in ["p50_ms", "p95_ms"] {
        assert!(stats["edge_overhead_ms"][field].is_number(), "{stats}");
        assert!(stats["backend_ms"][field].is_number(), "{stats}");
    }
    let response = call(
        &state,
        Request::get("/metrics").body(Body::empty()).unwrap(),
    )
    .await;
    let content_type = response.headers()[header::CONTENT_TYPE]
        .to_str()
        .unwrap()
        .to_owned();
    assert!(
        content_type.starts_with("text/plain; version=0.0.4"),
        "{content_type}"
    );
    let bytes = axum::body::to_bytes(response.into_body(), usize::MAX)
        .await
        .unwrap();
    let text = String::from_utf8_lossy(&bytes);
    assert!(
        text.contains("cerebrum_edge_http_requests_total{outcome=\"ok\"} 1"),
        "{text}"
    );
}

#[tokio::test]
async fn http_unknown_paths_and_methods_get_the_envelope() {
    let state = state_for("http://127.0.0.1:9", |_| {});
    let response = call(
        &state,
        Request::get("/v2/nothing").body(Body::empty()).unwrap(),
    )
    .await;
    assert_eq!(response.status(), StatusCode::NOT_FOUND);
    assert_envelope(&json_of(response).await, 404, "not_found_error");
    let response = call(
        &state,
        Request::get("/v1/complete").body(Body::empty()).unwrap(),
    )
    .await;
    assert_eq!(response.status(), StatusCode::METHOD_NOT_ALLOWED);
    assert_envelope(&json_of(response).await, 405, "method_not_allowed_error");
}

const SYNC_FETCH: &str = "import time\n\n\ndef fetch(url):\n    time.sleep(1)\n    return url\n";

#[tokio::test]
async fn http_refactor_answers_the_validated_code() {
    let (fake, url) = start_fake(Fake {
        tokens: vec![
            "async def fetch(url):\n",
            "    await asyncio.sleep(1)\n",
            "    return url\n",
        ],
        ..Fake::default()
    })
    .await;
    let state = state_for(&url, |_| {});
    let body = json!({"code": SYNC_FETCH, "language": "python"});
    let response = call(&state, post_json("/v1/refactor", body.to_string())).await;
    assert_eq!(response.status(), StatusCode::OK);
    let answer = json_of(response).await;
    let code = answer["code"].as_str().unwrap();
    assert!(code.contains("async def fetch(url):"), "{answer}");
    assert_eq!(answer["attempts"], 1, "{answer}");
    let sent = fake.requests.lock().unwrap()[0].clone();
    assert!(
        sent["prompt"].as_str().unwrap().contains("async/await"),
        "{sent}"
    );
    assert_eq!(state.stats().ok.get(), 1);
}

#[tokio::test]
async fn http_refactor_rejected_twice_is_422_saying_why() {
    let (fake, url) = start_fake(Fake {
        tokens: vec!["def fetch(url):\n", "    return url\n"],
        ..Fake::default()
    })
    .await;
    let state = state_for(&url, |_| {});
    let body = json!({"code": SYNC_FETCH, "language": "py"});
    let response = call(&state, post_json("/v1/refactor", body.to_string())).await;
    assert_eq!(response.status(), StatusCode::UNPROCESSABLE_ENTITY);
    let answer = json_of(response).await;
    assert_envelope(&answer, 422, "validation_error");
    let message = answer["error"]["message"].as_str().unwrap();
    assert!(message.contains("nothing was changed"), "{message}");
    let sent = fake.requests.lock().unwrap();
    assert_eq!(sent.len(), 2, "one retry");
    assert_eq!(sent[1]["temperature"], 0.0, "the retry is greedy");
}

#[tokio::test]
async fn http_refactor_refuses_bad_input_with_400() {
    let state = state_for("http://127.0.0.1:9", |_| {});
    for (body, needle) in [
        (
            json!({"code": SYNC_FETCH, "language": "cobol"}),
            "language:",
        ),
        (json!({"code": "  ", "language": "python"}), "code:"),
        (json!({"code": SYNC_FETCH}), "language"),
        (
            json!({"code": SYNC_FETCH, "language": "python", "instruction": 3}),
            "instruction:",
        ),
    ] {
        let response = call(&state, post_json("/v1/refactor", body.to_string())).await;
        assert_eq!(response.status(), StatusCode::BAD_REQUEST, "{body}");
        let answer = json_of(response).await;
        assert_envelope(&answer, 400, "invalid_request_error");
        let message = answer["error"]["message"].as_str().unwrap();
        assert!(message.contains(needle), "{body}: {message}");
    }
}

mod properties {
    use proptest::prelude::*;

    use super::*;

    /// Bodies near the real ones: JSON fragments, random bytes, or a valid body
    /// with a few bytes overwritten.
    fn body() -> impl Strategy<Value = Vec<u8>> {
        let valid = r#"{"prompt": "def f(x):\n    ", "language": "python", "max_tokens": 4, "requests": [{"prompt": "x"}]}"#;
        prop_oneof![
            prop::collection::vec(any::<u8>(), 0..200),
            "[\\[\\]{}\":,a-z0-9 .-]{0,80}".prop_map(String::into_bytes),
            prop::collection::vec((0usize..200, any::<u8>()), 1..6).prop_map(move |changes| {
                let mut bytes = valid.as_bytes().to_vec();
                for (at, byte) in changes {
                    let at = at % bytes.len();
                    bytes[at] = byte;
                }
                bytes
            }),
        ]
    }

    proptest! {
        #![proptest_config(crate::test_support::proptest_config(128))]

        /// Whatever the body, every endpoint answers with the envelope and a status
        /// below 500 (the backend is unreachable, so a body that passes validation
        /// gets 503), and never panics.
        #[test]
        fn http_random_bodies_get_an_envelope_never_a_panic(
            body in body(),
            path in prop::sample::select(vec!["/v1/complete", "/v1/complete/batch", "/v1/refactor"]),
        ) {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime");
            let (status, answer) = runtime.block_on(async {
                let state = state_for("http://127.0.0.1:9", |config| {
                    config.backend.connect_timeout_ms = 200;
                });
                let response = call(&state, post_json(path, body)).await;
                let status = response.status();
                (status, json_of(response).await)
            });
            prop_assert!(
                status.is_client_error() || status == StatusCode::SERVICE_UNAVAILABLE
                    || status == StatusCode::OK,
                "{} {}", status, answer
            );
            if status != StatusCode::OK {
                prop_assert_eq!(&answer["error"]["code"], &json!(status.as_u16()));
                prop_assert!(answer["error"]["message"].as_str().is_some_and(|m| !m.is_empty()));
            }
        }
    }
}

/// A model named "narrow" whose prompts keep two lines before the cursor.
fn with_a_narrow_model(config: &mut Config) {
    config.context.window_step_lines = 1;
    let narrow = cerebrum_context::ModelWindows {
        prefix_max_lines: Some(2),
        min_chars_to_chunk: Some(0),
        ..Default::default()
    };
    config.context.models.insert("narrow".into(), narrow);
}

#[tokio::test]
async fn http_prompt_windows_follow_the_model() {
    let (fake, url) = start_fake(hello_fake()).await;
    let state = state_for(&url, with_a_narrow_model);
    let prompt: String = (0..200).map(|i| format!("x{i} = {i}\n")).collect();
    let request = |model: Option<&str>| {
        let mut body = json!({"prompt": prompt, "suffix": "\n", "language": "python",
            "temperature": 0, "max_tokens": 4});
        if let Some(model) = model {
            body["model"] = json!(model);
        }
        post_json("/v1/complete", body.to_string())
    };
    for model in [None, Some("narrow"), Some("other")] {
        let response = call(&state, request(model)).await;
        assert_eq!(response.status(), StatusCode::OK, "{model:?}");
    }
    let sent: Vec<String> = (fake.requests.lock().unwrap().iter())
        .map(|body| body["prompt"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(sent[0], prompt);
    assert_eq!(sent[1], "x198 = 198\nx199 = 199\n");
    assert_eq!(sent[2], prompt);

    // The configured completion model picks the windows when the request names none.
    let (fake, url) = start_fake(hello_fake()).await;
    let state = state_for(&url, |config| {
        with_a_narrow_model(config);
        config.models.completion = Some("narrow".into());
    });
    call(&state, request(None)).await;
    let sent = fake.requests.lock().unwrap()[0].clone();
    assert_eq!(sent["prompt"], "x198 = 198\nx199 = 199\n");
    assert_eq!(sent["model"], "narrow");
}

#[tokio::test]
async fn http_prompt_windows_follow_the_backends_default_model_once_known() {
    let narrow_fake = |config: &mut Config| {
        with_a_narrow_model(config);
        let narrow = config.context.models.remove("narrow").unwrap();
        config.context.models.insert("fake".into(), narrow);
    };
    let prompt = |n: usize| -> String { (0..200).map(|i| format!("x{i} = {}\n", i * n)).collect() };
    let request = |text: &str| {
        let body = json!({"prompt": text, "suffix": "\n", "language": "python",
            "temperature": 0, "max_tokens": 4});
        post_json("/v1/complete", body.to_string())
    };

    // Learnt from the first answer (its final event names the model).
    let (fake, url) = start_fake(hello_fake()).await;
    let state = state_for(&url, narrow_fake);
    for n in [1, 2] {
        assert_eq!(
            call(&state, request(&prompt(n))).await.status(),
            StatusCode::OK
        );
    }
    let sent: Vec<Value> = fake.requests.lock().unwrap().clone();
    assert_eq!(
        sent[0]["prompt"],
        prompt(1),
        "not known before the first answer"
    );
    assert_eq!(sent[1]["prompt"], "x198 = 396\nx199 = 398\n");
    assert!(
        sent[1].get("model").is_none(),
        "the choice stays vps-infer's: {}",
        sent[1]
    );

    // Learnt from /health, as `serve` asks at start.
    let (fake, url) = start_fake(hello_fake()).await;
    let mut config = Config::default();
    config.backend.url = url;
    narrow_fake(&mut config);
    let edge = Edge::new(config).unwrap();
    edge.backends.first().client.learn_default_model().await;
    let state = HttpState::new(edge);
    call(&state, request(&prompt(1))).await;
    let sent = fake.requests.lock().unwrap()[0].clone();
    assert_eq!(sent["prompt"], "x198 = 198\nx199 = 199\n");
}
