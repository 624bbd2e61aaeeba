//! Editor set-ups: the Helix config is valid and its command really bridges to an edge,
//! and every editor's config lists every language lsp-edge parses.
//!
//! The VS Code extension has its own build and tests (`editors/vscode/ci.sh`); the Neovim
//! plugin is driven by a real headless Neovim in `nvim_e2e.rs`.

use std::io::{Read, Write};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use cerebrum_context::Language;
use cerebrum_tests::workspace_root;

fn helix_config() -> toml::Table {
    let path = workspace_root().join("editors/helix/languages.toml");
    let text = std::fs::read_to_string(&path).unwrap();
    toml::from_str(&text).unwrap_or_else(|e| panic!("{} is not valid TOML: {e}", path.display()))
}

/// `(command, args)` of the `cerebrum` language server.
fn helix_command(config: &toml::Table) -> (String, Vec<String>) {
    let server = config["language-server"]["cerebrum"]
        .as_table()
        .expect("[language-server.cerebrum]");
    let command = server["command"].as_str().expect("command").to_string();
    let args = server["args"]
        .as_array()
        .expect("args")
        .iter()
        .map(|a| a.as_str().expect("string args").to_string())
        .collect();
    (command, args)
}

#[test]
fn helix_config_adds_cerebrum_beside_the_usual_servers() {
    let config = helix_config();
    let (command, args) = helix_command(&config);
    assert_eq!(command, "lsp-edge");
    assert_eq!(args.len(), 2, "lsp-edge connect HOST:PORT, got {args:?}");
    assert_eq!(args[0], "connect");
    let (host, port) = args[1].rsplit_once(':').expect("HOST:PORT");
    assert!(!host.is_empty(), "host in {}", args[1]);
    port.parse::<u16>()
        .unwrap_or_else(|_| panic!("port in {}", args[1]));
    assert!(
        config["language-server"]["cerebrum"]["config"]
            .get("token")
            .is_some_and(|t| t.is_str()),
        "the session token goes in [language-server.cerebrum.config] (initializationOptions)"
    );

    let languages = config["language"].as_array().expect("[[language]]");
    for (name, usual) in [
        ("python", "pylsp"),
        ("rust", "rust-analyzer"),
        ("typescript", "typescript-language-server"),
        ("javascript", "typescript-language-server"),
        ("go", "gopls"),
        ("c", "clangd"),
        ("java", "jdtls"),
    ] {
        let language = languages
            .iter()
            .find(|l| l["name"].as_str() == Some(name))
            .unwrap_or_else(|| panic!("no [[language]] {name}"));
        let servers = language["language-servers"]
            .as_array()
            .expect("language-servers");
        assert!(
            servers.iter().any(|s| s.as_str() == Some(usual)),
            "{name} keeps {usual} beside cerebrum"
        );
        let cerebrum = servers
            .iter()
            .find(|s| s.get("name").and_then(|n| n.as_str()) == Some("cerebrum"))
            .unwrap_or_else(|| panic!("{name} lists cerebrum"));
        let features: Vec<&str> = cerebrum["only-features"]
            .as_array()
            .expect("only-features")
            .iter()
            .filter_map(|f| f.as_str())
            .collect();
        for feature in ["completion", "code-action"] {
            assert!(
                features.contains(&feature),
                "{name}: cerebrum has {feature}"
            );
        }
    }
}

/// The quoted words of the first line of `file` that contains `key`, e.g. a Lua
/// table or a TypeScript array written on one line.
fn quoted_on_line(file: &str, key: &str) -> Vec<String> {
    let text = std::fs::read_to_string(workspace_root().join(file)).expect(file);
    let line = text
        .lines()
        .find(|line| line.contains(key))
        .unwrap_or_else(|| panic!("no {key} in {file}"));
    line.split(['\'', '"'])
        .skip(1)
        .step_by(2)
        .map(str::to_owned)
        .collect()
}

/// A language added to the context crate's table reaches every editor: the names are
/// the table's (they are the LSP language ids, Neovim's filetypes and Helix's names).
#[test]
fn every_editor_lists_every_parsed_language() {
    let helix = helix_config();
    let helix_names: Vec<&str> = helix["language"]
        .as_array()
        .expect("[[language]]")
        .iter()
        .filter_map(|l| l["name"].as_str())
        .collect();
    let nvim = quoted_on_line("editors/nvim/lua/cerebrum/init.lua", "filetypes =");
    let vscode_defaults = quoted_on_line("editors/vscode/src/settings.ts", "languages: [");
    let package: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(workspace_root().join("editors/vscode/package.json"))
            .expect("package.json"),
    )
    .expect("package.json is JSON");
    let activation = package["activationEvents"]
        .as_array()
        .expect("activationEvents");
    let selector =
        &package["contributes"]["configuration"]["properties"]["cerebrum.languages"]["default"];
    for language in Language::PARSED {
        let name = language.name();
        assert!(helix_names.contains(&name), "helix lists {name}");
        assert!(
            nvim.iter().any(|n| n == name),
            "neovim's filetypes list {name}"
        );
        assert!(
            vscode_defaults.iter().any(|n| n == name),
            "DEFAULT_SETTINGS.languages lists {name}"
        );
        assert!(
            activation.contains(&serde_json::json!(format!("onLanguage:{name}"))),
            "package.json activates on {name}"
        );
        assert!(
            selector
                .as_array()
                .is_some_and(|ids| ids.contains(&serde_json::json!(name))),
            "package.json's cerebrum.languages default lists {name}"
        );
    }
    // The two lists of VS Code defaults are one list.
    assert_eq!(selector, &serde_json::json!(vscode_defaults));
}

/// lsp-edge alone (vps-infer, and with it llama.cpp, is not needed here), built with
/// the profile and target folder of this test; `CEREBRUM_BIN_DIR` points at a prebuilt one.
fn lsp_edge() -> PathBuf {
    if let Some(dir) = std::env::var_os("CEREBRUM_BIN_DIR") {
        return Path::new(&dir).join("lsp-edge");
    }
    let exe = std::env::current_exe().unwrap();
    let profile_dir = exe.parent().and_then(Path::parent).unwrap().to_path_buf();
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut cmd = Command::new(cargo);
    cmd.current_dir(workspace_root())
        .args(["build", "--quiet", "-p", "lsp-edge", "--bin", "lsp-edge"])
        .env("CARGO_TARGET_DIR", profile_dir.parent().unwrap());
    if profile_dir.ends_with("release") {
        cmd.arg("--release");
    }
    assert!(cmd.status().unwrap().success(), "building lsp-edge failed");
    profile_dir.join("lsp-edge")
}

fn frame(json: &str) -> Vec<u8> {
    format!("Content-Length: {}\r\n\r\n{json}", json.len()).into_bytes()
}

/// Reads from `r` until `want` bytes arrived or the reader ends.
fn read_exactly(r: &mut impl Read, want: usize) -> Vec<u8> {
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    while got.len() < want {
        match r.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => got.extend_from_slice(&buf[..n]),
        }
    }
    got
}

/// What Helix runs, `lsp-edge connect HOST:PORT`, carries LSP messages both ways
/// between its stdio and a TCP server.
#[test]
fn helix_command_bridges_stdio_to_the_edge() {
    let (command, mut args) = helix_command(&helix_config());
    assert_eq!(command, "lsp-edge");
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    args[1] = addr.to_string();

    let mut bridge = Command::new(lsp_edge())
        .args(&args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start lsp-edge connect");

    listener.set_nonblocking(true).unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut server = loop {
        match listener.accept() {
            Ok((stream, _)) => break stream,
            Err(_) if Instant::now() < deadline => {
                if let Ok(Some(status)) = bridge.try_wait() {
                    let mut err = String::new();
                    bridge
                        .stderr
                        .take()
                        .unwrap()
                        .read_to_string(&mut err)
                        .unwrap();
                    panic!(
                        "`lsp-edge {}` exited with {status} without connecting to {addr}; \
                         stderr:\n{err}",
                        args.join(" ")
                    );
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            Err(e) => {
                let _ = bridge.kill();
                panic!(
                    "`lsp-edge {}` never connected to {addr}: {e}",
                    args.join(" ")
                );
            }
        }
    };
    server.set_nonblocking(false).unwrap();
    server
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();

    let request =
        frame(r#"{"jsonrpc":"2.0","id":1,"method":"initialize","params":{"capabilities":{}}}"#);
    bridge.stdin.as_mut().unwrap().write_all(&request).unwrap();
    let received = read_exactly(&mut server, request.len());
    assert_eq!(
        String::from_utf8_lossy(&received),
        String::from_utf8_lossy(&request),
        "stdin reaches the TCP server"
    );

    let response = frame(r#"{"jsonrpc":"2.0","id":1,"result":{"capabilities":{}}}"#);
    server.write_all(&response).unwrap();
    let mut stdout = bridge.stdout.take().unwrap();
    let want = response.len();
    let reader = std::thread::spawn(move || read_exactly(&mut stdout, want));
    // Closing the server side ends the bridge, which ends its stdout.
    std::thread::sleep(Duration::from_millis(200));
    drop(server);
    let deadline = Instant::now() + Duration::from_secs(30);
    while !reader.is_finished() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = bridge.kill();
    let _ = bridge.wait();
    let sent = reader.join().unwrap();
    assert_eq!(
        String::from_utf8_lossy(&sent),
        String::from_utf8_lossy(&response),
        "the TCP server's answer reaches stdout"
    );
}
