//! lsp-edge against a scripted vps-infer, for what the real one cannot be made to do on
//! demand: answer 500, stall, die mid-stream, refuse FIM, report a model load. The
//! editor side is still a real LSP client on a real socket.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use cerebrum_tests::lsp_client::{inline_params, inline_text, LspEdge};
use serde_json::{json, Value};

/// What the scripted backend does with the next inference request.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Behaviour {
    /// Stream `return 42` and finish.
    Answer,
    Status500,
    /// Read the request and never answer.
    Stall,
    /// Send one token, then close the connection.
    DieMidStream,
    /// 400 for a request with a `suffix` (no FIM tokens), else answer.
    NoFim,
    /// `/health` says "loading" until it has been asked twice; only then answer.
    LoadingFirst,
    /// Send `return` and then nothing more, until the client goes away.
    FirstTokenThenStall,
}

#[derive(Default)]
struct Seen {
    inference_bodies: Vec<Value>,
    health_calls: usize,
    streams_dropped: usize,
}

#[derive(Clone)]
struct FakeBackend {
    addr: SocketAddr,
    behaviour: Arc<Mutex<Behaviour>>,
    seen: Arc<(Mutex<Seen>, Condvar)>,
}

impl FakeBackend {
    fn start(behaviour: Behaviour) -> FakeBackend {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let backend = FakeBackend {
            addr: listener.local_addr().unwrap(),
            behaviour: Arc::new(Mutex::new(behaviour)),
            seen: Arc::default(),
        };
        let server = backend.clone();
        cerebrum_tests::serve_connections(listener, move |stream| server.serve(stream));
        backend
    }

    fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    fn set(&self, behaviour: Behaviour) {
        *self.behaviour.lock().unwrap() = behaviour;
    }

    fn inference_bodies(&self) -> Vec<Value> {
        self.seen.0.lock().unwrap().inference_bodies.clone()
    }

    /// Waits for lsp-edge's first `/health` call (it asks for the default model at
    /// start), then counts from zero again.
    fn wait_for_the_start_probe(&self) {
        let (lock, signal) = &*self.seen;
        let mut seen = lock.lock().unwrap();
        while seen.health_calls == 0 {
            seen = signal.wait(seen).unwrap();
        }
        seen.health_calls = 0;
    }

    fn serve(&self, mut stream: TcpStream) {
        let Some((request_line, body)) = cerebrum_tests::read_http_request(&stream) else {
            return;
        };
        let (lock, signal) = &*self.seen;
        if request_line.starts_with("GET /health") {
            let calls = {
                let mut seen = lock.lock().unwrap();
                seen.health_calls += 1;
                signal.notify_all();
                seen.health_calls
            };
            let loading = *self.behaviour.lock().unwrap() == Behaviour::LoadingFirst && calls < 2;
            let status = if loading { "loading" } else { "ok" };
            let json = json!({"status": status, "model_loaded": null}).to_string();
            respond(&mut stream, "200 OK", "application/json", &json);
            return;
        }
        let body: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
        let has_suffix = body.get("suffix").is_some();
        lock.lock().unwrap().inference_bodies.push(body);
        let behaviour = *self.behaviour.lock().unwrap();
        match behaviour {
            Behaviour::Status500 => {
                let error =
                    json!({"error": {"code": 500, "type": "server_error", "message": "boom"}});
                respond(
                    &mut stream,
                    "500 Internal Server Error",
                    "application/json",
                    &error.to_string(),
                );
            }
            Behaviour::Stall => {
                // Hold the connection open without a byte; lsp-edge's timeout ends it.
                let _ = stream.read(&mut [0; 1]);
            }
            Behaviour::DieMidStream => {
                let _ = write!(
                    stream,
                    "HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\nconnection: close\r\n\r\n\
                     data: {{\"token\":\"ret\"}}\n\n"
                );
                let _ = stream.flush();
            }
            Behaviour::NoFim if has_suffix => {
                let error = json!({"error": {"code": 400, "type": "invalid_request_error",
                    "message": "model \"tiny\" has no fill-in-the-middle tokens, so `suffix` cannot be used with it"}});
                respond(
                    &mut stream,
                    "400 Bad Request",
                    "application/json",
                    &error.to_string(),
                );
            }
            Behaviour::LoadingFirst => {
                // Answer only once lsp-edge has seen "loading" and asked again.
                let mut seen = lock.lock().unwrap();
                while seen.health_calls < 2 {
                    seen = signal.wait(seen).unwrap();
                }
                drop(seen);
                stream_answer(&mut stream);
            }
            Behaviour::FirstTokenThenStall => {
                let _ = write!(
                    stream,
                    "HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\nconnection: close\r\n\r\n\
                     data: {{\"token\":\"return\"}}\n\n"
                );
                let _ = stream.flush();
                // Returns when lsp-edge drops the stream.
                let _ = stream.read(&mut [0; 1]);
                lock.lock().unwrap().streams_dropped += 1;
                signal.notify_all();
            }
            Behaviour::Answer | Behaviour::NoFim => stream_answer(&mut stream),
        }
    }
}

fn respond(stream: &mut TcpStream, status: &str, content_type: &str, body: &str) {
    let _ = write!(
        stream,
        "HTTP/1.1 {status}\r\ncontent-type: {content_type}\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    );
    let _ = stream.flush();
}

fn stream_answer(stream: &mut TcpStream) {
    let mut events = String::new();
    for token in ["return", " 42"] {
        events.push_str(&format!("data: {}\n\n", json!({ "token": token })));
    }
    let done = json!({"done": true, "text": "return 42", "prompt_tokens": 5, "cached_tokens": 0,
        "total_tokens": 2, "inference_time": 0.01, "tokens_per_second": 200.0, "stop_reason": "eos"});
    events.push_str(&format!("data: {done}\n\n"));
    let _ = write!(
        stream,
        "HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\nconnection: close\r\n\r\n{events}"
    );
    let _ = stream.flush();
}

const URI: &str = "file:///project/answer.py";
const TEXT: &str = "def answer():\n    \n";

#[test]
fn backend_faults_are_clear_errors_and_three_open_the_breaker() {
    let backend = FakeBackend::start(Behaviour::Status500);
    let config = "[backend]\nfirst_token_timeout_ms = 1000\ntotal_timeout_ms = 30000\n\
                  [breaker]\ncooldown_ms = 600000\nmax_cooldown_ms = 600000\n";
    let edge = LspEdge::start(&backend.url(), "key", config, &[]);
    let mut client = edge.client();
    client.initialize(json!({}), json!({}));
    client.did_open(URI, "python", 1, TEXT);
    let mut ask = |expect: &str| {
        let response = client.request(
            "textDocument/inlineCompletion",
            inline_params(URI, 1, 4, None),
        );
        assert_eq!(response.error_code(), -32803, "{:?}", response.outcome);
        let message = response.error_message();
        assert!(
            message.contains(expect),
            "{message:?} should say {expect:?}"
        );
    };

    ask("boom");
    backend.set(Behaviour::Stall);
    ask("no token within");
    backend.set(Behaviour::DieMidStream);
    ask("broke off");
    assert_eq!(backend.inference_bodies().len(), 3);

    // Open: refused at once, without a request to the backend.
    backend.set(Behaviour::Answer);
    ask("circuit breaker open");
    assert_eq!(
        backend.inference_bodies().len(),
        3,
        "the open breaker sent nothing"
    );
    let (_, message) = client.wait_for("the breaker's showMessage", |m| {
        m["method"] == "window/showMessage"
    });
    assert_eq!(message["params"]["type"], 2, "a warning: {message}");
    let text = message["params"]["message"].as_str().unwrap_or_default();
    assert!(
        text.contains("unavailable") && text.contains("broke off"),
        "{text}"
    );
}

#[test]
fn a_model_without_fim_tokens_gets_plain_prompts_after_one_refusal() {
    let backend = FakeBackend::start(Behaviour::NoFim);
    // The prompts are compared as the client's text: keep its trailing indentation
    // in them (lsp-edge leaves it out by default, see `heal_trailing_whitespace`).
    let config = "[completion]\nheal_trailing_whitespace = false\n";
    let edge = LspEdge::start(&backend.url(), "key", config, &[]);
    let mut client = edge.client();
    client.initialize(json!({}), json!({}));
    client.did_open(URI, "python", 1, TEXT);
    for _ in 0..2 {
        let response = client.request(
            "textDocument/inlineCompletion",
            inline_params(URI, 1, 4, None),
        );
        assert_eq!(inline_text(response.result()).as_deref(), Some("return 42"));
    }
    let bodies = backend.inference_bodies();
    assert_eq!(bodies.len(), 3, "FIM once, then plain twice: {bodies:?}");
    assert_eq!(bodies[0]["suffix"], "\n", "{}", bodies[0]);
    assert_eq!(bodies[0]["prompt"], "def answer():\n    ");
    for body in &bodies[1..] {
        assert!(body.get("suffix").is_none(), "{body}");
        assert!(body["prompt"]
            .as_str()
            .unwrap_or_default()
            .ends_with("def answer():\n    "));
        assert_eq!(body["stream"], true);
    }
}

#[test]
fn the_prompt_has_the_windows_of_the_model_lsp_edge_asks_for() {
    let backend = FakeBackend::start(Behaviour::Answer);
    let config = "[completion]\nheal_trailing_whitespace = false\n\
                  [context]\nwindow_step_lines = 1\n\
                  [context.models.narrow]\nprefix_max_lines = 2\nmin_chars_to_chunk = 0\n";
    let text: String = (0..30).map(|i| format!("x{i} = {i}\n")).collect();
    let mut prompts = Vec::new();
    for model in ["narrow", "other"] {
        let edge = LspEdge::start(
            &backend.url(),
            "key",
            config,
            &[("CEREBRUM_DEFAULT_MODEL", model)],
        );
        let mut client = edge.client();
        client.initialize(json!({}), json!({}));
        client.did_open(URI, "python", 1, &text);
        let response = client.request(
            "textDocument/inlineCompletion",
            inline_params(URI, 30, 0, None),
        );
        assert_eq!(inline_text(response.result()).as_deref(), Some("return 42"));
        let body = backend.inference_bodies().pop().unwrap();
        assert_eq!(body["model"], model, "{body}");
        prompts.push(body["prompt"].as_str().unwrap_or_default().to_owned());
    }
    assert_eq!(prompts[0], "x28 = 28\nx29 = 29\n");
    assert_eq!(
        prompts[1], text,
        "a model without windows of its own gets [context]'s"
    );
}

#[test]
fn a_loading_model_shows_as_work_done_progress() {
    let backend = FakeBackend::start(Behaviour::Answer);
    let config = "[backend]\nload_probe_after_ms = 0\n";
    let edge = LspEdge::start(&backend.url(), "key", config, &[]);
    backend.wait_for_the_start_probe();
    backend.set(Behaviour::LoadingFirst);
    let mut client = edge.client();
    client.initialize(json!({}), json!({"window": {"workDoneProgress": true}}));
    client.did_open(URI, "python", 1, TEXT);
    let response = client.request(
        "textDocument/inlineCompletion",
        inline_params(URI, 1, 4, None),
    );
    assert_eq!(inline_text(response.result()).as_deref(), Some("return 42"));

    let (_, create) = client.wait_for("window/workDoneProgress/create", |m| {
        m["method"] == "window/workDoneProgress/create"
    });
    let token = create["params"]["token"].clone();
    let (_, begin) = client.wait_for("the progress begin", |m| {
        m["method"] == "$/progress"
            && m["params"]["token"] == token
            && m["params"]["value"]["kind"] == "begin"
    });
    let message = begin["params"]["value"]["message"]
        .as_str()
        .unwrap_or_default();
    assert!(message.contains("loading"), "{begin}");
    client.wait_for("the progress end", |m| {
        m["method"] == "$/progress"
            && m["params"]["token"] == token
            && m["params"]["value"]["kind"] == "end"
    });
    assert!(
        backend.inference_bodies()[0].get("suffix").is_some(),
        "a model with FIM gets fill-in-the-middle requests"
    );
}

#[test]
fn completion_answers_within_its_budget_with_what_has_arrived() {
    let backend = FakeBackend::start(Behaviour::FirstTokenThenStall);
    let edge = LspEdge::start(&backend.url(), "key", "", &[]);
    let mut client = edge.client();
    client.initialize(json!({"completion": {"budget_ms": 500}}), json!({}));
    client.did_open(URI, "python", 1, TEXT);
    let response = client.request(
        "textDocument/completion",
        json!({"textDocument": {"uri": URI}, "position": {"line": 1, "character": 4}}),
    );
    let list = response.result();
    assert_eq!(list["isIncomplete"], true, "{list}");
    assert_eq!(list["items"][0]["textEdit"]["newText"], "return", "{list}");
    assert_eq!(list["items"][0]["label"], "return", "{list}");

    // The stream was dropped when the budget ran out, not left generating.
    let (lock, signal) = &*backend.seen;
    let seen = lock.lock().unwrap();
    let (seen, _) = signal
        .wait_timeout_while(seen, cerebrum_tests::lsp_client::WAIT, |seen| {
            seen.streams_dropped == 0
        })
        .unwrap();
    assert_eq!(seen.streams_dropped, 1);
}

#[test]
fn the_session_token_is_required_and_checked() {
    let backend = FakeBackend::start(Behaviour::Answer);
    let edge = LspEdge::start(
        &backend.url(),
        "key",
        "",
        &[("CEREBRUM_LSP_TOKEN", "s3cret-token")],
    );

    for (options, expected) in [
        (json!({}), "requires a session token"),
        (json!({"token": "wrong"}), "is wrong"),
        (json!({"token": "s3cret-tokeN"}), "is wrong"),
    ] {
        let mut client = edge.client();
        let response = client.request(
            "initialize",
            json!({"processId": null, "rootUri": null, "capabilities": {}, "initializationOptions": options}),
        );
        assert_eq!(response.error_code(), -32001, "{:?}", response.outcome);
        assert!(
            response.error_message().contains(expected),
            "{:?}",
            response.outcome
        );
        assert!(
            client.wait_closed(Duration::from_secs(60)),
            "a refused session is closed"
        );
    }

    let mut client = edge.client();
    client.initialize(json!({"token": "s3cret-token"}), json!({}));
    client.did_open(URI, "python", 1, TEXT);
    let response = client.request(
        "textDocument/inlineCompletion",
        inline_params(URI, 1, 4, None),
    );
    assert_eq!(inline_text(response.result()).as_deref(), Some("return 42"));
}

#[test]
fn a_non_loopback_listener_without_a_token_refuses_to_start() {
    let output = std::process::Command::new(cerebrum_tests::binary("lsp-edge"))
        .args(["serve", "--listen", "0.0.0.0:0", "--http", "127.0.0.1:0"])
        .env_remove("CEREBRUM_LSP_TOKEN")
        .output()
        .expect("run lsp-edge");
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("requires a session token"), "{stderr}");
}
