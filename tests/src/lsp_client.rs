//! A small real LSP client for the tests: Content-Length framing over TCP or a child's
//! stdio, JSON-RPC ids, every message kept in arrival order (so a test can check that
//! partial results came before the final answer), and automatic `null` answers to the
//! server's own requests (`window/workDoneProgress/create`).
//!
//! Also [`LspEdge`], an `lsp-edge serve` child on a free loopback port.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::{binary, free_port, Service, TempDir};

/// How long any single wait may take before the test fails. Generous: the CPU is
/// shared with compilers; this guards against hangs and is no timing assertion.
pub const WAIT: Duration = Duration::from_secs(240);

/// lsp-edge's config for tests that run a model: generous backend timeouts, for a
/// CPU shared with compilers (they guard against hangs; nothing is timed).
pub const PATIENT_CONFIG: &str = r#"
[backend]
first_token_timeout_ms = 240000
total_timeout_ms = 240000
"#;

/// Messages received so far, and whether the connection ended.
#[derive(Default)]
struct Inbox {
    messages: Vec<Value>,
    closed: bool,
}

type Shared<T> = Arc<(Mutex<T>, Condvar)>;

/// An LSP client speaking to one server.
pub struct LspClient {
    writer: Arc<Mutex<Box<dyn Write + Send>>>,
    /// The TCP connection, for [`disconnect`](Self::disconnect).
    socket: Option<TcpStream>,
    inbox: Shared<Inbox>,
    next_id: i64,
    _child: Option<Child>,
}

/// A response: `Ok(result)` or `Err(error object)`, and its place in arrival order.
#[derive(Debug, Clone)]
pub struct Response {
    pub index: usize,
    pub outcome: Result<Value, Value>,
}

impl Response {
    /// The result, or a panic that shows the error.
    pub fn result(&self) -> &Value {
        match &self.outcome {
            Ok(result) => result,
            Err(error) => panic!("expected a result, got the error {error}"),
        }
    }

    /// The error, or a panic that shows the result.
    pub fn error(&self) -> &Value {
        match &self.outcome {
            Err(error) => error,
            Ok(result) => panic!("expected an error, got the result {result}"),
        }
    }

    pub fn error_code(&self) -> i64 {
        self.error()["code"].as_i64().unwrap_or_default()
    }

    pub fn error_message(&self) -> String {
        self.error()["message"]
            .as_str()
            .unwrap_or_default()
            .to_owned()
    }
}

/// Writes one message with its `Content-Length` header.
pub fn write_frame(writer: &mut dyn Write, message: &Value) -> std::io::Result<()> {
    let body = message.to_string();
    write!(writer, "Content-Length: {}\r\n\r\n{body}", body.len())?;
    writer.flush()
}

/// Reads one framed message; `None` at the end of the stream.
pub fn read_frame(reader: &mut impl BufRead) -> Option<Value> {
    let mut length = None;
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line).ok()? == 0 {
            return None;
        }
        let line = line.trim_end();
        if line.is_empty() {
            break;
        }
        if let Some(value) = line.strip_prefix("Content-Length:") {
            length = value.trim().parse::<usize>().ok();
        }
    }
    let mut body = vec![0; length?];
    reader.read_exact(&mut body).ok()?;
    serde_json::from_slice(&body).ok()
}

impl LspClient {
    /// Connects over TCP.
    pub fn tcp(addr: SocketAddr) -> LspClient {
        let stream = TcpStream::connect(addr).unwrap_or_else(|e| panic!("connect {addr}: {e}"));
        stream.set_nodelay(true).ok();
        let reader = stream.try_clone().expect("clone TCP stream");
        let socket = stream.try_clone().ok();
        let mut client = LspClient::over(Box::new(reader), Box::new(stream), None, true);
        client.socket = socket;
        client
    }

    /// Closes the TCP connection now, as an editor that quits or crashes (dropping
    /// the client alone leaves its reader thread holding the socket).
    pub fn disconnect(&self) {
        if let Some(socket) = &self.socket {
            let _ = socket.shutdown(std::net::Shutdown::Both);
        }
    }

    /// Connects over TCP as a client that never answers the server's requests (as
    /// Helix does not while a request of its own is pending).
    pub fn tcp_silent(addr: SocketAddr) -> LspClient {
        let stream = TcpStream::connect(addr).unwrap_or_else(|e| panic!("connect {addr}: {e}"));
        stream.set_nodelay(true).ok();
        let reader = stream.try_clone().expect("clone TCP stream");
        LspClient::over(Box::new(reader), Box::new(stream), None, false)
    }

    /// Speaks over a child's stdin/stdout (e.g. `lsp-edge connect`); the child is
    /// killed when the client is dropped.
    pub fn child(mut child: Child) -> LspClient {
        let stdin: ChildStdin = child.stdin.take().expect("child stdin is piped");
        let stdout: ChildStdout = child.stdout.take().expect("child stdout is piped");
        LspClient::over(Box::new(stdout), Box::new(stdin), Some(child), true)
    }

    fn over(
        reader: Box<dyn Read + Send>,
        writer: Box<dyn Write + Send>,
        child: Option<Child>,
        answer_requests: bool,
    ) -> LspClient {
        let writer: Arc<Mutex<Box<dyn Write + Send>>> = Arc::new(Mutex::new(writer));
        let inbox: Shared<Inbox> = Arc::default();
        let (thread_inbox, thread_writer) = (inbox.clone(), writer.clone());
        std::thread::spawn(move || {
            let mut reader = BufReader::new(reader);
            while let Some(message) = read_frame(&mut reader) {
                // Answer the server's requests (they have an id and a method).
                if answer_requests && message.get("method").is_some() {
                    if let Some(id) = message.get("id") {
                        let reply = json!({"jsonrpc": "2.0", "id": id, "result": null});
                        let mut writer = thread_writer.lock().unwrap_or_else(|e| e.into_inner());
                        let _ = write_frame(&mut **writer, &reply);
                    }
                }
                let (lock, signal) = &*thread_inbox;
                lock.lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .messages
                    .push(message);
                signal.notify_all();
            }
            let (lock, signal) = &*thread_inbox;
            lock.lock().unwrap_or_else(|e| e.into_inner()).closed = true;
            signal.notify_all();
        });
        LspClient {
            writer,
            socket: None,
            inbox,
            next_id: 1,
            _child: child,
        }
    }

    fn send(&self, message: &Value) {
        let mut writer = self.writer.lock().unwrap_or_else(|e| e.into_inner());
        write_frame(&mut **writer, message).expect("write to the server");
    }

    /// Sends a request; returns its id.
    pub fn send_request(&mut self, method: &str, params: Value) -> i64 {
        let id = self.next_id;
        self.next_id += 1;
        self.send(&json!({"jsonrpc": "2.0", "id": id, "method": method, "params": params}));
        id
    }

    pub fn notify(&self, method: &str, params: Value) {
        self.send(&json!({"jsonrpc": "2.0", "method": method, "params": params}));
    }

    /// Sends several requests in one write, so that the server reads them together.
    pub fn send_requests_at_once(&mut self, requests: &[(&str, Value)]) -> Vec<i64> {
        let mut bytes = Vec::new();
        let mut ids = Vec::new();
        for (method, params) in requests {
            let id = self.next_id;
            self.next_id += 1;
            ids.push(id);
            let message = json!({"jsonrpc": "2.0", "id": id, "method": method, "params": params});
            write_frame(&mut bytes, &message).expect("write to a Vec");
        }
        let mut writer = self.writer.lock().unwrap_or_else(|e| e.into_inner());
        writer.write_all(&bytes).expect("write to the server");
        writer.flush().expect("flush to the server");
        ids
    }

    /// Waits until `find` matches a received message; returns its index and value.
    pub fn wait_for(&self, what: &str, find: impl Fn(&Value) -> bool) -> (usize, Value) {
        self.try_wait_for(WAIT, &find)
            .unwrap_or_else(|| panic!("no {what} within {WAIT:?}; received:\n{}", self.dump()))
    }

    /// As [`wait_for`](Self::wait_for), `None` when `timeout` passes or the server closes.
    pub fn try_wait_for(
        &self,
        timeout: Duration,
        find: &dyn Fn(&Value) -> bool,
    ) -> Option<(usize, Value)> {
        let deadline = Instant::now() + timeout;
        let (lock, signal) = &*self.inbox;
        let mut inbox = lock.lock().unwrap_or_else(|e| e.into_inner());
        loop {
            if let Some(index) = inbox.messages.iter().position(&find) {
                return Some((index, inbox.messages[index].clone()));
            }
            let now = Instant::now();
            if inbox.closed || now >= deadline {
                return None;
            }
            inbox = signal
                .wait_timeout(inbox, deadline - now)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
    }

    /// Waits until the server closes the connection; `false` if it stays open.
    pub fn wait_closed(&self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        let (lock, signal) = &*self.inbox;
        let mut inbox = lock.lock().unwrap_or_else(|e| e.into_inner());
        while !inbox.closed {
            let now = Instant::now();
            if now >= deadline {
                return false;
            }
            inbox = signal
                .wait_timeout(inbox, deadline - now)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
        true
    }

    /// Waits for the response to request `id`.
    pub fn response(&self, id: i64) -> Response {
        let (index, message) = self.wait_for(&format!("response to request {id}"), |m| {
            m.get("method").is_none() && m["id"] == id
        });
        let outcome = match message.get("error") {
            Some(error) => Err(error.clone()),
            None => Ok(message["result"].clone()),
        };
        Response { index, outcome }
    }

    /// Sends a request and waits for its response.
    pub fn request(&mut self, method: &str, params: Value) -> Response {
        let id = self.send_request(method, params);
        self.response(id)
    }

    /// Every message received so far.
    pub fn messages(&self) -> Vec<Value> {
        let (lock, _) = &*self.inbox;
        lock.lock()
            .unwrap_or_else(|e| e.into_inner())
            .messages
            .clone()
    }

    /// `(index, value)` of every `$/progress` for `token`, in arrival order.
    pub fn progress(&self, token: &str) -> Vec<(usize, Value)> {
        self.messages()
            .into_iter()
            .enumerate()
            .filter(|(_, m)| m["method"] == "$/progress" && m["params"]["token"] == token)
            .map(|(i, m)| (i, m["params"]["value"].clone()))
            .collect()
    }

    /// The notifications with this method, in arrival order.
    pub fn notifications(&self, method: &str) -> Vec<Value> {
        self.messages()
            .into_iter()
            .filter(|m| m["method"] == method && m.get("id").is_none())
            .map(|m| m["params"].clone())
            .collect()
    }

    fn dump(&self) -> String {
        self.messages()
            .iter()
            .map(|m| {
                let text = m.to_string();
                text.chars().take(400).collect::<String>()
            })
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// `initialize` then `initialized`; returns the initialize result.
    pub fn initialize(&mut self, initialization_options: Value, capabilities: Value) -> Value {
        let response = self.request(
            "initialize",
            json!({
                "processId": null,
                "rootUri": null,
                "capabilities": capabilities,
                "initializationOptions": initialization_options,
            }),
        );
        let result = response.result().clone();
        self.notify("initialized", json!({}));
        result
    }

    pub fn did_open(&self, uri: &str, language_id: &str, version: i32, text: &str) {
        self.notify(
            "textDocument/didOpen",
            json!({"textDocument": {"uri": uri, "languageId": language_id, "version": version, "text": text}}),
        );
    }

    /// One incremental change: replace `(line, character)..(line, character)` by `text`.
    pub fn did_change(
        &self,
        uri: &str,
        version: i32,
        start: (u32, u32),
        end: (u32, u32),
        text: &str,
    ) {
        self.notify(
            "textDocument/didChange",
            json!({
                "textDocument": {"uri": uri, "version": version},
                "contentChanges": [{
                    "range": {
                        "start": {"line": start.0, "character": start.1},
                        "end": {"line": end.0, "character": end.1},
                    },
                    "text": text,
                }],
            }),
        );
    }

    /// `shutdown` then `exit`.
    pub fn shutdown(&mut self) {
        let response = self.request("shutdown", Value::Null);
        response.result();
        self.notify("exit", Value::Null);
    }
}

impl Drop for LspClient {
    fn drop(&mut self) {
        if let Some(child) = &mut self._child {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Params for `textDocument/inlineCompletion` at `(line, character)`.
pub fn inline_params(uri: &str, line: u32, character: u32, partial_token: Option<&str>) -> Value {
    let mut params = json!({
        "textDocument": {"uri": uri},
        "position": {"line": line, "character": character},
        "context": {"triggerKind": 1},
    });
    if let Some(token) = partial_token {
        params["partialResultToken"] = json!(token);
    }
    params
}

/// The first item's text of an inline completion result (list or array); `None`
/// when there is no item.
pub fn inline_text(result: &Value) -> Option<String> {
    let items = result.get("items").unwrap_or(result);
    items
        .get(0)
        .and_then(|item| item["insertText"].as_str())
        .map(str::to_owned)
}

/// A running `lsp-edge serve` on a free loopback port; killed on drop.
pub struct LspEdge {
    pub service: Service,
    /// Its HTTP endpoint for scripts.
    pub http: SocketAddr,
    _dir: TempDir,
}

impl LspEdge {
    /// Starts `lsp-edge serve` against `backend`, with `config` as its TOML file and
    /// `envs` added to its environment.
    pub fn start(backend: &str, api_key: &str, config: &str, envs: &[(&str, &str)]) -> LspEdge {
        LspEdge::start_many(&[backend], api_key, config, envs)
    }

    /// As [`LspEdge::start`], with one `--backend` per entry (`URL` or `KIND=URL`).
    pub fn start_many(
        backends: &[&str],
        api_key: &str,
        config: &str,
        envs: &[(&str, &str)],
    ) -> LspEdge {
        let dir = TempDir::new("lsp-edge-config");
        let config_path = dir.path().join("lsp-edge.toml");
        std::fs::write(&config_path, config).expect("write lsp-edge config");
        let addr: SocketAddr = ([127, 0, 0, 1], free_port()).into();
        let http: SocketAddr = ([127, 0, 0, 1], free_port()).into();
        let mut cmd = Command::new(binary("lsp-edge"));
        cmd.arg("serve")
            .arg("--config")
            .arg(&config_path)
            .arg("--listen")
            .arg(addr.to_string())
            // Its HTTP endpoint for scripts on a port of its own, so that several
            // servers can run side by side.
            .arg("--http")
            .arg(http.to_string())
            .env("CEREBRUM_API_KEY", api_key)
            .env_remove("CEREBRUM_LSP_TOKEN")
            .env("RUST_LOG", "info,lsp_edge=debug");
        for backend in backends {
            cmd.arg("--backend").arg(backend);
        }
        for (key, value) in envs {
            cmd.env(key, value);
        }
        LspEdge {
            service: Service::spawn("lsp-edge", cmd, addr),
            http,
            _dir: dir,
        }
    }

    pub fn addr(&self) -> SocketAddr {
        self.service.addr()
    }

    pub fn client(&self) -> LspClient {
        LspClient::tcp(self.addr())
    }

    /// An `lsp-edge connect` child bridging its stdio to this server.
    pub fn connect_client(&self) -> LspClient {
        let child = Command::new(binary("lsp-edge"))
            .arg("connect")
            .arg(self.addr().to_string())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start lsp-edge connect");
        LspClient::child(child)
    }
}
