//! What probing both services as an attacker and a careless client found (issue 12),
//! one test per failure, named after it, so that none can come back. Real binaries
//! over real sockets; a scripted vps-infer only where a fault must be injected (a
//! stream that stalls after its first token, an answer at a chosen moment).

use std::io::{BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::Command;
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use cerebrum_tests::lsp_client::{inline_params, read_frame, write_frame, LspEdge, WAIT};
use cerebrum_tests::{
    assert_error, binary, free_port, model_path, Service, TempDir, VpsInfer, TEST_API_KEY,
};
use serde_json::{json, Value};

// ---------------------------------------------------------------------------------
// Helpers: raw HTTP, a scripted backend, an lsp-edge with a known HTTP port.

/// Sends `request` (a whole HTTP/1.1 request) and reads the answer to the end.
fn http_raw(addr: SocketAddr, request: &[u8]) -> (u16, String) {
    let mut stream = TcpStream::connect(addr).expect("connect");
    stream.set_read_timeout(Some(WAIT)).ok();
    stream.write_all(request).expect("send the request");
    let mut answer = Vec::new();
    let _ = stream.read_to_end(&mut answer);
    let answer = String::from_utf8_lossy(&answer).into_owned();
    let status = answer
        .split_whitespace()
        .nth(1)
        .and_then(|code| code.parse().ok())
        .unwrap_or(0);
    let body = answer
        .split_once("\r\n\r\n")
        .map(|(_, body)| body.to_owned())
        .unwrap_or_default();
    (status, body)
}

/// A request with `Connection: close`, the body's length and any extra headers.
fn request(method: &str, path: &str, headers: &[(&str, &[u8])], body: &[u8]) -> Vec<u8> {
    let mut out = format!(
        "{method} {path} HTTP/1.1\r\nHost: test\r\nConnection: close\r\nContent-Length: {}\r\n",
        body.len()
    )
    .into_bytes();
    for (name, value) in headers {
        out.extend_from_slice(name.as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value);
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"\r\n");
    out.extend_from_slice(body);
    out
}

fn json_of(body: &str) -> Value {
    serde_json::from_str(body).unwrap_or_else(|e| panic!("not JSON ({e}): {body:?}"))
}

/// Whether the peer closes `stream` (EOF or reset) before `WAIT` passes, reading and
/// discarding whatever it sends first.
fn closed_by_peer(stream: &mut TcpStream) -> bool {
    stream.set_read_timeout(Some(WAIT)).ok();
    let mut buffer = [0u8; 4096];
    loop {
        match stream.read(&mut buffer) {
            Ok(0) => return true,
            Ok(_) => continue,
            Err(err)
                if matches!(
                    err.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                return false
            }
            Err(_) => return true,
        }
    }
}

/// Open file descriptors of a process.
fn descriptors(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, |dir| dir.count())
}

/// What the scripted backend does with an inference request.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Behaviour {
    /// Send one token, then nothing until the client goes away.
    FirstTokenThenStall,
    /// Stream this text as tokens, then `done`.
    Answer(&'static str),
}

#[derive(Default)]
struct Seen {
    requests: usize,
    streams_dropped: usize,
}

/// A scripted vps-infer on a free loopback port.
#[derive(Clone)]
struct FakeBackend {
    addr: SocketAddr,
    behaviour: Behaviour,
    seen: Arc<(Mutex<Seen>, Condvar)>,
}

impl FakeBackend {
    fn start(behaviour: Behaviour) -> FakeBackend {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let backend = FakeBackend {
            addr: listener.local_addr().expect("local addr"),
            behaviour,
            seen: Arc::default(),
        };
        let server = backend.clone();
        cerebrum_tests::serve_connections(listener, move |stream| server.serve(stream));
        backend
    }

    fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Waits until `done` holds for what the backend has seen; `false` after `WAIT`.
    fn wait(&self, done: impl Fn(&Seen) -> bool) -> bool {
        let (lock, signal) = &*self.seen;
        let deadline = Instant::now() + WAIT;
        let mut seen = lock.lock().unwrap_or_else(|e| e.into_inner());
        while !done(&seen) {
            let now = Instant::now();
            if now >= deadline {
                return false;
            }
            seen = signal
                .wait_timeout(seen, deadline - now)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
        true
    }

    fn serve(&self, mut stream: TcpStream) {
        let Some((line, _body)) = cerebrum_tests::read_http_request(&stream) else {
            return;
        };
        let is_health = line.starts_with("GET /health");
        if is_health {
            let json = json!({"status": "ok", "model_loaded": null}).to_string();
            let _ = write!(
                stream,
                "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{json}",
                json.len()
            );
            return;
        }
        let (lock, signal) = &*self.seen;
        lock.lock().unwrap_or_else(|e| e.into_inner()).requests += 1;
        signal.notify_all();
        let _ = write!(
            stream,
            "HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\nconnection: close\r\n\r\n"
        );
        match self.behaviour {
            Behaviour::FirstTokenThenStall => {
                let _ = write!(stream, "data: {}\n\n", json!({"token": "return"}));
                let _ = stream.flush();
                // Returns when lsp-edge drops the stream.
                let _ = stream.read(&mut [0; 1]);
                lock.lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .streams_dropped += 1;
                signal.notify_all();
            }
            Behaviour::Answer(text) => {
                let mut events = String::new();
                for token in text.split_inclusive('\n') {
                    events.push_str(&format!("data: {}\n\n", json!({ "token": token })));
                }
                let done = json!({"done": true, "text": text, "prompt_tokens": 5,
                    "cached_tokens": 0, "total_tokens": 9, "inference_time": 0.01,
                    "tokens_per_second": 200.0, "stop_reason": "stop"});
                events.push_str(&format!("data: {done}\n\n"));
                let _ = stream.write_all(events.as_bytes());
                let _ = stream.flush();
            }
        }
    }
}

/// `lsp-edge serve` with both ports known.
struct Edge {
    service: Service,
    lsp: SocketAddr,
    http: SocketAddr,
    _dir: TempDir,
}

impl Edge {
    fn start(backend_url: &str, config: &str, envs: &[(&str, &str)]) -> Edge {
        let lsp: SocketAddr = ([127, 0, 0, 1], free_port()).into();
        let http: SocketAddr = ([127, 0, 0, 1], free_port()).into();
        let dir = TempDir::new("lsp-edge-robustness");
        let path = dir.path().join("lsp-edge.toml");
        std::fs::write(&path, config).expect("write config");
        let mut cmd = Command::new(binary("lsp-edge"));
        cmd.arg("serve")
            .arg("--config")
            .arg(&path)
            .args(["--listen", &lsp.to_string(), "--http", &http.to_string()])
            .args(["--backend", backend_url])
            .env("CEREBRUM_API_KEY", TEST_API_KEY)
            .env_remove("CEREBRUM_LSP_TOKEN")
            .env("RUST_LOG", "info,lsp_edge=debug");
        for (key, value) in envs {
            cmd.env(key, value);
        }
        // The LSP listener is bound before the HTTP one: waiting for HTTP is enough.
        let service = Service::spawn("lsp-edge", cmd, http);
        Edge {
            service,
            lsp,
            http,
            _dir: dir,
        }
    }
}

/// Writes raw bytes to the LSP port and reads every frame until the server closes.
fn lsp_raw(addr: SocketAddr, bytes: &[u8]) -> (Vec<Value>, bool) {
    let stream = TcpStream::connect(addr).expect("connect");
    stream.set_read_timeout(Some(WAIT)).ok();
    let mut writer = stream.try_clone().expect("clone");
    // The server may close while we are still writing: that is the point.
    let bytes = bytes.to_vec();
    let sender = std::thread::spawn(move || {
        for chunk in bytes.chunks(64 * 1024) {
            if writer.write_all(chunk).is_err() {
                break;
            }
        }
    });
    let mut reader = BufReader::new(stream);
    let mut frames = Vec::new();
    while let Some(frame) = read_frame(&mut reader) {
        frames.push(frame);
    }
    let mut rest = Vec::new();
    let closed = match reader.read_to_end(&mut rest) {
        Ok(_) => true,
        Err(err) => !matches!(
            err.kind(),
            std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
        ),
    };
    let _ = sender.join();
    (frames, closed)
}

const PY_URI: &str = "file:///project/fetch.py";
const PY_TEXT: &str = "import requests\n\n\ndef fetch(url):\n    response = requests.get(url)\n    return response.text\n";

// ---------------------------------------------------------------------------------
// 1. Unbounded buffering on the LSP port before anyone authenticates.

#[test]
fn lsp_header_without_end_is_refused_at_the_header_limit_before_auth() {
    let backend = FakeBackend::start(Behaviour::FirstTokenThenStall);
    let edge = Edge::start(
        &backend.url(),
        "",
        &[("CEREBRUM_LSP_TOKEN", "session-token")],
    );
    // 4 MB without a header end: refused after 8 KB, not buffered.
    let (frames, closed) = lsp_raw(edge.lsp, &vec![b'a'; 4 * 1024 * 1024]);
    assert!(closed, "the server keeps a connection that sends junk");
    assert_eq!(frames.len(), 1, "{frames:?}");
    let message = frames[0]["error"]["message"].as_str().unwrap_or_default();
    assert!(
        message.contains("header is longer than the limit of 8192 bytes"),
        "{message}"
    );
    assert_eq!(frames[0]["error"]["code"], -32700);
}

#[test]
fn lsp_huge_content_length_is_refused_before_reading_the_body() {
    let backend = FakeBackend::start(Behaviour::FirstTokenThenStall);
    let edge = Edge::start(
        &backend.url(),
        "",
        &[("CEREBRUM_LSP_TOKEN", "session-token")],
    );
    let before = descriptors(edge.service.pid());
    let mut bytes = b"Content-Length: 1000000000000\r\n\r\n".to_vec();
    bytes.extend(vec![b'{'; 1024 * 1024]);
    let (frames, closed) = lsp_raw(edge.lsp, &bytes);
    assert!(closed);
    let message = frames[0]["error"]["message"].as_str().unwrap_or_default();
    assert!(
        message.contains("announces 1000000000000 bytes, more than the limit"),
        "{message}"
    );
    // The first message (`initialize`, read before the token is checked) gets at
    // most 1 MiB, whatever the configured limit.
    let (frames, _) = lsp_raw(
        edge.lsp,
        b"Content-Length: 2000000\r\n\r\n{\"jsonrpc\":\"2.0\"}",
    );
    let message = frames[0]["error"]["message"].as_str().unwrap_or_default();
    assert!(message.contains("limit of 1048576 bytes"), "{message}");
    // Both sessions are closed; their sockets go once their tasks have ended (the
    // "session closed" line can come first), so give that a moment.
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut after = descriptors(edge.service.pid());
    while after > before + 1 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
        after = descriptors(edge.service.pid());
    }
    assert!(after <= before + 1, "descriptors {before} -> {after}");
}

// ---------------------------------------------------------------------------------
// 2. A dropped connection must cancel every request of that session.

#[test]
fn lsp_disconnect_cancels_every_request_of_the_session() {
    let backend = FakeBackend::start(Behaviour::FirstTokenThenStall);
    let config = "[backend]\nfirst_token_timeout_ms = 600000\ntotal_timeout_ms = 600000\n";
    let edge = LspEdge::start(&backend.url(), TEST_API_KEY, config, &[]);
    let mut client = edge.client();
    client.initialize(json!({}), json!({}));
    client.did_open(PY_URI, "python", 1, PY_TEXT);
    client.did_open(
        "file:///project/other.py",
        "python",
        1,
        "def other():\n    \n",
    );
    // A streamed completion, and a refactor in codeAction/resolve, both stalled
    // after their first token.
    client.send_request(
        "textDocument/inlineCompletion",
        inline_params("file:///project/other.py", 1, 4, Some("p1")),
    );
    let action = first_code_action(&mut client);
    client.send_request("codeAction/resolve", action);
    assert!(
        backend.wait(|seen| seen.requests >= 2),
        "both requests reach the backend"
    );

    client.disconnect();
    assert!(
        backend.wait(|seen| seen.streams_dropped >= 2),
        "the editor went away, yet lsp-edge keeps streaming from vps-infer; log:\n{}",
        edge.service.log()
    );
}

// ---------------------------------------------------------------------------------
// 3. Credentials in the backend URL.

#[test]
fn backend_url_credentials_never_show_in_health_or_log() {
    let url = format!("http://admin:hunter2secret@127.0.0.1:{}", free_port());
    let edge = Edge::start(&url, "", &[]);
    let (status, body) = http_raw(edge.http, &request("GET", "/health", &[], b""));
    assert_eq!(status, 200, "{body}");
    assert!(!body.contains("hunter2secret"), "{body}");
    let health = json_of(&body);
    assert_eq!(
        health["backend"]["url"],
        format!(
            "http://***@127.0.0.1:{}",
            url.rsplit(':').next().unwrap_or_default()
        )
    );
    // The failed probe's message quotes the URL too.
    assert!(health["backend"]["error"].is_string(), "{health}");
    let log = edge.service.log();
    assert!(log.contains("***@127.0.0.1"), "{log}");
    assert!(!log.contains("hunter2secret"), "{log}");
}

// ---------------------------------------------------------------------------------
// 4. Slow clients held forever, and no connection limit.

#[test]
fn slow_http_clients_are_cut_off_on_both_servers() {
    let vps = VpsInfer::start_smol();
    let backend = FakeBackend::start(Behaviour::FirstTokenThenStall);
    let edge = Edge::start(&backend.url(), "", &[]);
    let mut held = Vec::new();
    for addr in [vps.service.addr(), edge.http] {
        // Half a header.
        let mut half_header = TcpStream::connect(addr).expect("connect");
        half_header
            .write_all(b"GET /health HTTP/1.1\r\nHost: x\r\n")
            .expect("write");
        // A whole request, then an idle keep-alive connection.
        let mut idle = TcpStream::connect(addr).expect("connect");
        idle.write_all(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
            .expect("write");
        // Nothing at all.
        let silent = TcpStream::connect(addr).expect("connect");
        held.push((addr, half_header, idle, silent));
    }
    let path = |addr: SocketAddr| {
        if addr == edge.http {
            "/v1/complete"
        } else {
            "/v1/inference"
        }
    };
    // Half a body: a 408 with the envelope, then the connection closes.
    let body_checks: Vec<_> = [vps.service.addr(), edge.http]
        .into_iter()
        .map(|addr| {
            let path = path(addr);
            std::thread::spawn(move || {
                let mut stream = TcpStream::connect(addr).expect("connect");
                stream.set_read_timeout(Some(WAIT)).ok();
                let head = format!(
                    "POST {path} HTTP/1.1\r\nHost: x\r\nX-API-Key: {TEST_API_KEY}\r\n\
                     Content-Type: application/json\r\nContent-Length: 100\r\n\r\n{{\"prompt\""
                );
                stream.write_all(head.as_bytes()).expect("write");
                let mut answer = Vec::new();
                let _ = stream.read_to_end(&mut answer);
                String::from_utf8_lossy(&answer).into_owned()
            })
        })
        .collect();
    for (addr, mut half_header, mut idle, mut silent) in held {
        assert!(
            closed_by_peer(&mut half_header),
            "{addr}: half a header held"
        );
        assert!(closed_by_peer(&mut idle), "{addr}: idle keep-alive held");
        assert!(
            closed_by_peer(&mut silent),
            "{addr}: silent connection held"
        );
    }
    for check in body_checks {
        let answer = check.join().expect("body check");
        assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
        assert!(answer.contains("request_timeout_error"), "{answer}");
        assert!(answer.contains("did not arrive within"), "{answer}");
    }
}

#[test]
fn http_connections_past_the_limit_wait_without_a_descriptor() {
    let vps = VpsInfer::builder()
        .model("smollm2-135m", model_path("smollm2-135m"))
        .env("CEREBRUM_MAX_CONNECTIONS", "2")
        .start();
    let pid = vps.service.pid();
    // Idle keep-alive connections hold the two slots until the header timeout.
    let mut first = Vec::new();
    for _ in 0..2 {
        let mut stream = TcpStream::connect(vps.service.addr()).expect("connect");
        stream
            .write_all(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
            .expect("write");
        let mut answer = [0u8; 16];
        stream.set_read_timeout(Some(WAIT)).ok();
        stream.read_exact(&mut answer).expect("answered");
        assert!(answer.starts_with(b"HTTP/1.1 200"));
        first.push(stream);
    }
    let before = descriptors(pid);
    let mut waiting = Vec::new();
    for _ in 0..50 {
        let mut stream = TcpStream::connect(vps.service.addr()).expect("connect");
        stream
            .write_all(b"GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            .expect("write");
        waiting.push(stream);
    }
    std::thread::sleep(Duration::from_millis(500));
    let during = descriptors(pid);
    // A little slack: the resource guard opens /proc files now and then.
    assert!(
        during <= before + 5,
        "50 more connections took descriptors: {before} -> {during}"
    );
    // They are served once the slots free up (the idle ones time out).
    drop(first);
    for mut stream in waiting {
        stream.set_read_timeout(Some(WAIT)).ok();
        let mut answer = String::new();
        let _ = stream.read_to_string(&mut answer);
        assert!(answer.starts_with("HTTP/1.1 200"), "{answer:?}");
    }
}

// ---------------------------------------------------------------------------------
// 5. Untrusted input logged verbatim.

#[test]
fn junk_lsp_header_is_logged_shortened() {
    let backend = FakeBackend::start(Behaviour::FirstTokenThenStall);
    let edge = Edge::start(&backend.url(), "", &[]);
    let junk = "x".repeat(1024 * 1024);
    let _ = lsp_raw(edge.lsp, junk.as_bytes());
    // The refusal is in the log, short; the junk is not.
    let log = edge.service.log();
    assert!(log.contains("refused an LSP frame"), "{log}");
    let longest = log.lines().map(str::len).max().unwrap_or(0);
    assert!(longest < 1000, "a log line of {longest} bytes");
}

// ---------------------------------------------------------------------------------
// 6. One malformed message ended the whole session.

#[test]
fn malformed_lsp_messages_are_answered_and_the_session_goes_on() {
    let backend = FakeBackend::start(Behaviour::Answer("return 42"));
    let edge = LspEdge::start(&backend.url(), TEST_API_KEY, "", &[]);
    let stream = TcpStream::connect(edge.addr()).expect("connect");
    stream.set_read_timeout(Some(WAIT)).ok();
    let mut writer = stream.try_clone().expect("clone");
    let mut reader = BufReader::new(stream);
    write_frame(
        &mut writer,
        &json!({"jsonrpc": "2.0", "id": 1, "method": "initialize",
                "params": {"processId": null, "rootUri": null, "capabilities": {}}}),
    )
    .expect("write");
    let init = read_frame(&mut reader).expect("initialize answered");
    assert!(init["result"]["capabilities"].is_object(), "{init}");
    for body in [
        &b"{\"jsonrpc\": \"2.0\", \"id\": 2, \"method\": "[..],
        &b"{\"jsonrpc\": \"2.0\", \"method\": \"\xff\xfe\"}"[..],
        &b"[1, 2]"[..],
        &b"{\"id\": 7, \"params\": {}}"[..],
    ] {
        write!(writer, "Content-Length: {}\r\n\r\n", body.len()).expect("write");
        writer.write_all(body).expect("write");
    }
    let answers: Vec<Value> = (0..4)
        .map(|_| read_frame(&mut reader).expect("an answer to each bad message"))
        .collect();
    let codes: Vec<_> = answers.iter().map(|a| a["error"]["code"].clone()).collect();
    assert_eq!(codes, [-32700, -32700, -32600, -32600], "{answers:?}");
    assert_eq!(answers[3]["id"], 7, "{}", answers[3]);
    assert!(
        answers[1]["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("not valid UTF-8")),
        "{}",
        answers[1]
    );
    // The session is still there.
    write_frame(
        &mut writer,
        &json!({"jsonrpc": "2.0", "id": 3, "method": "shutdown", "params": null}),
    )
    .expect("write");
    let shutdown = read_frame(&mut reader).expect("shutdown answered");
    assert_eq!(shutdown["id"], 3, "{shutdown}");
    assert!(shutdown.get("error").is_none(), "{shutdown}");
}

// ---------------------------------------------------------------------------------
// 7. A corrupt model file started fine and /health said "ok".

#[test]
fn corrupt_model_file_is_reported_in_health_and_every_503() {
    let dir = TempDir::new("corrupt-model");
    let junk = dir.path().join("junk.gguf");
    std::fs::write(&junk, b"this is no model, just text\n").expect("write");
    // A real model cut in half: the header reads, the tensors' data is missing.
    let real = std::fs::read(model_path("smollm2-135m")).expect("read the model");
    let truncated = dir.path().join("truncated.gguf");
    std::fs::write(&truncated, &real[..real.len() / 2]).expect("write");
    let vps = VpsInfer::start(&[("junk", &junk), ("truncated", &truncated)]);

    let (status, body) = http_raw(vps.service.addr(), &request("GET", "/health", &[], b""));
    assert_eq!(status, 200);
    let health = json_of(&body);
    assert_eq!(health["status"], "degraded", "{health}");
    let reason = health["last_load_error"].as_str().unwrap_or_default();
    assert!(reason.contains("is not a GGUF model file"), "{reason}");

    for (model, expect) in [
        ("junk", "is not a GGUF model file"),
        ("truncated", "is corrupt or truncated"),
    ] {
        let body = json!({"prompt": "def f():", "model": model, "max_tokens": 4}).to_string();
        let (status, answer) = http_raw(
            vps.service.addr(),
            &request(
                "POST",
                "/v1/inference",
                &[("X-API-Key", TEST_API_KEY.as_bytes())],
                body.as_bytes(),
            ),
        );
        let answer = json_of(&answer);
        assert_error(status, &answer, 503, "unavailable_error");
        let message = answer["error"]["message"].as_str().unwrap_or_default();
        assert!(message.contains(expect), "{model}: {message}");
    }
}

// ---------------------------------------------------------------------------------
// 8. Blank API keys, and keys from the environment not trimmed.

#[test]
fn blank_api_key_is_refused_and_the_env_key_is_trimmed() {
    let model = model_path("smollm2-135m");
    let output = Command::new(binary("vps-infer"))
        .args(["--listen", "0.0.0.0:0"])
        .arg("--model")
        .arg(format!("m={}", model.display()))
        .env("CEREBRUM_API_KEY", "   \t ")
        .output()
        .expect("run vps-infer");
    assert!(!output.status.success(), "a blank key was accepted");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("CEREBRUM_API_KEY is blank"), "{stderr}");

    let vps = VpsInfer::builder()
        .model("smollm2-135m", &model)
        .env("CEREBRUM_API_KEY", format!("  {TEST_API_KEY}\n"))
        .start();
    // The harness sends the key without the whitespace.
    assert!(vps.stats()["requests"].is_object());
}

// ---------------------------------------------------------------------------------
// 9. The 405 had an empty body.

#[test]
fn method_not_allowed_answers_with_the_envelope() {
    let vps = VpsInfer::start_smol();
    let (status, body) = http_raw(
        vps.service.addr(),
        &request(
            "GET",
            "/v1/inference",
            &[("X-API-Key", TEST_API_KEY.as_bytes())],
            b"",
        ),
    );
    let body = json_of(&body);
    assert_error(status, &body, 405, "method_not_allowed_error");
    assert!(
        body["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("GET is not allowed on /v1/inference")),
        "{body}"
    );
}

// ---------------------------------------------------------------------------------
// 10. Unclear messages.

/// Headers, body, expected status and the start of the expected message.
type Case<'a> = (&'a [(&'a str, &'a [u8])], &'a [u8], u16, &'a str);

#[test]
fn error_messages_say_what_was_wrong_and_what_is_expected() {
    let vps = VpsInfer::start_smol();
    let key = ("X-API-Key", TEST_API_KEY.as_bytes());
    let cases: [Case; 4] = [
        (
            &[key],
            b"{\"prompt\": \"x\"",
            400,
            "the request body is not valid JSON (EOF while parsing",
        ),
        (
            &[key],
            b"",
            400,
            "the request body is empty; expected a JSON object",
        ),
        (
            &[key],
            b"[{\"prompt\": \"x\"}]",
            400,
            "the request body is an array; expected a JSON object",
        ),
        (
            &[("X-API-Key", "clé".as_bytes())],
            b"{\"prompt\": \"x\"}",
            401,
            "invalid API key: the X-API-Key",
        ),
    ];
    for (headers, body, code, expect) in cases {
        let (status, answer) = http_raw(
            vps.service.addr(),
            &request("POST", "/v1/inference", headers, body),
        );
        let answer = json_of(&answer);
        assert_eq!(status, code, "{answer}");
        let message = answer["error"]["message"].as_str().unwrap_or_default();
        assert!(
            message.starts_with(expect),
            "{message:?} should start with {expect:?}"
        );
    }

    let backend = FakeBackend::start(Behaviour::Answer("return 42"));
    let edge = Edge::start(&backend.url(), "", &[]);
    let (status, answer) = http_raw(
        edge.http,
        &request("POST", "/v1/complete/batch", &[], b"[{\"prompt\": \"x\"}]"),
    );
    let answer = json_of(&answer);
    assert_error(status, &answer, 400, "invalid_request_error");
    let message = answer["error"]["message"].as_str().unwrap_or_default();
    assert!(
        message.contains("is an array; expected a JSON object such as {\"requests\": ["),
        "{message}"
    );
}

// ---------------------------------------------------------------------------------
// 11. codeAction/resolve waited for the client's answer to
// `window/workDoneProgress/create`, which Helix only gives after its resolve.

#[test]
fn code_action_resolve_does_not_wait_for_work_done_progress_create() {
    let backend = FakeBackend::start(Behaviour::Answer(
        // vps-infer stops at the closing fence and leaves it out.
        "async def fetch(url):\n    response = await requests.get(url)\n    return response.text\n",
    ));
    let edge = LspEdge::start(&backend.url(), TEST_API_KEY, "", &[]);
    // Answers nothing the server asks, as Helix while its resolve is pending.
    let mut client = cerebrum_tests::lsp_client::LspClient::tcp_silent(edge.addr());
    client.initialize(json!({}), json!({"window": {"workDoneProgress": true}}));
    client.did_open(PY_URI, "python", 1, PY_TEXT);
    let action = first_code_action(&mut client);
    assert_eq!(action["title"], "Refactor to async");
    let resolved = client.request("codeAction/resolve", action);
    let edit = &resolved.result()["edit"]["documentChanges"][0]["edits"][0]["newText"];
    assert!(
        edit.as_str()
            .is_some_and(|text| text.starts_with("async def fetch(url):")),
        "{}",
        resolved.result()
    );
    // The scenario happened: lsp-edge asked, and got no answer.
    assert!(
        client
            .messages()
            .iter()
            .any(|m| m["method"] == "window/workDoneProgress/create"),
        "lsp-edge did not ask to create a progress token"
    );
}

/// The first code action offered inside the function of `PY_TEXT` ("Refactor to async").
fn first_code_action(client: &mut cerebrum_tests::lsp_client::LspClient) -> Value {
    let actions = client.request(
        "textDocument/codeAction",
        json!({
            "textDocument": {"uri": PY_URI},
            "range": {"start": {"line": 3, "character": 5}, "end": {"line": 3, "character": 5}},
            "context": {"diagnostics": []},
        }),
    );
    actions.result()[0].clone()
}
