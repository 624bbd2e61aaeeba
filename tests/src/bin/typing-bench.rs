//! `typing-bench`: how quickly ghost text follows typing, Cerebrum beside llama.cpp's own
//! server (`scripts/dev bench typing`).
//!
//! A run of lines is cut out of a real Python file and typed back one keystroke at a
//! time. Cerebrum (lsp-edge in front of vps-infer) gets what an editor sends: one
//! incremental `textDocument/didChange` per keystroke, then `textDocument/inlineCompletion`
//! with a `partialResultToken`, timed to the first `$/progress` partial result (or to the
//! answer when it comes without one). llama-server gets what llama.vim sends for the same
//! keystroke: `POST /infill` with llama.vim's window and `cache_prompt`, timed to the first
//! streamed token. Each request finishes before the next keystroke. Prompt tokens
//! evaluated per keystroke come from vps-infer's `/v1/stats` counter and from
//! llama-server's `timings.prompt_n`. The floor is an identical request repeated, sent to
//! each inference server directly.
//!
//! The systems run one after the other with the same model and threads, so they never
//! compete for the CPU; every service is stopped at the end, also on an error.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use cerebrum_tests::lsp_client::{inline_params, inline_text, LspClient, LspEdge};
use cerebrum_tests::typing::{
    self, KeyKind, Keystroke, Session, LLAMA_VIM_PREFIX_LINES, LLAMA_VIM_SUFFIX_LINES,
};
use cerebrum_tests::{binary, free_port, model_path, workspace_root, Service, TEST_API_KEY};
use clap::{Parser, ValueEnum};
use serde_json::{json, Value};

/// The default run: `Session.prepare_request`'s call to `p.prepare(...)` in requests'
/// `sessions.py`, 15 lines deep inside the file (over 256 lines before it, so that
/// llama.vim's window slides on every Enter as it does in any long file), mostly short
/// lines, so that a short session still holds several Enters.
const DEFAULT_FILE: &str = "tests/data/typing/requests_sessions.py";
const DEFAULT_FIRST_LINE: usize = 540;
const DEFAULT_LINES: usize = 15;

const URI: &str = "file:///bench/requests/sessions.py";

/// lsp-edge's configuration for the bench: its defaults, with timeouts that survive a
/// cold start on a busy machine (they only guard against hangs).
const EDGE_CONFIG: &str = r#"
[backend]
first_token_timeout_ms = 240000
total_timeout_ms = 240000
"#;

/// Context size of both inference servers.
const CTX_SIZE: u32 = 4096;

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Systems {
    Both,
    Cerebrum,
    LlamaServer,
}

/// Plays a scripted typing session against Cerebrum (lsp-edge + vps-infer) and
/// llama.cpp's llama-server, and prints warm time to first token and prompt tokens
/// evaluated per keystroke for each, plus the floor (an identical request repeated).
#[derive(Debug, Parser)]
#[command(name = "typing-bench")]
struct Args {
    /// Model name, as `scripts/fetch-model` knows it.
    #[arg(long, default_value = "qwen2.5-coder-0.5b")]
    model: String,
    /// Keystrokes to play (at most the whole run of lines).
    #[arg(long, default_value_t = 120)]
    keystrokes: usize,
    /// Print the results as JSON (per-keystroke samples included).
    #[arg(long)]
    json: bool,
    /// llama.cpp threads for both servers (default: every CPU).
    #[arg(long)]
    threads: Option<u32>,
    /// Tokens generated per request (lsp-edge's `completion.max_tokens`, llama-server's
    /// `n_predict`). Only the first token is timed: this bounds how long a keystroke
    /// takes to finish.
    #[arg(long, default_value_t = 16)]
    max_tokens: u32,
    /// Which systems to run.
    #[arg(long, value_enum, default_value_t = Systems::Both)]
    systems: Systems,
    /// The llama-server binary (default: built or found by `scripts/llama-cpp server`).
    #[arg(long, env = "CEREBRUM_LLAMA_SERVER")]
    llama_server: Option<PathBuf>,
    /// Folder holding the vps-infer and lsp-edge binaries (default: this binary's own).
    #[arg(long, env = "CEREBRUM_BIN_DIR")]
    bin_dir: Option<PathBuf>,
    /// The source file whose lines are typed back.
    #[arg(long)]
    file: Option<PathBuf>,
    /// First line typed back (one-based).
    #[arg(long, default_value_t = DEFAULT_FIRST_LINE)]
    first_line: usize,
    /// Lines typed back.
    #[arg(long, default_value_t = DEFAULT_LINES)]
    lines: usize,
    /// Requests at the starting position before the session (the first is cold).
    #[arg(long, default_value_t = 3)]
    warmup: usize,
    /// Repeats of the identical request for the floor.
    #[arg(long, default_value_t = 7)]
    floor_repeats: usize,
    /// Also write the JSON results to this file.
    #[arg(long)]
    save: Option<PathBuf>,
    /// One line per keystroke on stderr.
    #[arg(long)]
    verbose: bool,
    /// lsp-edge's `completion.fim_order`: `psm` (prefix first) or `spm` (suffix first,
    /// so typing at the cursor only changes the prompt's end).
    #[arg(long, default_value = "psm")]
    fim_order: String,
    /// A TOML file added to lsp-edge's configuration (e.g. a `[context]` section with
    /// other prompt windows), to measure what it costs a keystroke.
    #[arg(long)]
    edge_config: Option<PathBuf>,
}

/// One timed keystroke.
#[derive(Debug, Clone)]
struct Sample {
    kind: KeyKind,
    /// The cursor after the keystroke.
    cursor: (u32, u32),
    ttft: Duration,
    /// Whether a partial result (a streamed token) came before the answer.
    streamed: bool,
    prompt_tokens: Option<u64>,
    /// Prompt tokens the server took from its cache (vps-infer: the common prefix;
    /// llama-server: `timings.cache_n`).
    cached_tokens: Option<u64>,
    /// The start of what would be shown.
    shown: String,
    error: Option<String>,
}

/// What one system measured.
#[derive(Debug)]
struct SystemRun {
    name: &'static str,
    warmup: Vec<Duration>,
    /// Prompt tokens each warm-up evaluated (the first: the cold prompt).
    warmup_tokens: Vec<Option<u64>>,
    samples: Vec<Sample>,
    floor: Vec<Duration>,
}

fn main() -> Result<()> {
    let args = Args::parse();
    let bin_dir = match &args.bin_dir {
        Some(dir) => dir.clone(),
        None => std::env::current_exe()?
            .parent()
            .context("this binary has no folder")?
            .to_path_buf(),
    };
    // `cerebrum_tests::binary` finds vps-infer and lsp-edge through this variable.
    std::env::set_var("CEREBRUM_BIN_DIR", &bin_dir);

    let threads = args
        .threads
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(2, |n| n.get() as u32));
    let file = args
        .file
        .clone()
        .unwrap_or_else(|| workspace_root().join(DEFAULT_FILE));
    let text = std::fs::read_to_string(&file)
        .with_context(|| format!("cannot read {}", file.display()))?;
    if args.first_line == 0 {
        bail!("--first-line is one-based");
    }
    let mut session = typing::session(&text, args.first_line - 1, args.lines)
        .map_err(|e| anyhow::anyhow!("{}: {e}", file.display()))?;
    session.keystrokes.truncate(args.keystrokes.max(1));
    let model = model_path(&args.model);
    let load_before = load_average();

    stop_on_signal()?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    // A fresh connection per request: llama-server closes idle keep-alive connections,
    // and a request sent on one that is closing fails.
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(0)
        .build()
        .context("HTTP client")?;
    let mut runs = Vec::new();
    if args.systems != Systems::LlamaServer {
        progress(&format!(
            "Cerebrum: vps-infer and lsp-edge from {}",
            bin_dir.display()
        ));
        runs.push(run_cerebrum(
            &args, threads, &model, &session, &runtime, &http,
        )?);
    }
    if args.systems != Systems::Cerebrum {
        let server = match &args.llama_server {
            Some(path) => path.clone(),
            None => llama_server_binary()?,
        };
        progress(&format!("llama-server: {}", server.display()));
        runs.push(run_llama_server(
            &args, threads, &server, &model, &session, &runtime, &http,
        )?);
    }

    let report = Report {
        args: &args,
        threads,
        file: &file,
        session: &session,
        runs: &runs,
        load: (load_before, load_average()),
    };
    let json = serde_json::to_string_pretty(&report.json())?;
    if let Some(path) = &args.save {
        std::fs::write(path, &json).with_context(|| format!("cannot write {}", path.display()))?;
    }
    if args.json {
        println!("{json}");
    } else {
        print!("{}", report.table());
    }
    Ok(())
}

/// Services running now, stopped by [`stop_on_signal`] when the bench is interrupted
/// (dropping them stops them otherwise).
static RUNNING: Mutex<Vec<u32>> = Mutex::new(Vec::new());

fn started(service: &Service) {
    RUNNING
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .push(service.pid());
}

fn stopped(service: &Service) {
    RUNNING
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .retain(|&pid| pid != service.pid());
}

/// On SIGINT or SIGTERM, stops the services that are running and exits: a signal ends
/// the process without unwinding, so the services' `Drop` would not run and they would
/// outlive the bench.
fn stop_on_signal() -> Result<()> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    std::thread::spawn(move || {
        runtime.block_on(async {
            use tokio::signal::unix::{signal, SignalKind};
            let (Ok(mut interrupt), Ok(mut terminate)) = (
                signal(SignalKind::interrupt()),
                signal(SignalKind::terminate()),
            ) else {
                return;
            };
            tokio::select! {
                _ = interrupt.recv() => {}
                _ = terminate.recv() => {}
            }
            let pids = RUNNING.lock().unwrap_or_else(|e| e.into_inner()).clone();
            for pid in pids {
                let _ = Command::new("kill")
                    .args(["-TERM", &pid.to_string()])
                    .status();
            }
            progress("interrupted; services stopped");
            std::process::exit(130);
        });
    });
    Ok(())
}

fn progress(message: &str) {
    eprintln!("typing-bench: {message}");
}

/// `scripts/llama-cpp server`: waits for (or runs) the build and prints the binary.
fn llama_server_binary() -> Result<PathBuf> {
    let script = workspace_root().join("scripts/llama-cpp");
    progress("finding llama-server (scripts/llama-cpp server; the first build takes minutes)");
    let out = Command::new(&script)
        .arg("server")
        .stderr(std::process::Stdio::inherit())
        .output()
        .with_context(|| format!("cannot run {}", script.display()))?;
    if !out.status.success() {
        bail!("scripts/llama-cpp server failed (see above)");
    }
    let path = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
    if !path.is_file() {
        bail!("scripts/llama-cpp printed {path:?}, which is no file");
    }
    Ok(path)
}

fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

// ---------------------------------------------------------------------------------------
// Cerebrum: lsp-edge over LSP, in front of vps-infer.

fn run_cerebrum(
    args: &Args,
    threads: u32,
    model: &Path,
    session: &Session,
    runtime: &tokio::runtime::Runtime,
    http: &reqwest::Client,
) -> Result<SystemRun> {
    let addr: SocketAddr = ([127, 0, 0, 1], free_port()).into();
    let mut cmd = Command::new(binary("vps-infer"));
    cmd.arg("--listen")
        .arg(addr.to_string())
        .arg("--model")
        .arg(format!("{}={}", args.model, model.display()))
        .arg("--threads")
        .arg(threads.to_string())
        .arg("--ctx-size")
        .arg(CTX_SIZE.to_string())
        .env("CEREBRUM_API_KEY", TEST_API_KEY)
        // The bench machine may be busy with other work: vps-infer's guards would
        // refuse requests then, which is not what is measured.
        .env("CEREBRUM_GUARD_MAX_CPU_PERCENT", "100")
        .env("CEREBRUM_GUARD_MIN_FREE_MEMORY_MB", "0")
        .env("RUST_LOG", "info");
    let mut infer = Service::spawn("vps-infer", cmd, addr);
    started(&infer);
    let infer_url = format!("http://{addr}");
    let extra = match &args.edge_config {
        Some(path) => std::fs::read_to_string(path)
            .with_context(|| format!("cannot read --edge-config {}", path.display()))?,
        None => String::new(),
    };
    let mut edge = LspEdge::start(
        &infer_url,
        TEST_API_KEY,
        &format!("{EDGE_CONFIG}{extra}"),
        // As `scripts/dev run` starts it: lsp-edge names no model, learns vps-infer's
        // default and gives the prompt that model's windows.
        &[],
    );
    started(&edge.service);
    let result = play_cerebrum(args, session, runtime, http, &infer_url, &edge);
    if let Err(err) = &result {
        eprintln!(
            "typing-bench: Cerebrum failed: {err:#}\n---- vps-infer ----\n{}\n---- lsp-edge ----\n{}",
            infer.log(),
            edge.service.log()
        );
    }
    edge.service.terminate(Duration::from_secs(10));
    stopped(&edge.service);
    infer.terminate(Duration::from_secs(10));
    stopped(&infer);
    result
}

fn play_cerebrum(
    args: &Args,
    session: &Session,
    runtime: &tokio::runtime::Runtime,
    http: &reqwest::Client,
    infer_url: &str,
    edge: &LspEdge,
) -> Result<SystemRun> {
    let mut client = edge.client();
    client.initialize(
        json!({"completion": {
            "temperature": 0.0,
            "max_tokens": args.max_tokens,
            "fim_order": args.fim_order,
        }}),
        json!({"general": {"positionEncodings": ["utf-16"]}}),
    );
    client.did_open(URI, "python", 1, &session.initial);
    let stats = || runtime.block_on(vps_infer_stats(http, infer_url));

    let mut warmup = Vec::new();
    let mut warmup_tokens = Vec::new();
    for i in 0..args.warmup {
        let before = stats()?;
        let started = Instant::now();
        let sample = lsp_inline(&mut client, session.start, &format!("warmup-{i}"), started);
        let tokens = stats()?.0 - before.0;
        progress(&format!(
            "Cerebrum warm-up {}: {} ms, {tokens} prompt tokens",
            i + 1,
            sample.ttft.as_millis()
        ));
        if let Some(error) = sample.error {
            bail!("warm-up request failed: {error}");
        }
        warmup.push(sample.ttft);
        warmup_tokens.push(Some(tokens));
    }

    let mut samples = Vec::new();
    let total = session.keystrokes.len();
    for (n, keystroke) in session.keystrokes.iter().enumerate() {
        let before = stats()?;
        let started = Instant::now();
        client.did_change(
            URI,
            n as i32 + 2,
            keystroke.at,
            keystroke.at,
            &keystroke.text,
        );
        let mut sample = lsp_inline(&mut client, keystroke.cursor, &format!("k{n}"), started);
        let after = stats()?;
        sample.kind = keystroke.kind;
        sample.prompt_tokens = Some(after.0 - before.0);
        sample.cached_tokens = Some(after.1 - before.1);
        report_keystroke(args, "Cerebrum", n, total, keystroke, &sample);
        samples.push(sample);
    }
    check_errors("Cerebrum", &samples)?;

    // The floor: the request vps-infer would get at the final cursor, repeated.
    let last = session
        .keystrokes
        .last()
        .map_or(session.start, |k| k.cursor);
    let mut text = session.initial.clone();
    for keystroke in &session.keystrokes {
        typing::apply(&mut text, keystroke);
    }
    let window =
        typing::llama_vim_window(&text, last, LLAMA_VIM_PREFIX_LINES, LLAMA_VIM_SUFFIX_LINES);
    let body = json!({
        "prompt": format!("{}{}", window.prefix, window.middle),
        "suffix": window.suffix,
        "max_tokens": args.max_tokens,
        "temperature": 0.0,
        "stream": true,
    });
    let floor = runtime.block_on(floor(args.floor_repeats, || {
        vps_infer_first_token(http, infer_url, &body)
    }))?;
    client.shutdown();
    Ok(SystemRun {
        name: "Cerebrum",
        warmup,
        warmup_tokens,
        samples,
        floor,
    })
}

/// Requests an inline completion at `cursor` and waits for its answer; `ttft` runs from
/// `started` to the first partial result, or to the answer if none came before it.
fn lsp_inline(client: &mut LspClient, cursor: (u32, u32), token: &str, started: Instant) -> Sample {
    let id = client.send_request(
        "textDocument/inlineCompletion",
        inline_params(URI, cursor.0, cursor.1, Some(token)),
    );
    let (_, first) = client.wait_for("a partial result or the answer", |m| {
        (m["method"] == "$/progress" && m["params"]["token"] == token)
            || (m.get("method").is_none() && m["id"] == id)
    });
    let ttft = started.elapsed();
    let streamed = first["method"] == "$/progress";
    let response = client.response(id);
    let (shown, error) = match &response.outcome {
        Ok(result) => (inline_text(result).unwrap_or_default(), None),
        Err(error) => (String::new(), Some(error.to_string())),
    };
    Sample {
        kind: KeyKind::Char,
        cursor,
        ttft,
        streamed,
        prompt_tokens: None,
        cached_tokens: None,
        shown,
        error,
    }
}

/// vps-infer's `(prompt_tokens_evaluated, prompt_tokens_reused)` counters.
async fn vps_infer_stats(http: &reqwest::Client, url: &str) -> Result<(u64, u64)> {
    let stats: Value = http
        .get(format!("{url}/v1/stats"))
        .header("X-API-Key", TEST_API_KEY)
        .send()
        .await?
        .error_for_status()?
        .json()
        .await?;
    let counter = |name: &str| {
        stats[name]
            .as_u64()
            .with_context(|| format!("/v1/stats has no {name}: {stats}"))
    };
    Ok((
        counter("prompt_tokens_evaluated")?,
        counter("prompt_tokens_reused")?,
    ))
}

/// Time to the first `token` event of a streamed `/v1/inference`; reads the stream to
/// its end.
async fn vps_infer_first_token(
    http: &reqwest::Client,
    url: &str,
    body: &Value,
) -> Result<Duration> {
    let started = Instant::now();
    let mut response = http
        .post(format!("{url}/v1/inference"))
        .header("X-API-Key", TEST_API_KEY)
        .json(body)
        .send()
        .await?;
    if !response.status().is_success() {
        let status = response.status();
        bail!("vps-infer answered {status}: {}", response.text().await?);
    }
    let mut sse = SseLines::default();
    let mut first = None;
    while let Some(chunk) = response.chunk().await? {
        for event in sse.push(&chunk) {
            if first.is_none() && event.get("token").is_some() {
                first = Some(started.elapsed());
            }
            if let Some(error) = event.get("error") {
                bail!("vps-infer: {error}");
            }
        }
    }
    first.context("vps-infer generated no token")
}

// ---------------------------------------------------------------------------------------
// llama-server, played as llama.vim drives it.

fn run_llama_server(
    args: &Args,
    threads: u32,
    server: &Path,
    model: &Path,
    session: &Session,
    runtime: &tokio::runtime::Runtime,
    http: &reqwest::Client,
) -> Result<SystemRun> {
    let port = free_port();
    let addr: SocketAddr = ([127, 0, 0, 1], port).into();
    let mut cmd = Command::new(server);
    cmd.arg("-m")
        .arg(model)
        .args(["-t", &threads.to_string()])
        .args(["-c", &CTX_SIZE.to_string()])
        .args(["-np", "1", "--cache-reuse", "256"])
        .args(["--host", "127.0.0.1", "--port", &port.to_string()]);
    let mut service = Service::spawn("llama-server", cmd, addr);
    started(&service);
    let url = format!("http://{addr}");
    let result = runtime
        .block_on(wait_healthy(http, &url))
        .and_then(|()| play_llama_server(args, session, runtime, http, &url));
    if let Err(err) = &result {
        eprintln!(
            "typing-bench: llama-server failed: {err:#}\n---- llama-server ----\n{}",
            service.log()
        );
    }
    service.terminate(Duration::from_secs(10));
    stopped(&service);
    result
}

/// Waits until llama-server has loaded the model (`/health` answers 200).
async fn wait_healthy(http: &reqwest::Client, url: &str) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(300);
    loop {
        if let Ok(response) = http.get(format!("{url}/health")).send().await {
            if response.status().is_success() {
                return Ok(());
            }
        }
        if Instant::now() > deadline {
            bail!("llama-server did not become healthy within 300 s");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn play_llama_server(
    args: &Args,
    session: &Session,
    runtime: &tokio::runtime::Runtime,
    http: &reqwest::Client,
    url: &str,
) -> Result<SystemRun> {
    let mut text = session.initial.clone();
    let mut warmup = Vec::new();
    let mut warmup_tokens = Vec::new();
    for i in 0..args.warmup {
        let body = infill_body(args, &text, session.start);
        let sample = runtime.block_on(infill(http, url, &body, session.start))?;
        progress(&format!(
            "llama-server warm-up {}: {} ms, {} prompt tokens",
            i + 1,
            sample.ttft.as_millis(),
            sample.prompt_tokens.map_or("?".into(), |n| n.to_string())
        ));
        warmup.push(sample.ttft);
        warmup_tokens.push(sample.prompt_tokens);
    }

    let mut samples = Vec::new();
    let total = session.keystrokes.len();
    for (n, keystroke) in session.keystrokes.iter().enumerate() {
        typing::apply(&mut text, keystroke);
        let body = infill_body(args, &text, keystroke.cursor);
        let mut sample = match runtime.block_on(infill(http, url, &body, keystroke.cursor)) {
            Ok(sample) => sample,
            Err(err) => Sample {
                kind: keystroke.kind,
                cursor: keystroke.cursor,
                ttft: Duration::ZERO,
                streamed: false,
                prompt_tokens: None,
                cached_tokens: None,
                shown: String::new(),
                error: Some(format!("{err:#}")),
            },
        };
        sample.kind = keystroke.kind;
        report_keystroke(args, "llama-server", n, total, keystroke, &sample);
        samples.push(sample);
    }
    check_errors("llama-server", &samples)?;

    let last = session
        .keystrokes
        .last()
        .map_or(session.start, |k| k.cursor);
    let body = infill_body(args, &text, last);
    let floor = runtime.block_on(floor(args.floor_repeats, || async {
        infill(http, url, &body, last).await.map(|s| s.ttft)
    }))?;
    Ok(SystemRun {
        name: "llama-server",
        warmup,
        warmup_tokens,
        samples,
        floor,
    })
}

/// llama.vim's `/infill` request at `cursor` (autoload/llama.vim, `llama#fim`), with
/// no extra context chunks and greedy sampling in place of its `top_k`/`top_p`/`infill`
/// samplers, streamed so that the first token can be timed.
fn infill_body(args: &Args, text: &str, cursor: (u32, u32)) -> Value {
    let window =
        typing::llama_vim_window(text, cursor, LLAMA_VIM_PREFIX_LINES, LLAMA_VIM_SUFFIX_LINES);
    json!({
        "input_prefix": window.prefix,
        "input_suffix": window.suffix,
        "input_extra": [],
        "prompt": window.middle,
        "n_predict": args.max_tokens,
        "n_indent": window.indent,
        "temperature": 0.0,
        "top_k": 1,
        "stream": true,
        "cache_prompt": true,
    })
}

/// One streamed `/infill`: time to the first event with text (or to the end when no
/// text comes), and the final event's `timings`.
async fn infill(
    http: &reqwest::Client,
    url: &str,
    body: &Value,
    cursor: (u32, u32),
) -> Result<Sample> {
    let started = Instant::now();
    let mut response = http.post(format!("{url}/infill")).json(body).send().await?;
    if !response.status().is_success() {
        let status = response.status();
        bail!("llama-server answered {status}: {}", response.text().await?);
    }
    let mut sse = SseLines::default();
    let mut first = None;
    let mut shown = String::new();
    let mut timings = None;
    while let Some(chunk) = response.chunk().await? {
        for event in sse.push(&chunk) {
            if let Some(error) = event.get("error") {
                bail!("llama-server: {error}");
            }
            let content = event["content"].as_str().unwrap_or_default();
            if !content.is_empty() && first.is_none() {
                first = Some(started.elapsed());
            }
            shown.push_str(content);
            if event["stop"] == true {
                timings = Some(event["timings"].clone());
            }
        }
    }
    let end = started.elapsed();
    let timings = timings.context("llama-server's stream ended without its final event")?;
    Ok(Sample {
        kind: KeyKind::Char,
        cursor,
        ttft: first.unwrap_or(end),
        streamed: first.is_some(),
        prompt_tokens: timings["prompt_n"].as_u64(),
        cached_tokens: timings["cache_n"].as_u64(),
        shown,
        error: None,
    })
}

// ---------------------------------------------------------------------------------------
// Shared pieces.

/// The floor: one request to fill the cache, then `repeats` identical ones, each timed
/// to its first token.
async fn floor<F, Fut>(repeats: usize, request: F) -> Result<Vec<Duration>>
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = Result<Duration>>,
{
    request().await.context("the floor's first request")?;
    let mut times = Vec::new();
    for _ in 0..repeats.max(1) {
        times.push(request().await.context("a floor request")?);
    }
    Ok(times)
}

/// Splits a `text/event-stream` into the JSON payloads of its `data:` lines, across
/// chunk boundaries.
#[derive(Default)]
struct SseLines {
    pending: Vec<u8>,
}

impl SseLines {
    fn push(&mut self, chunk: &[u8]) -> Vec<Value> {
        self.pending.extend_from_slice(chunk);
        let mut events = Vec::new();
        while let Some(end) = self.pending.iter().position(|&b| b == b'\n') {
            let line: Vec<u8> = self.pending.drain(..=end).collect();
            let line = String::from_utf8_lossy(&line);
            if let Some(data) = line.trim_end().strip_prefix("data:") {
                // Non-JSON data (an end marker) carries nothing we measure.
                if let Ok(value) = serde_json::from_str(data.trim()) {
                    events.push(value);
                }
            }
        }
        events
    }
}

fn report_keystroke(
    args: &Args,
    system: &str,
    n: usize,
    total: usize,
    keystroke: &Keystroke,
    sample: &Sample,
) {
    if args.verbose || (n + 1) % 20 == 0 || n + 1 == total || sample.error.is_some() {
        progress(&format!(
            "{system} {}/{total} {:<5} {:?}: {} ms, {} prompt tokens{}",
            n + 1,
            keystroke.kind,
            keystroke.text,
            sample.ttft.as_millis(),
            sample
                .prompt_tokens
                .map_or("?".to_owned(), |t| t.to_string()),
            sample
                .error
                .as_ref()
                .map_or(String::new(), |e| format!(", error: {e}")),
        ));
    }
}

/// A few failed requests are reported; a session where most fail measured nothing.
fn check_errors(system: &str, samples: &[Sample]) -> Result<()> {
    let failed = samples.iter().filter(|s| s.error.is_some()).count();
    if failed * 10 > samples.len() {
        bail!(
            "{system}: {failed} of {} keystrokes failed; first error: {}",
            samples.len(),
            samples
                .iter()
                .find_map(|s| s.error.clone())
                .unwrap_or_default()
        );
    }
    Ok(())
}

/// The nearest-rank percentile of sorted values (`p` in 0..=100).
fn percentile<T: Copy>(sorted: &[T], p: f64) -> Option<T> {
    if sorted.is_empty() {
        return None;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    Some(sorted[rank.clamp(1, sorted.len()) - 1])
}

/// The keystroke groups the figures are split into.
const GROUPS: [(&str, &str, Option<KeyKind>); 3] = [
    ("all", "all keystrokes", None),
    ("within_line", "within a line", Some(KeyKind::Char)),
    ("enter", "Enter", Some(KeyKind::Enter)),
];

/// The figures of one group of keystrokes (failed ones left out).
struct Summary {
    n: usize,
    ttft_ms: [Option<f64>; 2],
    tokens_mean: Option<f64>,
    tokens: [Option<u64>; 2],
    streamed: usize,
}

fn summarize(samples: &[Sample], kind: Option<KeyKind>) -> Summary {
    let ok: Vec<&Sample> = samples
        .iter()
        .filter(|s| s.error.is_none() && kind.is_none_or(|k| s.kind == k))
        .collect();
    let mut ttft: Vec<f64> = ok.iter().map(|s| ms(s.ttft)).collect();
    ttft.sort_by(f64::total_cmp);
    let mut tokens: Vec<u64> = ok.iter().filter_map(|s| s.prompt_tokens).collect();
    tokens.sort_unstable();
    Summary {
        n: ok.len(),
        ttft_ms: [percentile(&ttft, 50.0), percentile(&ttft, 90.0)],
        tokens_mean: (!tokens.is_empty())
            .then(|| tokens.iter().sum::<u64>() as f64 / tokens.len() as f64),
        tokens: [percentile(&tokens, 50.0), percentile(&tokens, 90.0)],
        streamed: ok.iter().filter(|s| s.streamed).count(),
    }
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn floor_p50(floor: &[Duration]) -> Option<f64> {
    let mut times: Vec<f64> = floor.iter().copied().map(ms).collect();
    times.sort_by(f64::total_cmp);
    percentile(&times, 50.0)
}

struct Report<'a> {
    args: &'a Args,
    threads: u32,
    file: &'a Path,
    session: &'a Session,
    runs: &'a [SystemRun],
    load: (String, String),
}

impl Report<'_> {
    fn cpu() -> String {
        std::fs::read_to_string("/proc/cpuinfo")
            .ok()
            .and_then(|info| {
                info.lines()
                    .find(|l| l.starts_with("model name"))
                    .and_then(|l| l.split(':').nth(1))
                    .map(|m| m.trim().to_owned())
            })
            .unwrap_or_else(|| "unknown".into())
    }

    fn enters(&self) -> usize {
        self.session
            .keystrokes
            .iter()
            .filter(|k| k.kind == KeyKind::Enter)
            .count()
    }

    fn table(&self) -> String {
        let fmt_ms = |v: Option<f64>| v.map_or("-".to_owned(), |v| format!("{v:.0}"));
        let fmt_n = |v: Option<u64>| v.map_or("-".to_owned(), |v| v.to_string());
        let keys = self.session.keystrokes.len();
        let mut out = format!(
            "Typing session: {} lines {}-{}, {} keystrokes ({} within a line, {} Enter)\n\
             model {}, {} threads, {} tokens per request; {} CPUs ({}), load {} -> {}\n\n",
            self.file.display(),
            self.args.first_line,
            self.args.first_line + self.args.lines - 1,
            keys,
            keys - self.enters(),
            self.enters(),
            self.args.model,
            self.threads,
            self.args.max_tokens,
            std::thread::available_parallelism().map_or(0, |n| n.get()),
            Self::cpu(),
            self.load.0,
            self.load.1,
        );
        out.push_str(&format!(
            "{:<13} {:<15} {:>4} {:>9} {:>9} {:>8} {:>8} {:>8}\n",
            "system", "keystrokes", "n", "TTFT p50", "TTFT p90", "tok mean", "tok p50", "tok p90"
        ));
        for run in self.runs {
            for (i, (_, label, kind)) in GROUPS.iter().enumerate() {
                let s = summarize(&run.samples, *kind);
                out.push_str(&format!(
                    "{:<13} {:<15} {:>4} {:>6} ms {:>6} ms {:>8} {:>8} {:>8}\n",
                    if i == 0 { run.name } else { "" },
                    label,
                    s.n,
                    fmt_ms(s.ttft_ms[0]),
                    fmt_ms(s.ttft_ms[1]),
                    s.tokens_mean.map_or("-".to_owned(), |m| format!("{m:.0}")),
                    fmt_n(s.tokens[0]),
                    fmt_n(s.tokens[1]),
                ));
            }
        }
        out.push_str("\nFloor (an identical request repeated, time to first token, p50):\n");
        for run in self.runs {
            let all = summarize(&run.samples, None);
            let floor = floor_p50(&run.floor);
            let ratio = |v: Option<f64>| match (v, floor) {
                (Some(v), Some(f)) if f > 0.0 => format!("{:.1}x", v / f),
                _ => "-".into(),
            };
            out.push_str(&format!(
                "  {:<13} {:>6} ms   (TTFT p50 = {} the floor, p90 = {})\n",
                run.name,
                fmt_ms(floor),
                ratio(all.ttft_ms[0]),
                ratio(all.ttft_ms[1]),
            ));
        }
        for run in self.runs {
            let s = summarize(&run.samples, None);
            let failed = run.samples.iter().filter(|s| s.error.is_some()).count();
            out.push_str(&format!(
                "{}: {} of {} answers streamed a token before the answer; {} failed; warm-up {}\n",
                run.name,
                s.streamed,
                s.n,
                failed,
                run.warmup
                    .iter()
                    .zip(&run.warmup_tokens)
                    .map(|(d, tokens)| match tokens {
                        Some(n) => format!("{:.0} ms ({n} prompt tokens)", ms(*d)),
                        None => format!("{:.0} ms", ms(*d)),
                    })
                    .collect::<Vec<_>>()
                    .join(", "),
            ));
        }
        out
    }

    fn json(&self) -> Value {
        let systems: Vec<Value> = self
            .runs
            .iter()
            .map(|run| {
                let mut summary = serde_json::Map::new();
                for (key, _, kind) in GROUPS {
                    let s = summarize(&run.samples, kind);
                    summary.insert(
                        key.into(),
                        json!({
                            "n": s.n,
                            "streamed": s.streamed,
                            "ttft_ms": {"p50": s.ttft_ms[0], "p90": s.ttft_ms[1]},
                            "prompt_tokens": {
                                "mean": s.tokens_mean,
                                "p50": s.tokens[0],
                                "p90": s.tokens[1],
                            },
                        }),
                    );
                }
                let samples: Vec<Value> = run
                    .samples
                    .iter()
                    .map(|s| {
                        json!({
                            "kind": s.kind.to_string(),
                            "line": s.cursor.0 + 1,
                            "character": s.cursor.1,
                            "ttft_ms": ms(s.ttft),
                            "streamed": s.streamed,
                            "prompt_tokens": s.prompt_tokens,
                            "cached_tokens": s.cached_tokens,
                            "shown": s.shown.chars().take(80).collect::<String>(),
                            "error": s.error,
                        })
                    })
                    .collect();
                json!({
                    "system": run.name,
                    "summary": summary,
                    "floor_ms": {
                        "p50": floor_p50(&run.floor),
                        "samples": run.floor.iter().map(|d| ms(*d)).collect::<Vec<_>>(),
                    },
                    "warmup_ms": run.warmup.iter().map(|d| ms(*d)).collect::<Vec<_>>(),
                    "warmup_prompt_tokens": run.warmup_tokens,
                    "samples": samples,
                })
            })
            .collect();
        json!({
            "machine": {
                "cpus": std::thread::available_parallelism().map_or(0, |n| n.get()),
                "cpu": Self::cpu(),
                "load_before": self.load.0,
                "load_after": self.load.1,
            },
            "model": self.args.model,
            "threads": self.threads,
            "max_tokens": self.args.max_tokens,
            "fim_order": self.args.fim_order,
            "edge_config": self.args.edge_config.as_ref().map(|path| path.display().to_string()),
            "file": self.file.display().to_string(),
            "first_line": self.args.first_line,
            "lines": self.args.lines,
            "keystrokes": self.session.keystrokes.len(),
            "enters": self.enters(),
            "systems": systems,
        })
    }
}
