//! `lsp-edge context`: prints what the model would see for a file and a cursor.
//!
//! A thin wrapper over `cerebrum_context`, for users debugging prompts and for
//! tests and benchmarks that need the engine's view from the command line.

use std::path::PathBuf;

use anyhow::{bail, Context as _};
use cerebrum_context::{
    byte_offset_at, extract_instruction, line_column, render_text, ContextEngine, ContextOptions,
    EngineConfig, Language,
};

use crate::config::{Config, Overrides};

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
    /// lsp-edge's configuration file, whose `[context]` the engine takes (the
    /// `CEREBRUM_` variables apply too, as for `lsp-edge serve`).
    #[arg(long, value_name = "FILE", env = "CEREBRUM_LSP_CONFIG")]
    pub config: Option<PathBuf>,
    /// The model the prompt is for: a model with windows of its own (the 1.5B)
    /// gets them.
    #[arg(long, value_name = "NAME")]
    pub model: Option<String>,
    /// Print one JSON object instead of text.
    #[arg(long)]
    pub json: bool,
}

/// The engine's configuration: `--config`'s `[context]` (under the environment's
/// `CEREBRUM_` variables), with `--queries` over its queries.
fn engine_config(
    args: &ContextArgs,
    env: impl Fn(&str) -> Option<String>,
) -> anyhow::Result<EngineConfig> {
    let mut config = match &args.config {
        Some(file) => {
            Config::load(Some(file), env, &Overrides::default())
                .context("invalid configuration")?
                .context
        }
        None => EngineConfig::default(),
    };
    if let Some(dir) = &args.queries {
        config.queries_dir = Some(dir.clone());
    }
    Ok(config)
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
    let config = engine_config(&args, |name| std::env::var(name).ok())?;
    let engine = ContextEngine::new(config).context("cannot build the context engine")?;

    let cursor = match args.line {
        Some(line) => cursor_at(&text, line, args.column.unwrap_or(1))
            .with_context(|| format!("no such place in {}", args.file.display()))?,
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

/// The byte offset of 1-based `line` and `column`; a place past the text, or past
/// its line's end, is an error that says where the text ends.
fn cursor_at(text: &str, line: usize, column: usize) -> anyhow::Result<usize> {
    let lines = line_column(text, text.len()).0 + 1;
    if line > lines {
        bail!("--line {line} is past the last line ({lines})");
    }
    let start = byte_offset_at(text, line - 1, 0);
    let end = byte_offset_at(text, line - 1, usize::MAX);
    let chars = text[start..end].chars().count();
    if column > chars + 1 {
        bail!(
            "--column {column} is past the end of line {line}, which has {chars} characters (column {} is its end)",
            chars + 1
        );
    }
    Ok(byte_offset_at(text, line - 1, column - 1))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(config: Option<PathBuf>) -> ContextArgs {
        ContextArgs {
            file: "a.py".into(),
            line: None,
            column: None,
            instruction: None,
            language: None,
            queries: None,
            config,
            model: None,
            json: false,
        }
    }

    #[test]
    fn a_cursor_past_the_text_is_refused_with_where_it_ends() {
        let text = "ab\ncdé\n";
        assert_eq!(cursor_at(text, 1, 1).unwrap(), 0);
        assert_eq!(cursor_at(text, 2, 4).unwrap(), 7);
        // The empty line after the last line break is a place to type.
        assert_eq!(cursor_at(text, 3, 1).unwrap(), text.len());
        let past_line = cursor_at(text, 4, 1).unwrap_err().to_string();
        assert_eq!(past_line, "--line 4 is past the last line (3)");
        let past_column = cursor_at(text, 2, 5).unwrap_err().to_string();
        assert_eq!(
            past_column,
            "--column 5 is past the end of line 2, which has 3 characters (column 4 is its end)"
        );
    }

    #[test]
    fn the_engine_takes_the_context_section_of_the_config_file() {
        let dir = std::env::temp_dir().join(format!("cerebrum-context-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("lsp-edge.toml");
        std::fs::write(&file, "[context]\nprefix_max_lines = 7\n").unwrap();
        let config = engine_config(&args(Some(file.clone())), |_| None).unwrap();
        assert_eq!(config.prefix_max_lines, 7);
        assert_eq!(
            engine_config(&args(None), |_| None).unwrap(),
            EngineConfig::default()
        );

        // `--queries` goes over the file's.
        std::fs::write(&file, "[context]\nqueries_dir = \"/from/file\"\n").unwrap();
        let mut given = args(Some(file.clone()));
        let config = engine_config(&given, |_| None).unwrap();
        assert_eq!(config.queries_dir, Some(PathBuf::from("/from/file")));
        given.queries = Some("/from/flag".into());
        let config = engine_config(&given, |_| None).unwrap();
        assert_eq!(config.queries_dir, Some(PathBuf::from("/from/flag")));

        std::fs::write(&file, "[context]\nprefix_max_lines = \"seven\"\n").unwrap();
        let err = engine_config(&args(Some(file)), |_| None).unwrap_err();
        assert!(format!("{err:#}").contains("prefix_max_lines"), "{err:#}");
        std::fs::remove_dir_all(dir).unwrap();
    }
}
