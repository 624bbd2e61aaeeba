//! lsp-edge's own overhead per completion, and its peak memory.
//!
//! `cargo bench -p lsp-edge --bench overhead` starts the real `lsp-edge serve` binary
//! (release build) against a scripted vps-infer in this process, and drives it over a
//! real TCP socket as an editor would, with 20 open 8 KB Python documents:
//!
//! - request overhead: from just before the client writes an `inlineCompletion`
//!   request to when the scripted vps-infer's handler starts on it (so it includes
//!   two loopback hops and HTTP parsing: an upper bound on the edge's own share);
//! - token overhead: from just before the scripted vps-infer writes a token to when
//!   the client has read the `$/progress` partial result carrying it;
//! - peak memory: lsp-edge's `VmHWM` from `/proc` after the run.
//!
//! Both ends share this process's monotonic clock. Prints medians and percentiles.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::State;
use axum::response::sse::{Event, Sse};
use axum::routing::post;
use axum::serve::ListenerExt;
use axum::Router;
use futures::stream::{self, Stream};
use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio::sync::mpsc;

const DOCUMENTS: usize = 20;
const DOCUMENT_BYTES: usize = 8 * 1024;
const REQUESTS: usize = 100;
const TOKENS: usize = 20;
const TOKEN_GAP: Duration = Duration::from_millis(5);

#[derive(Default)]
struct Recorder {
    /// When each inference request reached the handler.
    arrivals: Vec<Instant>,
    /// Per request, when each token was handed to the response stream.
    token_sends: Vec<Vec<Instant>>,
}

type Shared = Arc<Mutex<Recorder>>;

async fn inference(
    State(recorder): State<Shared>,
    _body: String,
) -> Sse<impl Stream<Item = Result<Event, std::convert::Infallible>>> {
    let request = {
        let mut recorder = recorder.lock().unwrap();
        recorder.arrivals.push(Instant::now());
        recorder.token_sends.push(Vec::new());
        recorder.arrivals.len() - 1
    };
    let events = stream::unfold(0usize, move |index| {
        let recorder = recorder.clone();
        async move {
            if index > TOKENS {
                return None;
            }
            tokio::time::sleep(TOKEN_GAP).await;
            let event = if index == TOKENS {
                Event::default().data(
                    json!({"done": true, "text": "", "prompt_tokens": 1, "cached_tokens": 0,
                        "total_tokens": TOKENS, "inference_time": 0.1,
                        "tokens_per_second": 200.0, "stop_reason": "length"})
                    .to_string(),
                )
            } else {
                // Every token ends a line, so every token is published at once.
                let indent = if index == 0 { "" } else { "    " };
                let token = format!("{indent}x{index} = {index}\n");
                recorder.lock().unwrap().token_sends[request].push(Instant::now());
                Event::default().data(json!({ "token": token }).to_string())
            };
            Some((Ok(event), index + 1))
        }
    });
    Sse::new(events)
}

fn python_document(seed: usize) -> String {
    let mut text = String::from("import math\n\n\n");
    let mut i = 0;
    while text.len() < DOCUMENT_BYTES - 40 {
        text.push_str(&format!(
            "def function_{seed}_{i}(value):\n    total = value * {i} + math.sqrt({seed})\n    return total\n\n\n"
        ));
        i += 1;
    }
    text.push_str("def last(value):\n    ");
    text
}

async fn write_message(stream: &mut (impl AsyncWriteExt + Unpin), message: &Value) {
    let body = message.to_string();
    let frame = format!("Content-Length: {}\r\n\r\n{body}", body.len());
    stream.write_all(frame.as_bytes()).await.unwrap();
    stream.flush().await.unwrap();
}

async fn read_messages(
    read: tokio::net::tcp::OwnedReadHalf,
    sink: mpsc::UnboundedSender<(Instant, Value)>,
) {
    let mut reader = BufReader::new(read);
    loop {
        let mut length = 0usize;
        loop {
            let mut line = String::new();
            if reader.read_line(&mut line).await.unwrap_or(0) == 0 {
                return;
            }
            let line = line.trim_end();
            if line.is_empty() {
                break;
            }
            if let Some(value) = line.strip_prefix("Content-Length:") {
                length = value.trim().parse().unwrap();
            }
        }
        let mut body = vec![0; length];
        reader.read_exact(&mut body).await.unwrap();
        let now = Instant::now();
        let message: Value = serde_json::from_slice(&body).unwrap();
        if sink.send((now, message)).is_err() {
            return;
        }
    }
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let index = ((sorted.len() - 1) as f64 * p).round() as usize;
    sorted[index]
}

fn report(name: &str, mut samples: Vec<Duration>) {
    samples.sort();
    println!(
        "{name}: n={} median={:.3} ms p90={:.3} ms p99={:.3} ms max={:.3} ms",
        samples.len(),
        percentile(&samples, 0.5).as_secs_f64() * 1e3,
        percentile(&samples, 0.9).as_secs_f64() * 1e3,
        percentile(&samples, 0.99).as_secs_f64() * 1e3,
        samples.last().copied().unwrap_or_default().as_secs_f64() * 1e3,
    );
}

fn peak_rss_kb(pid: u32) -> (u64, u64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find_map(|line| line.strip_prefix(name))
            .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap_or(0)
    };
    (field("VmHWM:"), field("VmRSS:"))
}

/// Two distinct loopback ports that were free a moment ago: both are held while the
/// second is chosen, since the kernel may hand a just-released port out again.
fn two_free_ports() -> (u16, u16) {
    let bind = || std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let (first, second) = (bind(), bind());
    let port = |l: &std::net::TcpListener| l.local_addr().unwrap().port();
    (port(&first), port(&second))
}

#[tokio::main]
async fn main() {
    let recorder: Shared = Arc::default();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let backend = listener.local_addr().unwrap();
    // Without TCP_NODELAY, Nagle's algorithm holds a token back until the previous
    // one is acknowledged, and delayed ACKs make that up to 40 ms.
    let listener = listener.tap_io(|stream| {
        let _ = stream.set_nodelay(true);
    });
    let app = Router::new()
        .route("/v1/inference", post(inference))
        .with_state(recorder.clone());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });

    let dir = std::env::temp_dir().join(format!("lsp-edge-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let config = dir.join("bench.toml");
    std::fs::write(
        &config,
        "[completion]\nmax_lines = 1000\nmax_tokens = 256\n",
    )
    .unwrap();
    let (lsp_port, http_port) = two_free_ports();
    let addr: SocketAddr = ([127, 0, 0, 1], lsp_port).into();
    let mut edge = std::process::Command::new(env!("CARGO_BIN_EXE_lsp-edge"))
        .args(["serve", "--listen", &addr.to_string()])
        .args(["--backend", &format!("http://{backend}")])
        .args(["--http", &format!("127.0.0.1:{http_port}")])
        .arg("--config")
        .arg(&config)
        // `LSP_EDGE_BENCH_LOG=lsp_edge=debug` shows where the time goes.
        .env(
            "RUST_LOG",
            std::env::var("LSP_EDGE_BENCH_LOG").unwrap_or_else(|_| "warn".into()),
        )
        .spawn()
        .expect("start lsp-edge");
    let stream = loop {
        match TcpStream::connect(addr).await {
            Ok(stream) => break stream,
            Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
        }
    };
    stream.set_nodelay(true).unwrap();
    let (read, mut write) = stream.into_split();
    let (sink, mut inbox) = mpsc::unbounded_channel();
    tokio::spawn(read_messages(read, sink));

    write_message(
        &mut write,
        &json!({"jsonrpc": "2.0", "id": 0, "method": "initialize",
            "params": {"processId": null, "rootUri": null, "capabilities": {}}}),
    )
    .await;
    while inbox.recv().await.is_some_and(|(_, m)| m["id"] != 0) {}
    write_message(
        &mut write,
        &json!({"jsonrpc": "2.0", "method": "initialized", "params": {}}),
    )
    .await;

    let mut cursors = Vec::new();
    for doc in 0..DOCUMENTS {
        let text = python_document(doc);
        let lines = text.split('\n').count() as u32;
        let uri = format!("file:///bench/module_{doc}.py");
        write_message(
            &mut write,
            &json!({"jsonrpc": "2.0", "method": "textDocument/didOpen", "params": {"textDocument":
                {"uri": uri, "languageId": "python", "version": 1, "text": text}}}),
        )
        .await;
        cursors.push((uri, lines - 1, 4));
    }

    let mut request_overheads = Vec::new();
    let mut token_overheads = Vec::new();
    for request in 0..REQUESTS {
        let (uri, line, character) = &cursors[request % DOCUMENTS];
        let id = request as i64 + 1;
        let token = format!("bench-{id}");
        let message = json!({"jsonrpc": "2.0", "id": id, "method": "textDocument/inlineCompletion",
            "params": {"textDocument": {"uri": uri}, "position": {"line": line, "character": character},
                "context": {"triggerKind": 2}, "partialResultToken": token}});
        let sent = Instant::now();
        write_message(&mut write, &message).await;
        let mut partials = Vec::new();
        loop {
            let (at, message) = inbox.recv().await.expect("lsp-edge closed the connection");
            if message["id"] == id {
                assert!(message.get("error").is_none(), "{message}");
                break;
            }
            if message["params"]["token"] == token.as_str() {
                let text = message["params"]["value"]["items"][0]["insertText"]
                    .as_str()
                    .unwrap_or_default()
                    .to_owned();
                partials.push((at, text.lines().count()));
            }
        }
        let recorder = recorder.lock().unwrap();
        let arrival = recorder.arrivals[request];
        request_overheads.push(arrival.saturating_duration_since(sent));
        let sends = &recorder.token_sends[request];
        for (at, lines) in partials {
            if let Some(sent) = lines.checked_sub(1).and_then(|token| sends.get(token)) {
                token_overheads.push(at.saturating_duration_since(*sent));
            }
        }
    }

    println!(
        "lsp-edge overhead: {DOCUMENTS} open documents of {DOCUMENT_BYTES} bytes, {REQUESTS} streamed inline completions of {TOKENS} tokens"
    );
    report("request -> first byte at vps-infer", request_overheads);
    report(
        "token from vps-infer -> partial result at the editor",
        token_overheads,
    );
    let (peak, now) = peak_rss_kb(edge.id());
    println!(
        "lsp-edge memory: peak RSS {:.1} MB, current RSS {:.1} MB",
        peak as f64 / 1024.0,
        now as f64 / 1024.0
    );
    let _ = edge.kill();
    let _ = edge.wait();
    let _ = std::fs::remove_dir_all(&dir);
}
