//! vps-infer serving several requests at once, end to end on the real SmolLM2 model:
//! sequences decoded together, a short completion never waiting for a long generation,
//! cancellation of one stream only, priorities.

use std::time::{Duration, Instant};

use cerebrum_tests::{model_path, sse_events, VpsInfer, TEST_API_KEY};
use serde_json::{json, Value};

const SMOL: &str = "smollm2-135m";

fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(300))
        .build()
        .unwrap()
}

async fn send_inference(url: &str, body: Value) -> reqwest::Response {
    client()
        .post(format!("{url}/v1/inference"))
        .header("X-API-Key", TEST_API_KEY)
        .json(&body)
        .send()
        .await
        .unwrap()
}

async fn complete(url: &str, body: Value) -> Value {
    let response = send_inference(url, body).await;
    assert_eq!(response.status(), 200);
    response.json().await.unwrap()
}

/// A long generation that streams: returns once its first token arrived.
async fn start_long(url: &str, prompt: &str, extra: Value) -> reqwest::Response {
    let mut body = json!({"prompt": prompt, "max_tokens": 1500, "temperature": 0.8, "seed": 3, "stream": true});
    if let (Some(body), Some(extra)) = (body.as_object_mut(), extra.as_object()) {
        body.extend(extra.clone());
    }
    let mut response = send_inference(url, body).await;
    assert_eq!(response.status(), 200);
    cerebrum_tests::read_until_first_token(&mut response).await;
    response
}

/// Polls `/v1/stats` until `done` holds.
async fn wait_for_stats(server: &VpsInfer, what: &str, done: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let stats = server.stats();
        if done(&stats) {
            return stats;
        }
        assert!(Instant::now() < deadline, "{what}: {stats}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn sequences_in(stats: &Value, state: &str) -> usize {
    stats["sequences"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|s| s["state"] == state)
        .count()
}

#[tokio::test]
async fn two_concurrent_streams_both_finish_and_agree_with_their_answers_alone() {
    let server = VpsInfer::start_smol();
    let url = server.url();
    let prompts = [
        "The capital of France is",
        "def fibonacci(n):\n    \"\"\"Return the n-th Fibonacci number.\"\"\"\n",
    ];
    let body = |prompt: &str| json!({"prompt": prompt, "max_tokens": 24, "temperature": 0.0});
    // Each prompt alone, twice: the second answer is made, as the concurrent one
    // will be, with all but the prompt's last token cached in its own sequence.
    let mut alone = Vec::new();
    for prompt in prompts {
        complete(&url, body(prompt)).await;
        alone.push(complete(&url, body(prompt)).await);
    }
    let (a, b) = tokio::join!(
        complete(&url, body(prompts[0])),
        complete(&url, body(prompts[1]))
    );
    for (together, alone) in [a, b].iter().zip(&alone) {
        let (text, reference) = (
            together["text"].as_str().unwrap(),
            alone["text"].as_str().unwrap(),
        );
        assert_eq!(together["stop_reason"], "length", "{together}");
        assert_eq!(
            together["cached_tokens"].as_u64().unwrap() + 1,
            together["prompt_tokens"].as_u64().unwrap(),
            "each prompt found its own sequence's cache: {together}"
        );
        // Greedy text depends on the batch's shape in llama.cpp (the same token's
        // logits differ in the last bits when other sequences share its batch), so
        // long answers may part late; their start agrees.
        let start: String = reference.chars().take(12).collect();
        assert!(
            text.starts_with(&start),
            "together {text:?}, alone {reference:?}"
        );
        if text != reference {
            eprintln!("together and alone part after a common start: {text:?} / {reference:?}");
        }
    }
    let stats = server.stats();
    assert_eq!(stats["sequences"].as_array().unwrap().len(), 2, "{stats}");
    assert_eq!(stats["requests"]["ok"], 6, "{stats}");
}

#[tokio::test]
async fn a_completion_sent_during_a_long_generation_finishes_first() {
    let server = VpsInfer::start_smol();
    let url = server.url();
    // No suffix and many tokens: an instruction.
    let long = start_long(
        &url,
        "List every integer from 1 to 5000, one per line:\n1\n2\n",
        json!({}),
    )
    .await;
    let during = server.stats();
    assert_eq!(sequences_in(&during, "generating"), 1, "{during}");
    assert_eq!(
        during["sequences"][0]["priority"]
            .as_str()
            .or(during["sequences"][1]["priority"].as_str()),
        Some("instruction"),
        "{during}"
    );

    let completion = complete(
        &url,
        json!({"prompt": "def add(a, b):\n    return", "max_tokens": 8, "temperature": 0.0}),
    )
    .await;
    assert_eq!(completion["total_tokens"], 8, "{completion}");
    // The long one is still going: it finished neither before nor with the completion.
    let after = server.stats();
    assert_eq!(after["requests"]["ok"], 1, "{after}");
    assert_eq!(sequences_in(&after, "generating"), 1, "{after}");
    let interactive = &after["priorities"][0];
    assert_eq!(interactive["priority"], "interactive", "{after}");
    assert_eq!(interactive["started"], 1, "{after}");
    assert_eq!(after["priorities"][1]["started"], 1, "{after}");
    drop(long);
    wait_for_stats(&server, "the long generation was never cancelled", |s| {
        s["requests"]["cancelled"] == 1
    })
    .await;
}

#[tokio::test]
async fn cancelling_one_stream_leaves_the_other_running_and_frees_its_sequence() {
    let server = VpsInfer::start_smol();
    let url = server.url();
    let first = start_long(&url, "Count from one to a thousand in words:", json!({})).await;
    let mut second = start_long(&url, "Write a very long story about a dragon:", json!({})).await;
    drop(first);
    wait_for_stats(&server, "the dropped stream was never cancelled", |s| {
        s["requests"]["cancelled"] == 1
    })
    .await;
    // The other one runs on...
    let mut tokens = 0;
    while tokens < 5 {
        let chunk = second.chunk().await.unwrap().expect("the stream ended");
        tokens += String::from_utf8_lossy(&chunk).matches("\"token\"").count();
    }
    let running = server.stats();
    assert_eq!(sequences_in(&running, "generating"), 1, "{running}");
    // ...and the freed sequence takes a new request meanwhile.
    let short = complete(&url, json!({"prompt": "Hello", "max_tokens": 4})).await;
    assert_eq!(short["total_tokens"], 4, "{short}");
    assert_eq!(sequences_in(&server.stats(), "generating"), 1);
    drop(second);
}

#[tokio::test]
async fn background_work_gives_its_sequence_up_to_a_completion() {
    let server = VpsInfer::builder()
        .model(SMOL, model_path(SMOL))
        .env("CEREBRUM_PARALLEL", "1")
        .start();
    let url = server.url();
    let background = start_long(
        &url,
        "Write a very long story about a dragon:",
        json!({"priority": "background"}),
    )
    .await;
    let completion = complete(
        &url,
        json!({"prompt": "Hello", "max_tokens": 4, "priority": "interactive"}),
    )
    .await;
    assert_eq!(completion["total_tokens"], 4, "{completion}");
    let body = background.text().await.unwrap();
    let events = sse_events(&body);
    let done = events.last().unwrap();
    assert_eq!(done["stop_reason"], "cancelled", "{body}");
    let stats = server.stats();
    assert_eq!(stats["priorities"][2]["priority"], "background", "{stats}");
    assert_eq!(stats["priorities"][2]["preempted"], 1, "{stats}");
}

#[tokio::test]
async fn an_unknown_priority_is_refused() {
    let server = VpsInfer::start_smol();
    let response =
        send_inference(&server.url(), json!({"prompt": "x", "priority": "urgent"})).await;
    assert_eq!(response.status(), 400);
    let body: Value = response.json().await.unwrap();
    assert!(body.to_string().contains("priority"), "{body}");
}
