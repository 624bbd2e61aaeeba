//! `lsp-edge complete [FILE|-]`: streams a completion of a file (or stdin) to the
//! terminal, for shell scripts. It runs the HTTP endpoint's own logic in process:
//! the same validation, context engine, cache rules and vps-infer client.

use std::io::IsTerminal as _;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use anyhow::Context as _;
use cerebrum_context::Language;
use tokio::io::AsyncWriteExt as _;

use crate::config::{Config, Overrides};
use crate::edge::Edge;
use crate::pipeline::script::{CompleteBody, Completer, GenerationEvent};
use crate::pipeline::stats::HttpStats;

#[derive(Debug, clap::Args)]
pub struct CompleteArgs {
    /// The text to continue (its end is the cursor); `-` or nothing reads stdin.
    pub file: Option<PathBuf>,
    /// Language name or extension (default: from FILE's extension; unknown
    /// languages are chunked by characters).
    #[arg(long)]
    pub language: Option<String>,
    /// An instruction: makes the prompt instruction-first (e.g. "Refactor to use
    /// async/await"). Without it, one carried in the text is used.
    #[arg(long)]
    pub instruction: Option<String>,
    #[arg(long)]
    pub max_tokens: Option<u32>,
    /// 0 is greedy (and repeatable).
    #[arg(long)]
    pub temperature: Option<f32>,
    #[arg(long)]
    pub model: Option<String>,
    /// TOML configuration file (the same as `serve`'s).
    #[arg(long, env = "CEREBRUM_LSP_CONFIG")]
    pub config: Option<PathBuf>,
    /// A backend, `URL` (a vps-infer; default http://127.0.0.1:9000) or `KIND=URL`
    /// (see `lsp-edge serve --help`); may be repeated.
    #[arg(long = "backend", value_name = "[KIND=]URL")]
    pub backends: Vec<String>,
    /// Print the final statistics (chunking, timings) to stderr as JSON.
    #[arg(long)]
    pub stats: bool,
}

fn read_input(file: Option<&PathBuf>) -> anyhow::Result<String> {
    match file {
        Some(path) if path.as_os_str() != "-" => {
            std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))
        }
        _ => std::io::read_to_string(std::io::stdin()).context("cannot read stdin"),
    }
}

/// `lsp-edge complete`.
pub async fn run(args: CompleteArgs) -> anyhow::Result<()> {
    let received = Instant::now();
    let overrides = Overrides {
        backends: args.backends.clone(),
        ..Overrides::default()
    };
    let config = Config::load(
        args.config.as_deref(),
        |name| std::env::var(name).ok(),
        &overrides,
    )
    .context("invalid configuration")?;
    let file = args.file.clone();
    let text = tokio::task::spawn_blocking(move || read_input(file.as_ref()))
        .await
        .context("reading the input failed")??;
    let language = args.language.clone().or_else(|| {
        args.file
            .as_ref()
            .map(|path| Language::from_path(path).name().to_owned())
    });
    let body = CompleteBody {
        prompt: text,
        language,
        max_tokens: args.max_tokens,
        temperature: args.temperature,
        stream: true,
        suffix: None,
        path: args.file.as_ref().map(|path| path.display().to_string()),
        instruction: args.instruction,
        model: args.model,
        stop: Vec::new(),
    };
    let request = body
        .into_request(&config.completion)
        .map_err(|message| anyhow::anyhow!("invalid request: {message}"))?;

    let edge = Edge::new(config).context("cannot start lsp-edge")?;
    let completer = Completer::new(edge, Arc::new(HttpStats::default()));
    let prepared = completer.prepare(request, received).await?;
    let mut generation = completer.start(prepared).await?;

    let mut stdout = tokio::io::stdout();
    let mut ends_with_newline = true;
    while let Some(event) = generation.next().await {
        match event? {
            GenerationEvent::Token(token) => {
                stdout.write_all(token.as_bytes()).await?;
                stdout.flush().await?;
                if !token.is_empty() {
                    ends_with_newline = token.ends_with('\n');
                }
            }
            GenerationEvent::Done(summary) => {
                // Scripts get the exact text; a terminal gets its prompt back on a
                // line of its own.
                if !ends_with_newline && std::io::stdout().is_terminal() {
                    stdout.write_all(b"\n").await?;
                    stdout.flush().await?;
                }
                if args.stats {
                    let mut summary = *summary;
                    summary.text.clear();
                    eprintln!("{}", serde_json::to_string_pretty(&summary)?);
                }
                return Ok(());
            }
        }
    }
    anyhow::bail!("vps-infer's stream ended without an answer")
}
