//! `vps-infer bench`: what a keystroke costs. Runs the engine in-process (no HTTP) on
//! a real source file cut to about 1,500 tokens: once cold, then after a one-character
//! edit at the cursor, and prints prompt tok/s, generation tok/s and time to first token.
//! `--concurrency` adds what serving several requests at once gives: aggregate tok/s
//! for 1 and 2 streams (beside `llama-batched-bench`'s when given), and a completion's
//! time to first token while a 256-token generation runs against an idle server.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use crate::config::Config;
use crate::engine::{
    self, Engine, EngineError, Event, GenerateRequest, Outcome, Priority, PromptParts, Sampling,
};
use crate::guard::ResourceGuard;
use crate::stats::Stats;

#[derive(clap::Args, Debug)]
pub struct BenchArgs {
    /// Characters of source to use as the prompt (about 3.5 per token for code).
    #[arg(long, default_value_t = 5600)]
    pub prompt_chars: usize,
    /// Tokens to generate per request.
    #[arg(long, default_value_t = 32)]
    pub max_tokens: u32,
    /// Repetitions; the medians are printed.
    #[arg(long, default_value_t = 3)]
    pub runs: usize,
    /// Keystrokes to replay for the reuse-fidelity check: each greedy completion
    /// made with the cache reused as configured is compared with a cold evaluation
    /// of the same prompt (the model unloaded and loaded again). 0 skips it.
    #[arg(long, default_value_t = 0)]
    pub fidelity: usize,
    /// Also measure concurrent streams (`--parallel` must be at least 2).
    #[arg(long)]
    pub concurrency: bool,
    /// llama.cpp's `llama-batched-bench`, run on the same model for comparison.
    #[arg(long)]
    pub batched_bench: Option<std::path::PathBuf>,
}

/// Real code to complete: this repository's model fetch script, repeated if need be.
const SOURCE: &str = include_str!("../../scripts/fetch-model");

pub async fn run(mut config: Config, args: BenchArgs) -> anyhow::Result<()> {
    config.guard.max_cpu_percent = 100.0;
    config.guard.min_free_memory_mb = 0;
    let stats = Arc::new(Stats::default());
    let guard = ResourceGuard::start(config.guard);
    let engine = Engine::start(&config, stats.clone(), guard)?;
    let model = config.default_model.clone();
    let threads = config.models[&model].threads;
    println!(
        "model {model} ({}), {threads} threads, ctx {}",
        config.models[&model].path.display(),
        config.models[&model].ctx_size
    );

    let text: String = SOURCE.chars().cycle().take(args.prompt_chars).collect();
    // The cursor sits in the last line; a short suffix follows it, as in an editor.
    let cut = text[..text.len() - 120]
        .rfind('\n')
        .map_or(text.len() / 2, |i| i + 9);
    let (prefix, suffix) = text.split_at(cut);

    // Load the model outside the measurements.
    let warm = request(&model, "def warm():", None, 1);
    engine::collect(engine.generate(warm)?).await?;
    let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
    println!(
        "gpu: {} of {} layers offloaded (gpu_layers {}; offload {})",
        get(&stats.offloaded_layers),
        get(&stats.model_layers),
        config.models[&model].gpu_layers,
        if stats.gpu_offload_supported.load(Ordering::Relaxed) {
            "supported"
        } else {
            "not supported by this build or machine"
        }
    );

    let mut cold = Vec::new();
    let mut edit = Vec::new();
    let mut fim = true;
    for run in 0..args.runs {
        // A different head makes the whole prompt new to the cache: long enough that
        // the text after it is past the drift bound of cache reuse, so it is not
        // shifted into place either.
        let head: Vec<String> = (0..64u64)
            .map(|i| ((i + 1) * 7_919 + run as u64 * 104_729).to_string())
            .collect();
        let cold_prefix = format!("# bench run {run}: {}\n{prefix}", head.join(" "));
        let edited_prefix = format!("{cold_prefix}x");
        let (c, used_fim) =
            complete(&engine, &model, &cold_prefix, suffix, fim, args.max_tokens).await?;
        fim = used_fim;
        let (e, _) = complete(
            &engine,
            &model,
            &edited_prefix,
            suffix,
            fim,
            args.max_tokens,
        )
        .await?;
        cold.push(c);
        edit.push(e);
    }
    println!(
        "layout: {}",
        if fim {
            "fill-in-the-middle"
        } else {
            "plain prompt (model has no FIM tokens)"
        }
    );
    println!(
        "{:<22} {:>10} {:>8} {:>9} {:>13} {:>9} {:>10}",
        "case", "prompt_tok", "cached", "eval_s", "prompt_tok/s", "ttft_s", "gen_tok/s"
    );
    for (name, rows) in [("cold", &cold), ("after 1-char edit", &edit)] {
        let eval = median(rows.iter().map(|o| o.prompt_eval_time));
        let evaluated = median(
            rows.iter()
                .map(|o| (o.prompt_tokens - o.cached_tokens) as f64),
        );
        println!(
            "{:<22} {:>10} {:>8} {:>9.3} {:>13.1} {:>9.3} {:>10.1}",
            name,
            rows[0].prompt_tokens,
            rows[0].cached_tokens,
            eval,
            evaluated / eval.max(1e-9),
            median(rows.iter().map(|o| o.time_to_first_token)),
            median(rows.iter().map(|o| o.tokens_per_second)),
        );
    }
    if args.fidelity > 0 {
        fidelity(&engine, &model, fim, args.fidelity, args.max_tokens).await?;
    }
    if args.concurrency {
        concurrency(&engine, &model, prefix, suffix, fim, args.runs).await?;
        if let Some(bin) = &args.batched_bench {
            batched_bench(bin, &config.models[&model])?;
        }
    }
    tokio::task::spawn_blocking(move || engine.stop()).await?;
    Ok(())
}

/// Replays typing (a block of lines typed back one character at a time, Enter
/// included) with the cache reused as in production, then evaluates each of those
/// prompts cold (after unloading the model, so that nothing can be reused) and
/// compares the greedy completions.
async fn fidelity(
    engine: &Engine,
    model: &str,
    fim: bool,
    keystrokes: usize,
    max_tokens: u32,
) -> anyhow::Result<()> {
    // A file of about 1,200 tokens with a block of lines in its middle to type back.
    let text: String = SOURCE.chars().take(4_200).collect();
    let lines: Vec<&str> = text.split_inclusive('\n').collect();
    let first = lines.len() / 2;
    let before: String = lines[..first].concat();
    let typed: String = lines[first..].concat();
    let ends: Vec<usize> = typed
        .char_indices()
        .map(|(i, _)| i)
        .skip(1)
        .take(keystrokes)
        .collect();
    let after = &typed[ends.last().copied().unwrap_or(0)..];
    let prompts: Vec<String> = ends
        .iter()
        .map(|&end| format!("{before}{}", &typed[..end]))
        .collect();

    let mut reused = Vec::new();
    let (mut evaluated, mut shifted) = (0, 0);
    // Prime the cache with the first prompt, evaluated cold, so that every measured
    // one reuses it and nothing from the runs above (unloading empties every
    // sequence's cache; the next request loads the model again).
    engine.unload().await?;
    complete(engine, model, &prompts[0], after, fim, max_tokens).await?;
    for prompt in &prompts {
        let (w, _) = complete(engine, model, prompt, after, fim, max_tokens).await?;
        evaluated += w.prompt_tokens - w.cached_tokens;
        shifted += w.shifted_tokens;
        reused.push(w.text);
    }
    let mut differing = Vec::new();
    for (n, (prompt, w)) in prompts.iter().zip(&reused).enumerate() {
        engine.unload().await?;
        let (c, _) = complete(engine, model, prompt, after, fim, max_tokens).await?;
        if *w != c.text {
            differing.push((n, w.clone(), c.text));
        }
    }
    let total = prompts.len();
    println!(
        "\nreuse fidelity: {} of {total} greedy completions identical to a cold evaluation \
         ({:.1} prompt tokens evaluated and {:.1} shifted per keystroke)",
        total - differing.len(),
        evaluated as f64 / total as f64,
        shifted as f64 / total as f64,
    );
    for (n, w, c) in differing.iter().take(5) {
        println!("  keystroke {n}: reused {w:?}, cold {c:?}");
    }
    Ok(())
}

/// Aggregate generation speed of 1 and 2 concurrent streams, and a completion's time to
/// first token on an idle server against during a 256-token generation.
async fn concurrency(
    engine: &Engine,
    model: &str,
    prefix: &str,
    suffix: &str,
    fim: bool,
    runs: usize,
) -> anyhow::Result<()> {
    // About 256 prompt tokens, and an answer that goes on (as llama-batched-bench's
    // -npp 256 -ntg N).
    let counting = |n: usize| {
        let head: String = SOURCE.chars().skip(n * 97).take(700).collect();
        format!("{head}\n# List every integer from 1 to 5000, one per line:\n1\n2\n")
    };
    println!("\nconcurrent streams (~256-token prompts, 128 tokens each, greedy)");
    println!(
        "{:<10} {:>16} {:>12}",
        "streams", "aggregate_tok/s", "vs 1 stream"
    );
    // 1 and 2 streams alternate, so that a load that comes and goes on a shared
    // machine weighs on both alike.
    let mut speeds = [Vec::new(), Vec::new()];
    for run in 0..runs {
        for streams in [1usize, 2] {
            let receivers = (0..streams)
                .map(|s| {
                    let mut r = request(model, &counting(run * 2 + s + 10), None, 128);
                    r.priority = Priority::Instruction;
                    engine.generate(r)
                })
                .collect::<Result<Vec<_>, _>>()?;
            let stamps =
                futures::future::try_join_all(receivers.into_iter().map(token_times)).await?;
            if let Some(speed) = aggregate_speed(&stamps) {
                speeds[streams - 1].push(speed);
            }
        }
    }
    let [one, two] = speeds.map(|s| median(s.into_iter()));
    for (streams, speed) in [(1, one), (2, two)] {
        println!(
            "{:<10} {:>16.1} {:>11.2}x",
            streams,
            speed,
            speed / one.max(1e-9)
        );
    }

    let mut idle = Vec::new();
    let mut busy = Vec::new();
    for run in 0..runs {
        let completion = |tag: &str| {
            let prefix = format!("# ttft {tag} {run}\n{prefix}");
            request(model, &prefix, fim.then_some(suffix), 16)
        };
        idle.push(first_token_after(engine, completion("idle")).await?);
        let mut long = request(model, &counting(run + 50), None, 256);
        long.priority = Priority::Instruction;
        let mut long = engine.generate(long)?;
        // Wait until the long one generates.
        while let Some(event) = long.recv().await {
            if matches!(event, Event::Token(_)) {
                break;
            }
        }
        busy.push(first_token_after(engine, completion("busy")).await?);
        engine::collect(long).await?;
    }
    let (idle, busy) = (median(idle.into_iter()), median(busy.into_iter()));
    println!(
        "\ncompletion time to first token (queue included): idle {idle:.3}s, \
         during a 256-token generation {busy:.3}s ({:.2}x)",
        busy / idle.max(1e-9)
    );
    Ok(())
}

/// Tokens per second over the window in which every stream was generating.
fn aggregate_speed(stamps: &[Vec<std::time::Instant>]) -> Option<f64> {
    let from = stamps.iter().filter_map(|s| s.first()).max().copied()?;
    let to = stamps.iter().filter_map(|s| s.last()).min().copied()?;
    let tokens: usize = stamps
        .iter()
        .map(|s| s.iter().filter(|t| **t > from && **t <= to).count())
        .sum();
    let seconds = to.saturating_duration_since(from).as_secs_f64();
    (seconds > 0.0).then(|| tokens as f64 / seconds)
}

/// When each token event of a generation arrived.
async fn token_times(
    mut rx: tokio::sync::mpsc::Receiver<Event>,
) -> Result<Vec<std::time::Instant>, EngineError> {
    let mut times = Vec::new();
    while let Some(event) = rx.recv().await {
        match event {
            Event::Token(_) => times.push(std::time::Instant::now()),
            Event::Done(_) => return Ok(times),
            Event::Error(e) => return Err(e),
            Event::Started { .. } => {}
        }
    }
    Ok(times)
}

/// Seconds from submitting `request` to its first token; the rest is read and dropped.
async fn first_token_after(engine: &Engine, request: GenerateRequest) -> anyhow::Result<f64> {
    let sent = std::time::Instant::now();
    let mut rx = engine.generate(request)?;
    let mut first = None;
    while let Some(event) = rx.recv().await {
        match event {
            Event::Token(_) => {
                first.get_or_insert_with(|| sent.elapsed().as_secs_f64());
            }
            Event::Done(_) => break,
            Event::Error(e) => return Err(e.into()),
            Event::Started { .. } => {}
        }
    }
    Ok(first.unwrap_or_else(|| sent.elapsed().as_secs_f64()))
}

/// llama.cpp's own figures for the same model and threads: 256-token prompts, 128
/// generated, 1 and 2 sequences.
fn batched_bench(bin: &std::path::Path, model: &crate::config::ModelConfig) -> anyhow::Result<()> {
    let output = std::process::Command::new(bin)
        .arg("-m")
        .arg(&model.path)
        .args([
            "-c", "2048", "-b", "512", "-ub", "512", "-npp", "256", "-ntg", "128", "-npl", "1,2",
        ])
        .args(["-t", &model.threads.to_string()])
        .output()?;
    let text = String::from_utf8_lossy(&output.stdout);
    println!("\nllama-batched-bench (-npp 256 -ntg 128 -npl 1,2):");
    for line in text.lines().filter(|l| l.starts_with('|')) {
        println!("{line}");
    }
    if !output.status.success() {
        anyhow::bail!(
            "{} failed: {}",
            bin.display(),
            String::from_utf8_lossy(&output.stderr)
        );
    }
    Ok(())
}

async fn complete(
    engine: &Engine,
    model: &str,
    prefix: &str,
    suffix: &str,
    fim: bool,
    max_tokens: u32,
) -> anyhow::Result<(Outcome, bool)> {
    if fim {
        match engine::collect(engine.generate(request(model, prefix, Some(suffix), max_tokens))?)
            .await
        {
            Ok(o) => return Ok((o, true)),
            Err(EngineError::Invalid(_)) => {}
            Err(e) => return Err(e.into()),
        }
    }
    let o = engine::collect(engine.generate(request(model, prefix, None, max_tokens))?).await?;
    Ok((o, false))
}

fn request(model: &str, prompt: &str, suffix: Option<&str>, max_tokens: u32) -> GenerateRequest {
    GenerateRequest {
        model: model.to_string(),
        priority: Priority::Interactive,
        parts: PromptParts {
            prompt: prompt.to_string(),
            suffix: suffix.map(str::to_string),
            ..PromptParts::default()
        },
        sampling: Sampling {
            max_tokens,
            temperature: 0.0,
            top_p: 1.0,
            stop: Vec::new(),
            seed: 0,
            reject_first_line: Vec::new(),
            first_line_max_indent: None,
            first_line_not_blank: false,
        },
    }
}

fn median(values: impl Iterator<Item = f64>) -> f64 {
    let mut v: Vec<f64> = values.collect();
    v.sort_by(|a, b| a.total_cmp(b));
    if v.is_empty() {
        0.0
    } else {
        v[v.len() / 2]
    }
}
