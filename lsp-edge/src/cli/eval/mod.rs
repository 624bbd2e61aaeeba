//! `lsp-edge eval`: measures completion quality on single-line fill-in-the-middle
//! holes made from real source trees, through the same completer that
//! `POST /v1/complete` and `lsp-edge complete` use, against a running vps-infer, and
//! beside plain windows of text around the cursor (no chunks) in the same run.
//!
//! The hole convention: a case removes the code of one line, from the end of its
//! indentation to the end of the line. The prompt is the file up to the cursor
//! (indentation included), the suffix is the rest of the file from the line's end
//! (its newline first). The answer is the first line of what the model generates,
//! with trailing whitespace trimmed; it scores an exact match when it equals the
//! removed code with trailing whitespace trimmed, and an edit similarity of
//! `1 - levenshtein / max(chars)`. Generation is greedy and stops at the first
//! newline, which changes nothing about the first line and saves decoding.
//!
//! With `--hole-lines N`, a case also takes out the N - 1 lines below the hole's, as
//! when new code is written and the text after the cursor does not follow the line
//! being written; the first line is scored as before. Single-line holes let a method
//! win by fitting the line to the text right after it (docs/benchmarks.md, "Thirteenth
//! pass"), so a change to how answers are chosen is checked on both.
//!
//! With `--block-holes`, a case takes out the rest of its line's block instead (the
//! lines below that are blank or indented at least as deep, at most
//! `completion.max_lines` in all), and generation goes on until the trimming an
//! editor's answer gets ([`TrimContext`]) says the answer is settled, or to
//! `completion.max_tokens`. The whole trimmed answer is scored beside its first line:
//! every line right, and whether it stopped where the block ends.
//!
//! [`TrimContext`]: crate::pipeline::trim::TrimContext
//!
//! Cases are deterministic for a seed and the same trees: files are listed in sorted
//! order, case `i` draws from source `i mod sources` (so each `--source` weighs
//! the same), a file uniformly, then an eligible line uniformly. Eligible lines hold
//! code: not blank, not inside a comment or a string that began on an earlier line,
//! not a docstring, not only closing brackets, at most `cases::MAX_LINE_CHARS` long.
//! Eligible files are `.py` and `.rs` files of `cases::MIN_FILE_BYTES` to
//! `cases::MAX_FILE_BYTES` that parse without errors.
//!
//! Each configuration after the first is also counted against the first, case by
//! case: the lines it got right that the first missed (won) and the other way round
//! (lost). Two configurations level in exact match can differ in many answers, and
//! a change that sends a different prompt only for some holes is judged by those.
//!
//! Every configuration's prompt is primed: sent once for one token before the
//! request that is scored, so each answer comes from the same state of vps-infer's
//! cache (the prompt in it, its last token evaluated again) whichever configuration
//! ran first. Greedy answers from a prompt evaluated cold and from the same prompt
//! in the cache differ now and then (llama.cpp's batch shapes change the sums), and
//! unprimed, that moved about one answer in twenty between two configurations that
//! send the same prompt (docs/benchmarks.md, "Eighth pass").

mod ask;
mod cases;
mod score;

use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::Context as _;
use cerebrum_context::{ContextEngine, EngineConfig, Language};
use serde::Serialize;

use self::ask::Runner;
use self::cases::{make_cases, HoleShape};
use self::score::{render_table, scores, CaseResult, Report};
use crate::config::{Config, Overrides};
use crate::edge::Edge;
use crate::pipeline::script::Completer;
use crate::pipeline::stats::HttpStats;

#[derive(Debug, clap::Args)]
pub struct EvalArgs {
    /// A source tree to draw holes from (repeatable; each weighs the same).
    #[arg(long = "source", required = true)]
    pub sources: Vec<PathBuf>,
    /// Seed of the case draw.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Number of cases.
    #[arg(long, default_value_t = 60, value_parser = parse_count)]
    pub count: usize,
    /// Languages to draw holes from (repeatable). Python and Rust by default, the
    /// set every recorded figure in docs/benchmarks.md was measured on.
    #[arg(long = "language", default_values = ["python", "rust"], value_parser = parse_language)]
    pub languages: Vec<Language>,
    /// A plain window of BEFORE characters before the cursor and AFTER after it (whole
    /// lines, no chunks), sent as fill-in-the-middle in the same run; AFTER defaults
    /// to BEFORE / 3. Repeatable.
    #[arg(long = "baseline-chars", value_name = "BEFORE[:AFTER]")]
    pub baselines: Vec<String>,
    /// Another engine configuration to compare in the same run: NAME=FILE, FILE a
    /// TOML file like `serve`'s (its `[context]` section matters; for a model with
    /// windows of its own, such as the 1.5B, `[context.models."NAME"]` sets them).
    /// Repeatable.
    #[arg(long = "variant", value_name = "NAME=FILE")]
    pub variants: Vec<String>,
    /// Ask for each case as an editor does right after Enter: first the document as it
    /// was a keystroke before (the cursor at the end of the line above, the hole's
    /// line not there yet), then the case, so that the backend's cache holds the
    /// earlier prompt. Measures what cache reuse does to answers; engine runs only.
    /// Both requests name a document of the case's own (`case-ID/PATH`), so the
    /// engine keeps what it chose for the first (the snippets of code like the
    /// cursor's) as it does for an editor's document.
    #[arg(long)]
    pub after_enter: bool,
    /// With `--after-enter`, the first request is asked this many lines further up:
    /// the cursor at the end of the line above the LINES lines over the hole, those
    /// lines not written yet, as when they and the hole's line were typed since.
    /// Shows what choices the engine keeps while lines are written cost in answers.
    #[arg(
        long,
        default_value_t = 0,
        requires = "after_enter",
        value_name = "LINES"
    )]
    pub written_lines: u16,
    /// Take out this many lines at each hole: its own and the ones below it, as when
    /// new code is written and the text after the cursor does not follow the line
    /// being written. The answer's first line is scored against the hole's line as
    /// before; a hole near the end of its file takes what lines there are.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..=50))]
    pub hole_lines: u16,
    /// Take out the rest of each hole's block: its line and the lines below it that
    /// are blank or indented at least as deep, up to `completion.max_lines` lines, as
    /// when a block is written after Enter. The whole answer is generated and trimmed
    /// as an editor would show it, and scored against those lines too: all of them
    /// right, and whether it stopped where the block ends.
    #[arg(long, conflicts_with = "hole_lines")]
    pub block_holes: bool,
    /// Take each hole's whole line out, indentation and line break too, and put the
    /// cursor at column 0 between the lines around it, as issue 11's held-out set
    /// does (the text before the hole and the text after it); the answer's first line
    /// is scored with its indentation.
    #[arg(long, conflicts_with_all = ["hole_lines", "block_holes", "after_enter"])]
    pub whole_line: bool,
    /// Leave out the engine with the main configuration (compare variants only).
    #[arg(long)]
    pub no_engine: bool,
    /// The model to ask for (default: the backend's default model, asked for at start).
    #[arg(long)]
    pub model: Option<String>,
    /// Most tokens per answer [default: 48, which the first line never reaches
    /// (generation stops at its newline); with --block-holes, `completion.max_tokens`
    /// (128), as an editor's answers get].
    #[arg(long)]
    pub max_tokens: Option<u32>,
    /// TOML configuration file (the same as `serve`'s).
    #[arg(long, env = "CEREBRUM_LSP_CONFIG")]
    pub config: Option<PathBuf>,
    /// The backend, `URL` (a vps-infer; default http://127.0.0.1:9000) or `KIND=URL`
    /// (see `lsp-edge serve --help`); the key comes from CEREBRUM_API_KEY.
    #[arg(long, value_name = "[KIND=]URL")]
    pub backend: Option<String>,
    /// Print the cases and stop (no backend needed).
    #[arg(long)]
    pub list: bool,
    /// Print the results as JSON (with every case) instead of a table.
    #[arg(long)]
    pub json: bool,
    /// Report each case on stderr as it finishes.
    #[arg(long, short)]
    pub verbose: bool,
}

/// One hole.
#[derive(Debug, Clone, Serialize)]
pub struct Case {
    pub id: usize,
    /// Path relative to the source tree's parent (`requests/sessions.py`).
    pub path: String,
    pub language: &'static str,
    /// 1-based line of the hole.
    pub line: usize,
    /// The removed code, trailing whitespace trimmed.
    pub expected: String,
    /// With `--block-holes`, every line the hole took out (the first as `expected`),
    /// each with trailing whitespace trimmed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub expected_block: Option<String>,
    #[serde(skip)]
    pub prompt: String,
    #[serde(skip)]
    pub suffix: String,
}

impl EvalArgs {
    /// Generation stops at the first line's end unless whole answers are scored.
    fn stop(&self) -> Vec<String> {
        if self.block_holes {
            Vec::new()
        } else {
            vec!["\n".into()]
        }
    }

    /// `--max-tokens`, set by [`run`] where it was not given.
    fn max_tokens(&self) -> u32 {
        self.max_tokens.unwrap_or(48)
    }
}

struct Variant {
    name: String,
    runner: Runner,
}

fn parse_baseline(spec: &str) -> anyhow::Result<(usize, usize)> {
    let parse = |s: &str| {
        s.trim().parse::<usize>().with_context(|| {
            format!("--baseline-chars {spec:?}: expected BEFORE[:AFTER] in characters")
        })
    };
    match spec.split_once(':') {
        Some((before, after)) => Ok((parse(before)?, parse(after)?)),
        None => {
            let before = parse(spec)?;
            Ok((before, before / 3))
        }
    }
}

fn load_config(file: Option<&Path>, backend: Option<&String>) -> anyhow::Result<Config> {
    let overrides = Overrides {
        backends: backend.into_iter().cloned().collect(),
        ..Overrides::default()
    };
    let mut config = Config::load(file, |name| std::env::var(name).ok(), &overrides)
        .context("invalid configuration")?;
    // A cold prompt on a busy 2-core machine can take longer than an editor would
    // wait; an evaluation waits.
    for backend in std::iter::once(&mut config.backend).chain(&mut config.backends) {
        backend.first_token_timeout_ms = backend.first_token_timeout_ms.max(300_000);
        backend.total_timeout_ms = backend.total_timeout_ms.max(600_000);
    }
    config.breaker.failure_threshold = config.breaker.failure_threshold.max(1_000);
    Ok(config)
}

fn parse_count(count: &str) -> Result<usize, String> {
    match count.parse::<usize>() {
        Ok(0) => Err("an evaluation needs at least 1 case".into()),
        Ok(count) => Ok(count),
        Err(err) => Err(err.to_string()),
    }
}

fn parse_language(name: &str) -> Result<Language, String> {
    match Language::from_name(name) {
        Language::Other => {
            let known: Vec<&str> = Language::PARSED.iter().map(|l| l.name()).collect();
            Err(format!("unknown language (known: {})", known.join(", ")))
        }
        language => Ok(language),
    }
}

/// The configurations a run compares: the engine with the main configuration (unless
/// `--no-engine`), each `--variant`'s, and each `--baseline-chars` window.
fn variants(
    args: &EvalArgs,
    config: &Config,
    main_edge: &Arc<Edge>,
) -> anyhow::Result<Vec<Variant>> {
    let mut variants = Vec::new();
    if !args.no_engine {
        variants.push(Variant {
            name: "cerebrum".into(),
            runner: Runner::Engine(Completer::new(
                main_edge.clone(),
                Arc::new(HttpStats::default()),
            )),
        });
    }
    for spec in &args.variants {
        let (name, file) = spec
            .split_once('=')
            .with_context(|| format!("--variant {spec:?}: expected NAME=FILE"))?;
        let mut variant_config = load_config(Some(Path::new(file)), args.backend.as_ref())?;
        variant_config.backend = config.backend.clone();
        variant_config.backends = config.backends.clone();
        let edge = Edge::new(variant_config).with_context(|| format!("variant {name}"))?;
        variants.push(Variant {
            name: name.to_owned(),
            runner: Runner::Engine(Completer::new(edge, Arc::new(HttpStats::default()))),
        });
    }
    for spec in &args.baselines {
        let (before, after) = parse_baseline(spec)?;
        variants.push(Variant {
            name: format!("window {before}/{after}"),
            runner: Runner::Window { before, after },
        });
    }
    if variants.is_empty() {
        anyhow::bail!("nothing to run: --no-engine needs --variant or --baseline-chars");
    }
    if variants.iter().any(|v| v.name.is_empty())
        || variants
            .iter()
            .map(|v| &v.name)
            .collect::<HashSet<_>>()
            .len()
            != variants.len()
    {
        anyhow::bail!("variant names must be distinct and not empty");
    }
    Ok(variants)
}

/// `lsp-edge eval`.
pub async fn run(mut args: EvalArgs) -> anyhow::Result<()> {
    let config = load_config(args.config.as_deref(), args.backend.as_ref())?;
    if args.block_holes {
        args.max_tokens = args.max_tokens.or(Some(config.completion.max_tokens));
    }
    let engine =
        ContextEngine::new(EngineConfig::default()).context("cannot build the context engine")?;
    let sources = args.sources.clone();
    let (languages, seed, count) = (args.languages.clone(), args.seed, args.count);
    let max_lines = config.completion.max_lines;
    let shape = if args.block_holes {
        HoleShape::Block(max_lines)
    } else if args.whole_line {
        HoleShape::WholeLine
    } else {
        HoleShape::Lines(usize::from(args.hole_lines))
    };
    let cases = tokio::task::spawn_blocking(move || {
        make_cases(&engine, &sources, &languages, seed, count, shape)
    })
    .await
    .context("drawing cases failed")??;
    if cases.is_empty() {
        anyhow::bail!("the sources hold no eligible line");
    }
    if args.list {
        for case in &cases {
            println!("{}", serde_json::to_string(case)?);
        }
        return Ok(());
    }

    let main_edge = Edge::new(config.clone()).context("cannot start lsp-edge")?;
    if args.model.is_none() && config.models.completion.is_none() {
        // Named, the backend's default model gives every case, its primer included,
        // that model's windows, and the report says what it measured.
        let health = main_edge.backends.first().client.health().await;
        args.model = health.ok().and_then(|health| health.default_model);
    }
    let variants = variants(&args, &config, &main_edge)?;

    let mut results = Vec::new();
    let mut consecutive_errors = 0;
    for (i, case) in cases.iter().enumerate() {
        let mut outcomes = BTreeMap::new();
        // Rotating the order spreads the state each variant finds the machine in
        // (caches warm, load from the previous case) evenly across variants.
        for k in 0..variants.len() {
            let variant = &variants[(i + k) % variants.len()];
            let label = format!("case {i} {}", variant.name);
            let outcome =
                ask::answer(&variant.runner, &main_edge, case, &args, max_lines, &label).await;
            if let Some(err) = &outcome.error {
                consecutive_errors += 1;
                // `\r` writes over the progress line rather than after it.
                eprintln!(
                    "\rcase {i} ({}:{}) {}: {err}",
                    case.path, case.line, variant.name
                );
                if consecutive_errors >= 5 {
                    anyhow::bail!("five requests in a row failed; last: {err}");
                }
            } else {
                consecutive_errors = 0;
            }
            if args.verbose {
                eprintln!(
                    "case {i} {}:{} {}: {} {:?} (want {:?}) {} tokens {:.0} ms",
                    case.path,
                    case.line,
                    variant.name,
                    if outcome.exact { "HIT " } else { "miss" },
                    outcome.text,
                    case.expected,
                    outcome.prompt_tokens,
                    outcome.ms
                );
            }
            outcomes.insert(variant.name.clone(), outcome);
        }
        if !args.verbose {
            eprint!("\rcase {}/{}", i + 1, cases.len());
        }
        results.push(CaseResult {
            case: case.clone(),
            outcomes,
        });
    }
    if !args.verbose {
        eprintln!();
    }
    let failed = |result: &CaseResult| result.outcomes.values().all(|o| o.error.is_some());
    if results.iter().all(failed) {
        // Scores of nothing but errors would read as a model that is always wrong.
        anyhow::bail!("every request failed; the errors are above");
    }
    let names: Vec<&str> = variants.iter().map(|v| v.name.as_str()).collect();
    let report = Report {
        seed: args.seed,
        count: cases.len(),
        hole_lines: args.hole_lines,
        block_max_lines: args.block_holes.then_some(max_lines),
        whole_line: args.whole_line,
        sources: args
            .sources
            .iter()
            .map(|s| s.display().to_string())
            .collect(),
        model: args.model.clone(),
        scores: scores(&names, &results),
        cases: results,
    };
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print!("{}", render_table(&report));
    }
    Ok(())
}
