//! `lsp-edge eval` end to end: real vps-infer on the real Qwen2.5-Coder 0.5B model
//! (it has the fill-in-the-middle tokens the evaluation needs), holes drawn from this
//! repository's own sources. It checks that the command runs and reports what it
//! promises, not how well the model scores.

use std::process::Command;

use cerebrum_tests::{binary, model_path, workspace_root, VpsInfer, TEST_API_KEY};
use serde_json::Value;

fn eval_command() -> Command {
    let root = workspace_root();
    let mut cmd = Command::new(binary("lsp-edge"));
    cmd.current_dir(&root)
        .arg("eval")
        .arg("--source")
        .arg(root.join("lsp-edge/context/src"))
        .arg("--source")
        .arg(root.join("lsp-edge/context/tests/data"))
        .args(["--seed", "3", "--count", "2"])
        .env_remove("CEREBRUM_LSP_CONFIG")
        .env("CEREBRUM_API_KEY", TEST_API_KEY);
    cmd
}

/// The cases `eval --list` draws, one JSON object a line; no backend is needed.
fn listed(args: &[&str]) -> String {
    let output = eval_command().arg("--list").args(args).output().unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).unwrap()
}

/// Runs the evaluation against a real vps-infer and returns its JSON report.
fn run_eval(args: &[&str]) -> Value {
    let infer = VpsInfer::start(&[("qwen2.5-coder-0.5b", &model_path("qwen2.5-coder-0.5b"))]);
    let output = eval_command()
        .args(["--backend", &infer.url(), "--json"])
        .args(args)
        .output()
        .expect("run lsp-edge eval");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "lsp-edge eval failed: {stderr}\nvps-infer: {}",
        infer.service.log()
    );
    serde_json::from_slice(&output.stdout).expect("JSON report")
}

#[test]
fn eval_scores_the_engine_and_a_plain_window_in_one_run() {
    let report = run_eval(&["--baseline-chars", "1200:400", "--max-tokens", "24"]);
    assert_eq!(report["count"], 2);
    assert_eq!(report["hole_lines"], 1);
    // No --model: the backend's default, asked for at start, named in the report.
    assert_eq!(report["model"], "qwen2.5-coder-0.5b");
    let scores = report["scores"].as_array().unwrap();
    let names: Vec<&str> = scores.iter().map(|s| s["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["cerebrum", "window 1200/400"]);
    for score in scores {
        assert_eq!(score["cases"], 2, "{score}");
        assert_eq!(score["errors"], 0, "{score}");
        let em = score["exact_match"].as_f64().unwrap();
        let similarity = score["edit_similarity"].as_f64().unwrap();
        assert!((0.0..=1.0).contains(&em) && (0.0..=1.0).contains(&similarity));
        assert!(
            score["mean_prompt_tokens"].as_f64().unwrap() > 0.0,
            "{score}"
        );
        assert!(score["mean_ms"].as_f64().unwrap() > 0.0, "{score}");
    }
    let cases = report["cases"].as_array().unwrap();
    assert_eq!(cases.len(), 2);
    // Case 0 comes from the Rust sources, case 1 from the Python benchmark file.
    assert_eq!(cases[0]["language"], "rust");
    assert_eq!(cases[1]["language"], "python");
    for case in cases {
        assert!(!case["expected"].as_str().unwrap().is_empty(), "{case}");
        for name in &names {
            let outcome = &case["outcomes"][name];
            let prompt_tokens = outcome["prompt_tokens"].as_u64().unwrap();
            assert!(prompt_tokens > 0, "{case}");
            // Primed: every scored answer starts from its prompt in the cache.
            assert_eq!(outcome["cached_tokens"], prompt_tokens - 1, "{case}");
            let text = outcome["text"].as_str().unwrap();
            assert!(
                !text.contains('\n'),
                "only the first line is scored: {text:?}"
            );
            assert_eq!(
                outcome["exact"].as_bool().unwrap(),
                text == case["expected"].as_str().unwrap()
            );
        }
    }
    // The plain window never carries chunks and is the smaller prompt here.
    let window = &scores[1];
    assert_eq!(window["mean_chunks"], 0.0);
    // It is counted against the engine, case by case.
    assert!(scores[0].get("versus_first").is_none(), "{}", scores[0]);
    // Cases where the engine's answer was `engine_right` and the window's was not.
    let moved = |name: &str, engine_right: bool| {
        let differ = |case: &&Value| {
            let outcomes = &case["outcomes"];
            outcomes["cerebrum"]["exact"] == engine_right && outcomes[name]["exact"] != engine_right
        };
        cases.iter().filter(differ).count()
    };
    let versus = &window["versus_first"];
    assert_eq!(versus["won"], moved("window 1200/400", false), "{versus}");
    assert_eq!(versus["lost"], moved("window 1200/400", true), "{versus}");
}

#[test]
fn eval_cases_are_the_same_for_a_seed_and_need_no_backend() {
    let first = listed(&[]);
    assert_eq!(first.lines().count(), 2, "{first}");
    assert_eq!(first, listed(&[]));
}

#[test]
fn whole_line_holes_are_the_same_holes_with_their_indentation() {
    let list = |args: &[&str]| -> Vec<Value> {
        listed(args)
            .lines()
            .map(|line| serde_json::from_str(line).unwrap())
            .collect()
    };
    let (plain, whole) = (list(&[]), list(&["--whole-line"]));
    assert_eq!(plain.len(), whole.len());
    for (plain, whole) in plain.iter().zip(&whole) {
        assert_eq!(plain["line"], whole["line"]);
        let (plain, whole) = (
            plain["expected"].as_str().unwrap(),
            whole["expected"].as_str().unwrap(),
        );
        // Both holes of this seed are indented lines.
        assert!(whole.len() > plain.len(), "{whole:?}");
        assert_eq!(whole.trim_start(), plain, "{whole:?}");
    }
    let stderr = refused(eval_command().args(["--list", "--whole-line", "--block-holes"]));
    assert!(stderr.contains("--whole-line"), "{stderr}");
}

#[test]
fn eval_names_a_missing_source() {
    let stderr = refused(Command::new(binary("lsp-edge")).args([
        "eval",
        "--list",
        "--source",
        "/nonexistent/cerebrum-eval",
    ]));
    assert!(stderr.contains("/nonexistent/cerebrum-eval"), "{stderr}");
}

/// Runs `cmd`, which must fail, and returns what it printed on stderr.
fn refused(cmd: &mut Command) -> String {
    let output = cmd.output().unwrap();
    assert!(!output.status.success());
    String::from_utf8_lossy(&output.stderr).into_owned()
}

#[test]
fn eval_refuses_no_cases() {
    let stderr = refused(eval_command().args(["--list", "--count", "0"]));
    assert!(stderr.contains("--count"), "{stderr}");
}

#[test]
fn eval_fails_when_no_request_reaches_the_backend() {
    // Nothing listens on port 1: every request fails, and scores of nothing but
    // errors would read as a model that is always wrong.
    let stderr = refused(eval_command().args(["--backend", "http://127.0.0.1:1"]));
    assert!(stderr.contains("http://127.0.0.1:1"), "{stderr}");
    assert!(stderr.contains("every request failed"), "{stderr}");
}

#[test]
fn eval_refuses_a_hole_of_no_lines() {
    let stderr = refused(eval_command().args(["--list", "--hole-lines", "0"]));
    assert!(stderr.contains("--hole-lines"), "{stderr}");
}

#[test]
fn eval_refuses_block_holes_with_a_line_count() {
    let stderr = refused(eval_command().args(["--list", "--block-holes", "--hole-lines", "2"]));
    assert!(stderr.contains("--block-holes"), "{stderr}");
}

#[test]
fn eval_refuses_written_lines_without_after_enter() {
    let stderr = refused(eval_command().args(["--list", "--written-lines", "3"]));
    assert!(stderr.contains("--after-enter"), "{stderr}");
}

#[test]
fn eval_scores_whole_answers_on_block_holes() {
    let report = run_eval(&[
        "--block-holes",
        "--baseline-chars",
        "1200:400",
        "--max-tokens",
        "64",
    ]);
    // lsp-edge's default completion.max_lines.
    assert_eq!(report["block_max_lines"], 12);
    for score in report["scores"].as_array().unwrap() {
        assert_eq!(score["errors"], 0, "{score}");
        let block = &score["block"];
        let shares: Vec<f64> = ["stopped_right", "too_short", "too_long"]
            .iter()
            .map(|k| block[k].as_f64().unwrap())
            .collect();
        assert_eq!(shares.iter().sum::<f64>(), 1.0, "{score}");
        assert!(
            block["mean_expected_lines"].as_f64().unwrap() >= 1.0,
            "{score}"
        );
        // Every answer says why it ends.
        let stops = block["stops"].as_object().unwrap();
        let ended: u64 = stops.values().map(|n| n.as_u64().unwrap()).sum();
        assert_eq!(ended, report["count"].as_u64().unwrap(), "{score}");
    }
    for case in report["cases"].as_array().unwrap() {
        let expected = case["expected_block"].as_str().unwrap();
        assert!(
            expected.starts_with(case["expected"].as_str().unwrap()),
            "{case}"
        );
        let expected_lines = expected.split('\n').count();
        assert!((1..=12).contains(&expected_lines), "{case}");
        for (name, outcome) in case["outcomes"].as_object().unwrap() {
            let block = &outcome["block"];
            let text = block["text"].as_str().unwrap();
            let lines = block["lines"].as_u64().unwrap() as usize;
            assert!(lines <= 12, "{name}: {case}");
            assert_eq!(block["expected_lines"], expected_lines, "{name}: {case}");
            let stop = block["stop"].as_str().unwrap();
            let known = ["block_end", "suffix", "lines", "eos", "stop", "length"];
            assert!(known.contains(&stop), "{name}: {case}");
            assert_eq!(
                block["exact"].as_bool().unwrap(),
                text == expected,
                "{name}: {case}"
            );
            // The first line scored is the whole answer's first line, unless the
            // trimming dropped an answer that only repeats the text after the hole.
            let first = outcome["text"].as_str().unwrap();
            assert!(
                text.is_empty() || text.split('\n').next() == Some(first),
                "{name}: {case}"
            );
            assert!(
                outcome["prompt_tokens"].as_u64().unwrap() > 0,
                "{name}: {case}"
            );
        }
    }
}
