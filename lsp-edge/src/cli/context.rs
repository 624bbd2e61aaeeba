//! `lsp-edge context`: prints what the model would see for a file and a cursor.
//!
//! A thin wrapper over `cerebrum_context`, for users debugging prompts and for
//! tests and benchmarks that need the engine's view from the command line.

use std::path::PathBuf;

use anyhow::{bail, Context as _};
use cerebrum_context::{
    byte_offset_at, extract_instruction, render_text, ContextEngine, ContextOptions, EngineConfig,
    Language,
};

/// Build the context (prompt) for FILE at a cursor and print it with statistics.
#[derive(Debug, clap::Args)]
pub struct ContextArgs {
    /// The source file.
    pub file: PathBuf,
    /// Cursor line, 1-based. Without it the cursor is at the end of the file, or
    /// at its start when there is an instruction.
    #[arg(long)]
    pub line: Option<usize>,
    /// Cursor column, 1-based, in characters (default 1).
    #[arg(long, requires = "line")]
    pub column: Option<usize>,
    /// An instruction; without one, an instruction carried in the file (a leading
    /// `# INSTRUCTION:` line, say) is used, and otherwise it is a completion.
    #[arg(long)]
    pub instruction: Option<String>,
    /// Language (python, rust, ...); by default from the file's extension.
    #[arg(long)]
    pub language: Option<String>,
    /// A directory of `<language>/chunks.scm` queries replacing the built-in ones.
    #[arg(long, value_name = "DIR")]
    pub queries: Option<PathBuf>,
    /// The model the prompt is for: a model with windows of its own (the 1.5B)
    /// gets them.
    #[arg(long, value_name = "NAME")]
    pub model: Option<String>,
    /// Print one JSON object instead of text.
    #[arg(long)]
    pub json: bool,
}

pub fn run(args: ContextArgs) -> anyhow::Result<()> {
    if args.line == Some(0) || args.column == Some(0) {
        bail!("--line and --column are 1-based");
    }
    let text = std::fs::read_to_string(&args.file)
        .with_context(|| format!("cannot read {}", args.file.display()))?;
    let language = match &args.language {
        Some(name) => Language::from_name(name),
        None => Language::from_path(&args.file),
    };
    let config = EngineConfig {
        queries_dir: args.queries.clone(),
        ..EngineConfig::default()
    };
    let engine = ContextEngine::new(config).context("cannot build the context engine")?;

    let cursor = match args.line {
        Some(line) => byte_offset_at(&text, line - 1, args.column.unwrap_or(1) - 1),
        None if args.instruction.is_some() || extract_instruction(&text).is_some() => 0,
        None => text.len(),
    };
    let opts = ContextOptions {
        instruction: args.instruction,
        path: Some(args.file.display().to_string()),
        selection: None,
        model: args.model,
    };
    let context = engine.context_for_text(language, &text, cursor, &opts);
    if args.json {
        println!("{}", serde_json::to_string_pretty(&context)?);
    } else {
        print!("{}", render_text(&context));
    }
    Ok(())
}
