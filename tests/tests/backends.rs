//! lsp-edge over several backends, end to end: two real vps-infers, one killed in the
//! middle of an editor session; llama.cpp's own llama-server as a backend of kind
//! `llama-server` and of kind `openai`. No fakes: faults are real processes dying.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use cerebrum_tests::lsp_client::{
    inline_params, inline_text, LspClient, LspEdge, PATIENT_CONFIG as CONFIG,
};
use cerebrum_tests::{
    blocking_http, blocking_json, free_port, model_path, Service, VpsInfer, TEST_API_KEY,
};
use serde_json::{json, Value};

const SHAPES: &str = "import math\n\n\ndef area_of_circle(radius):\n    return math.pi * radius ** 2\n\n\ndef circumference_of_circle(radius):\n    ";

fn stats(edge: &LspEdge) -> Value {
    blocking_json("GET", &format!("http://{}/v1/stats", edge.http), None).1
}

fn health(edge: &LspEdge) -> Value {
    blocking_json("GET", &format!("http://{}/health", edge.http), None).1
}

/// `field` of each backend in `/v1/stats`.
fn per_backend(stats: &Value, field: &str) -> Vec<u64> {
    stats["backends"]
        .as_array()
        .unwrap_or_else(|| panic!("no backends in {stats}"))
        .iter()
        .map(|backend| {
            backend[field]
                .as_u64()
                .unwrap_or_else(|| panic!("{field} in {backend}"))
        })
        .collect()
}

/// Asks for an inline completion at the end of `SHAPES` in `uri`; the answer must
/// be a result, not an error.
fn complete(client: &mut LspClient, uri: &str) -> String {
    let response = client.request(
        "textDocument/inlineCompletion",
        inline_params(uri, 8, 4, None),
    );
    let result = response.result();
    inline_text(result).unwrap_or_default()
}

#[test]
fn a_session_carries_on_when_one_of_two_vps_infers_dies() {
    let mut first = VpsInfer::start_smol_one_thread();
    let second = VpsInfer::start_smol_one_thread();
    let edge = LspEdge::start_many(&[&first.url(), &second.url()], TEST_API_KEY, CONFIG, &[]);
    let mut client = edge.client();
    client.initialize(
        json!({"completion": {"temperature": 0.0, "max_tokens": 16}}),
        json!({}),
    );
    let (a, b) = ("file:///project/a.py", "file:///project/b.py");
    client.did_open(a, "python", 1, SHAPES);
    client.did_open(b, "python", 1, SHAPES);

    // The first document goes to the first backend, the second to the other.
    complete(&mut client, a);
    let after_a = per_backend(&stats(&edge), "generations");
    assert!(after_a[0] >= 1 && after_a[1] == 0, "{after_a:?}");
    complete(&mut client, b);
    let spread = stats(&edge);
    assert_eq!(per_backend(&spread, "documents"), [1, 1], "{spread}");
    let after_b = per_backend(&spread, "generations");
    assert!(after_b[1] >= 1, "{after_b:?}");
    // A document stays on its backend, where its prompt is cached.
    complete(&mut client, a);
    let again = per_backend(&stats(&edge), "generations");
    assert!(again[0] > after_b[0] && again[1] == after_b[1], "{again:?}");

    // The first backend dies in the middle of a completion: that one may end in an
    // error; after it the documents move to the second backend, and the editor sees
    // answers, not errors.
    let c = "file:///project/count.py";
    let counting = "# Counting from one to two hundred: 1, 2, 3, 4, 5, 6, 7, 8, 9, 10,";
    client.did_open(c, "python", 1, counting);
    let id = client.send_request(
        "textDocument/inlineCompletion",
        inline_params(c, 0, counting.len() as u32, None),
    );
    let deadline = Instant::now() + Duration::from_secs(60);
    while per_backend(&stats(&edge), "in_flight")[0] == 0 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
    }
    first.service.kill();
    let interrupted = client.response(id);
    eprintln!("the completion under way when its backend died: {interrupted:?}");
    for uri in [a, b, c, a] {
        complete(&mut client, uri);
    }
    let moved = stats(&edge);
    assert_eq!(per_backend(&moved, "documents"), [0, 3], "{moved}");
    assert!(per_backend(&moved, "failures")[0] >= 1, "{moved}");
    assert!(
        per_backend(&moved, "generations")[1] >= again[1] + 3,
        "{moved}"
    );

    let health = health(&edge);
    assert_eq!(health["status"], "degraded", "{health}");
    assert_eq!(health["backends"][0]["reachable"], false, "{health}");
    assert_eq!(health["backends"][1]["status"], "ok", "{health}");
    assert_eq!(
        health["backends"][1]["name"],
        format!("vps-infer@{}", second.service.addr())
    );
    let (_, metrics) = blocking_http("GET", &format!("http://{}/metrics", edge.http), None)
        .unwrap_or_else(|err| panic!("{err}"));
    let second_name = format!("vps-infer@{}", second.service.addr());
    let documents = format!("cerebrum_edge_backend_documents{{backend=\"{second_name}\"}} 3");
    assert!(
        metrics.lines().any(|line| line == documents),
        "{documents} in\n{metrics}"
    );
}

/// llama.cpp's server: `CEREBRUM_LLAMA_SERVER` (which `scripts/dev test` sets from
/// `scripts/llama-cpp server`). Outside CI a missing one skips with a note; in CI it
/// is an error, so the test never passes by not running.
fn llama_server_binary() -> Option<PathBuf> {
    match std::env::var_os("CEREBRUM_LLAMA_SERVER") {
        Some(path) => Some(PathBuf::from(path)),
        None if std::env::var_os("CI").is_some() => {
            panic!("CEREBRUM_LLAMA_SERVER is not set (scripts/dev test sets it)")
        }
        None => {
            eprintln!(
                "skipped: set CEREBRUM_LLAMA_SERVER=$(scripts/llama-cpp server) to run this test"
            );
            None
        }
    }
}

/// llama-server on Qwen2.5-Coder 0.5B with one thread, once it has loaded the model.
fn start_llama_server(binary: &PathBuf) -> Service {
    let addr: SocketAddr = ([127, 0, 0, 1], free_port()).into();
    let mut cmd = Command::new(binary);
    cmd.arg("-m")
        .arg(model_path("qwen2.5-coder-0.5b"))
        .args(["-t", "1", "-c", "4096", "-np", "1", "--cache-reuse", "256"])
        .args(["--host", "127.0.0.1", "--port", &addr.port().to_string()]);
    let service = Service::spawn("llama-server", cmd, addr);
    let deadline = Instant::now() + Duration::from_secs(300);
    let url = format!("http://{addr}/health");
    loop {
        if blocking_http("GET", &url, None).is_ok_and(|(status, _)| status == 200) {
            return service;
        }
        assert!(
            Instant::now() < deadline,
            "llama-server did not load:\n{}",
            service.log()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn llama_server_serves_as_kind_llama_server_and_as_kind_openai() {
    let Some(binary) = llama_server_binary() else {
        return;
    };
    let server = start_llama_server(&binary);
    let url = format!("http://{}", server.addr());
    let openai = format!(
        "{CONFIG}\n[[backends]]\nkind = \"openai\"\nurl = \"{url}/v1\"\nmodel = \"qwen2.5-coder-0.5b\"\n"
    );
    let cases = [
        (
            "llama-server",
            LspEdge::start_many(&[&format!("llama-server={url}")], "", CONFIG, &[]),
        ),
        ("openai", LspEdge::start_many(&[], "", &openai, &[])),
    ];
    for (kind, edge) in cases {
        // Fill in the middle through the HTTP endpoint. (Which layout reaches the
        // model is the unit tests' to check: on inputs this small, Qwen2.5-Coder
        // 0.5B answers as well without the suffix.)
        let (status, body) = blocking_json(
            "POST",
            &format!("http://{}/v1/complete", edge.http),
            Some(json!({
                "prompt": "def add(a, b):\n    return ",
                "suffix": "\n\n\nprint(add(2, 3))  # 5\n",
                "language": "python",
                "max_tokens": 8,
                "temperature": 0,
            })),
        );
        assert_eq!(status, 200, "{kind}: {body}\n{}", edge.service.log());
        assert_eq!(body["fim"], true, "{kind}: {body}");
        assert!(body["prompt_tokens"].as_u64() > Some(10), "{kind}: {body}");
        let text = body["text"].as_str().unwrap_or_default();
        assert!(text.contains("a + b"), "{kind}: {body}");

        // An editor session over LSP.
        let mut client = edge.client();
        client.initialize(
            json!({"completion": {"temperature": 0.0, "max_tokens": 24}}),
            json!({}),
        );
        let uri = "file:///project/shapes.py";
        client.did_open(uri, "python", 1, SHAPES);
        let text = complete(&mut client, uri);
        assert!(text.contains("radius"), "{kind}: {text:?}");

        let stats = stats(&edge);
        let backend = &stats["backends"][0];
        assert_eq!(backend["kind"], kind, "{stats}");
        assert!(backend["generations"].as_u64() >= Some(2), "{stats}");
        assert_eq!(backend["failures"], 0, "{stats}");
        let health = health(&edge);
        assert_eq!(health["status"], "ok", "{kind}: {health}");
    }
}
