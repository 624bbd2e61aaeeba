//! `vps-infer bench`: what a keystroke costs. Runs the engine in-process (no HTTP) on
//! a real source file cut to about 1,500 tokens: once cold, then after a one-character
//! edit at the cursor, and prints prompt tok/s, generation tok/s and time to first token.

use std::sync::Arc;

use crate::config::Config;
use crate::engine::{
    self, Engine, EngineError, GenerateRequest, Outcome, Priority, PromptParts, Sampling,
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
    /// made with the cache reused (runs shifted) is compared with a cold evaluation
    /// of the same prompt on a second engine. 0 skips it.
    #[arg(long, default_value_t = 0)]
    pub fidelity: usize,
}

/// Real code to complete: this repository's model fetch script, repeated if need be.
const SOURCE: &str = include_str!("../../scripts/fetch-model");

pub async fn run(mut config: Config, args: BenchArgs) -> anyhow::Result<()> {
    config.guard.max_cpu_percent = 100.0;
    config.guard.min_free_memory_mb = 0;
    let stats = Arc::new(Stats::default());
    let guard = ResourceGuard::start(config.guard);
    let engine = Engine::start(&config, stats, guard)?;
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

    let mut cold = Vec::new();
    let mut edit = Vec::new();
    let mut fim = true;
    for run in 0..args.runs {
        // A different first line makes the whole prompt new to the cache.
        let cold_prefix = format!("# bench run {run}\n{prefix}");
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
    tokio::task::spawn_blocking(move || engine.stop()).await?;
    Ok(())
}

/// Replays typing (a block of lines typed back one character at a time, Enter
/// included) with the cache reused as in production, then evaluates each of those
/// prompts cold (after an unrelated one-token prompt, so that nothing can be reused)
/// and compares the greedy completions.
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
    // one reuses it and nothing from the runs above.
    engine::collect(engine.generate(request(model, "\u{1}", None, 1))?).await?;
    complete(engine, model, &prompts[0], after, fim, max_tokens).await?;
    for prompt in &prompts {
        let (w, _) = complete(engine, model, prompt, after, fim, max_tokens).await?;
        evaluated += w.prompt_tokens - w.cached_tokens;
        shifted += w.shifted_tokens;
        reused.push(w.text);
    }
    let mut differing = Vec::new();
    for (n, (prompt, w)) in prompts.iter().zip(&reused).enumerate() {
        engine::collect(engine.generate(request(model, "\u{1}", None, 1))?).await?;
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
            extra: Vec::new(),
            chat: None,
        },
        sampling: Sampling {
            max_tokens,
            temperature: 0.0,
            top_p: 1.0,
            stop: Vec::new(),
            seed: 0,
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
