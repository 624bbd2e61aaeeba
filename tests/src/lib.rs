//! Helpers shared by the workspace integration tests: real models, real binaries, real
//! sockets.
//!
//! Every test talks to the services the way a user's editor or script would: the
//! binaries are built by cargo and started as child processes on free loopback ports,
//! and the model files come from `scripts/fetch-model` (cached outside the repo).

pub mod lsp_client;
pub mod typing;

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

/// The workspace root (the folder holding the top-level `Cargo.toml`).
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ lives inside the workspace")
        .to_path_buf()
}

/// Path of a verified GGUF model, fetched into the cache on first use.
///
/// Names are those of `scripts/fetch-model --list`, e.g. `smollm2-135m`.
pub fn model_path(name: &str) -> PathBuf {
    static CACHE: OnceLock<Mutex<HashMap<String, PathBuf>>> = OnceLock::new();
    let cache = CACHE.get_or_init(Default::default);
    let mut cache = cache.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(path) = cache.get(name) {
        return path.clone();
    }
    let script = workspace_root().join("scripts/fetch-model");
    let out = Command::new(&script)
        .arg(name)
        .stderr(Stdio::inherit())
        .output()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", script.display()));
    assert!(
        out.status.success(),
        "scripts/fetch-model {name} failed (see its error above)"
    );
    let path = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
    assert!(
        path.is_file(),
        "fetch-model printed {path:?}, which is no file"
    );
    cache.insert(name.to_string(), path.clone());
    path
}

/// Path of a workspace binary (`vps-infer`, `lsp-edge`), built up to date once per test
/// process with the same profile and target folder as the running test.
///
/// `CEREBRUM_BIN_DIR` points at prebuilt binaries instead (and skips the build).
pub fn binary(name: &str) -> PathBuf {
    static BUILT: OnceLock<PathBuf> = OnceLock::new();
    let dir = BUILT.get_or_init(|| {
        if let Some(dir) = std::env::var_os("CEREBRUM_BIN_DIR") {
            return PathBuf::from(dir);
        }
        // The test runs as target/<profile>/deps/<test>-<hash>.
        let exe = std::env::current_exe().expect("current_exe");
        let profile_dir = exe
            .parent()
            .and_then(Path::parent)
            .expect("test binary lives in target/<profile>/deps")
            .to_path_buf();
        let target_dir = profile_dir.parent().expect("target dir").to_path_buf();
        let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
        let mut cmd = Command::new(cargo);
        cmd.current_dir(workspace_root())
            .args([
                "build",
                "--quiet",
                "-p",
                "vps-infer",
                "-p",
                "lsp-edge",
                "--bins",
            ])
            .env("CARGO_TARGET_DIR", &target_dir);
        if profile_dir.file_name().is_some_and(|n| n == "release") {
            cmd.arg("--release");
        }
        let status = cmd
            .status()
            .expect("cannot run cargo to build the binaries");
        assert!(status.success(), "building the workspace binaries failed");
        profile_dir
    });
    let path = dir.join(name);
    assert!(path.is_file(), "no binary at {}", path.display());
    path
}

/// A loopback port that was free a moment ago, and that no earlier call in this
/// process handed out.
///
/// The kernel may give a just-released port back at once, so two calls in a row
/// (an LSP port and an HTTP port for one server) could name the same port; the
/// second service would then fail with "address already in use".
pub fn free_port() -> u16 {
    static HANDED_OUT: Mutex<Vec<u16>> = Mutex::new(Vec::new());
    let mut handed_out = HANDED_OUT.lock().unwrap_or_else(|e| e.into_inner());
    loop {
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .expect("bind 127.0.0.1:0");
        if !handed_out.contains(&port) {
            handed_out.push(port);
            return port;
        }
    }
}

/// Waits until something accepts TCP connections on `addr`, or panics after `timeout`.
pub fn wait_for_port(addr: SocketAddr, timeout: Duration, child: &mut Child, log: &Path) {
    let deadline = Instant::now() + timeout;
    loop {
        if TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
            return;
        }
        if let Ok(Some(status)) = child.try_wait() {
            panic!(
                "process exited with {status} before listening on {addr}; its log:\n{}",
                read_log(log)
            );
        }
        assert!(
            Instant::now() < deadline,
            "nothing listens on {addr} after {timeout:?}; log:\n{}",
            read_log(log)
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn read_log(path: &Path) -> String {
    let mut s = String::new();
    if let Ok(mut f) = std::fs::File::open(path) {
        let _ = f.read_to_string(&mut s);
    }
    // The tail is what explains a failure.
    let start = s.len().saturating_sub(8000);
    let start = (start..s.len())
        .find(|&i| s.is_char_boundary(i))
        .unwrap_or(s.len());
    s[start..].to_string()
}

/// A child process whose stderr goes to a log file, shown when a test fails; killed on drop.
pub struct Service {
    child: Child,
    addr: SocketAddr,
    log: PathBuf,
    _dir: TempDir,
}

impl Service {
    /// Spawns `cmd` (stdout and stderr to a log file) and waits until `addr` accepts.
    pub fn spawn(name: &str, mut cmd: Command, addr: SocketAddr) -> Service {
        let dir = TempDir::new(name);
        let log = dir.path().join(format!("{name}.log"));
        let file = std::fs::File::create(&log).expect("create log file");
        let file2 = file.try_clone().expect("clone log handle");
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(file)
            .stderr(file2)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {name}: {e}"));
        wait_for_port(addr, Duration::from_secs(60), &mut child, &log);
        Service {
            child,
            addr,
            log,
            _dir: dir,
        }
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Everything the process wrote so far (its tail).
    pub fn log(&self) -> String {
        read_log(&self.log)
    }

    /// Sends SIGTERM and waits (up to `timeout`) for the process to exit.
    /// Returns the exit status, or `None` if it did not exit in time (it is then killed).
    pub fn terminate(&mut self, timeout: Duration) -> Option<std::process::ExitStatus> {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        None
    }

    /// Kills the process at once (SIGKILL), as a crash would.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Service {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            eprintln!(
                "---- log of the service on {} ----\n{}",
                self.addr,
                self.log()
            );
        }
    }
}

/// The API key the test harness gives every vps-infer it starts.
pub const TEST_API_KEY: &str = "test-key-0123456789";

/// Starts vps-infer on a free loopback port.
#[derive(Default)]
pub struct VpsInferBuilder {
    models: Vec<(String, PathBuf)>,
    args: Vec<String>,
    envs: Vec<(String, String)>,
}

impl VpsInferBuilder {
    pub fn model(mut self, name: &str, path: impl Into<PathBuf>) -> Self {
        self.models.push((name.to_string(), path.into()));
        self
    }

    pub fn arg(mut self, arg: impl Into<String>) -> Self {
        self.args.push(arg.into());
        self
    }

    pub fn env(mut self, key: &str, value: impl Into<String>) -> Self {
        self.envs.push((key.to_string(), value.into()));
        self
    }

    pub fn start(self) -> VpsInfer {
        let port = free_port();
        let addr: SocketAddr = ([127, 0, 0, 1], port).into();
        let mut cmd = Command::new(binary("vps-infer"));
        cmd.arg("--listen").arg(addr.to_string());
        for (name, path) in &self.models {
            cmd.arg("--model").arg(format!("{name}={}", path.display()));
        }
        cmd.args(&self.args)
            .env("CEREBRUM_API_KEY", TEST_API_KEY)
            // The test machine is shared and busy compiling: the resource guards have
            // their own test, everything else runs with them wide open.
            .env("CEREBRUM_GUARD_MAX_CPU_PERCENT", "100")
            .env("CEREBRUM_GUARD_MIN_FREE_MEMORY_MB", "0")
            .env("RUST_LOG", "info,vps_infer=debug")
            // Several test servers share two cores: OpenMP threads that spin while
            // waiting would starve each other.
            .env("OMP_WAIT_POLICY", "PASSIVE");
        for (k, v) in &self.envs {
            cmd.env(k, v);
        }
        VpsInfer {
            service: Service::spawn("vps-infer", cmd, addr),
        }
    }
}

/// A running vps-infer.
pub struct VpsInfer {
    pub service: Service,
}

impl VpsInfer {
    pub fn builder() -> VpsInferBuilder {
        VpsInferBuilder::default()
    }

    /// vps-infer with the given `(name, path)` models; the first is the default.
    pub fn start(models: &[(&str, &Path)]) -> VpsInfer {
        models
            .iter()
            .fold(Self::builder(), |b, (name, path)| b.model(name, *path))
            .start()
    }

    /// vps-infer with the small SmolLM2 test model.
    pub fn start_smol() -> VpsInfer {
        Self::start(&[("smollm2-135m", &model_path("smollm2-135m"))])
    }

    /// vps-infer on SmolLM2 with one llama.cpp thread, for LSP tests: they run side by
    /// side on a small shared machine, where several servers spinning on every core
    /// each would slow all of them to a crawl.
    pub fn start_smol_one_thread() -> VpsInfer {
        Self::builder()
            .model("smollm2-135m", model_path("smollm2-135m"))
            .arg("--threads")
            .arg("1")
            .start()
    }

    /// Base URL, e.g. `http://127.0.0.1:45678`.
    pub fn url(&self) -> String {
        format!("http://{}", self.service.addr())
    }

    pub fn api_key(&self) -> &'static str {
        TEST_API_KEY
    }

    /// `GET /v1/stats`, from synchronous tests too.
    pub fn stats(&self) -> serde_json::Value {
        blocking_json("GET", &format!("{}/v1/stats", self.url()), None).1
    }
}

/// An HTTP request from synchronous tests too (it runs its own small runtime on a
/// separate thread, so it is safe inside or outside another runtime), with the test
/// API key. Returns the status and the body, or why there was no answer.
pub fn blocking_http(
    method: &str,
    url: &str,
    body: Option<serde_json::Value>,
) -> Result<(u16, String), String> {
    let method = reqwest::Method::from_bytes(method.as_bytes()).map_err(|err| err.to_string())?;
    let url = url.to_owned();
    std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|err| err.to_string())?;
        runtime.block_on(async {
            let mut request = reqwest::Client::new()
                .request(method, &url)
                .header("X-API-Key", TEST_API_KEY);
            if let Some(body) = body {
                request = request.json(&body);
            }
            let response = request
                .send()
                .await
                .map_err(|err| format!("{url}: {err}"))?;
            let status = response.status().as_u16();
            let text = response
                .text()
                .await
                .map_err(|err| format!("{url}: {err}"))?;
            Ok((status, text))
        })
    })
    .join()
    .unwrap_or_else(|_| Err("the HTTP thread panicked".into()))
}

/// [`blocking_http`] with a JSON answer (`null` when the body is not JSON); panics
/// when there is no answer.
pub fn blocking_json(
    method: &str,
    url: &str,
    body: Option<serde_json::Value>,
) -> (u16, serde_json::Value) {
    let (status, text) = blocking_http(method, url, body).unwrap_or_else(|err| panic!("{err}"));
    (
        status,
        serde_json::from_str(&text).unwrap_or(serde_json::Value::Null),
    )
}

/// Reads a streaming SSE response until its first `token` event has arrived.
pub async fn read_until_first_token(response: &mut reqwest::Response) {
    let mut seen = String::new();
    while !seen.contains("\"token\"") {
        let chunk = response
            .chunk()
            .await
            .expect("reading the stream")
            .expect("the stream ended before its first token");
        seen.push_str(&String::from_utf8_lossy(&chunk));
    }
}

/// A temporary folder removed on drop (kept when the test fails, for its logs).
pub struct TempDir(PathBuf);

impl TempDir {
    pub fn new(prefix: &str) -> TempDir {
        static COUNTER: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = COUNTER.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let path =
            std::env::temp_dir().join(format!("cerebrum-{prefix}-{}-{n}", std::process::id()));
        std::fs::create_dir_all(&path).expect("create temp dir");
        TempDir(path)
    }

    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        if !std::thread::panicking() {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}

/// Asserts that `body` is the error envelope shared by vps-infer and lsp-edge's HTTP
/// endpoint: `{"error": {"code", "type", "message"}}`, answered with status `code`.
pub fn assert_error(status: u16, body: &serde_json::Value, code: u16, kind: &str) {
    assert_eq!(status, code, "{body}");
    assert_eq!(body["error"]["code"], code, "{body}");
    assert_eq!(body["error"]["type"], kind, "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .is_some_and(|m| !m.is_empty()),
        "{body}"
    );
}

/// Parses a `text/event-stream` body into the JSON payloads of its `data:` lines.
pub fn sse_events(body: &str) -> Vec<serde_json::Value> {
    body.lines()
        .filter_map(|line| line.strip_prefix("data:"))
        .map(|data| {
            serde_json::from_str(data.trim())
                .unwrap_or_else(|e| panic!("SSE data is not JSON ({e}): {data}"))
        })
        .collect()
}

/// One HTTP/1.1 request read off `stream` by a fake backend: its request line and its
/// body (by `content-length`). `None` when the peer closed or sent less than it said.
pub fn read_http_request(stream: &TcpStream) -> Option<(String, Vec<u8>)> {
    let mut reader = BufReader::new(stream.try_clone().ok()?);
    let mut request_line = String::new();
    if reader.read_line(&mut request_line).unwrap_or(0) == 0 {
        return None;
    }
    let mut length = 0;
    loop {
        let mut header = String::new();
        if reader.read_line(&mut header).unwrap_or(0) == 0 {
            return None;
        }
        if header.trim().is_empty() {
            break;
        }
        if let Some((name, value)) = header.split_once(':') {
            if name.eq_ignore_ascii_case("content-length") {
                length = value.trim().parse().unwrap_or(0);
            }
        }
    }
    let mut body = vec![0; length];
    reader.read_exact(&mut body).ok()?;
    Some((request_line, body))
}

/// Serves every connection `listener` accepts on a thread of its own with `serve`, for
/// as long as the process lives (fake backends).
pub fn serve_connections(listener: TcpListener, serve: impl Fn(TcpStream) + Send + Sync + 'static) {
    let serve = std::sync::Arc::new(serve);
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            let serve = serve.clone();
            std::thread::spawn(move || serve(stream));
        }
    });
}

#[cfg(test)]
mod tests {
    #[test]
    fn free_ports_are_never_handed_out_twice() {
        let mut ports: Vec<u16> = (0..500).map(|_| super::free_port()).collect();
        ports.sort_unstable();
        ports.dedup();
        assert_eq!(ports.len(), 500);
    }
}
