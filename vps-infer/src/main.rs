//! `vps-infer`: command line over the library. Startup errors are reported with anyhow
//! and a non-zero exit.

use std::path::PathBuf;

use anyhow::Context as _;
use clap::{Args, Parser, Subcommand};
use vps_infer::config::{Config, Overrides};

/// Cerebrum's inference service: llama.cpp behind an HTTP/SSE API.
#[derive(Parser)]
#[command(version, about)]
struct Cli {
    #[command(flatten)]
    flags: Flags,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Args, Clone)]
struct Flags {
    /// TOML configuration file (flags and CEREBRUM_* variables override it).
    #[arg(long, global = true)]
    config: Option<PathBuf>,
    /// Address to listen on [default: 127.0.0.1:9000].
    #[arg(long, global = true)]
    listen: Option<String>,
    /// A model as NAME=PATH (repeatable); with one, it is the default.
    #[arg(long = "model", value_name = "NAME=PATH", global = true)]
    models: Vec<String>,
    /// Model used when a request names none.
    #[arg(long, global = true)]
    default_model: Option<String>,
    /// Threads for llama.cpp [default: all cores].
    #[arg(long, global = true)]
    threads: Option<u32>,
    /// Context size in tokens [default: 4096].
    #[arg(long, global = true)]
    ctx_size: Option<u32>,
    /// Shortest run of cached tokens shifted into place past the first difference
    /// from the cache, like llama.cpp's --cache-reuse; 0 reuses only the common
    /// prefix [default: 16].
    #[arg(long, global = true)]
    cache_reuse: Option<u32>,
    /// Requests generated at once, each in its own sequence with its own cached
    /// prompt [default: 2].
    #[arg(long, global = true)]
    parallel: Option<usize>,
    /// Layers to offload to the GPU: 0 keeps the model on the CPU, 999 offloads all
    /// of it. Needs a build with `--features cuda` [default: 0].
    #[arg(long, global = true)]
    gpu_layers: Option<u32>,
    /// File holding the API key (the key may also come from CEREBRUM_API_KEY).
    #[arg(long, global = true)]
    api_key_file: Option<PathBuf>,
}

#[derive(Subcommand)]
enum Command {
    /// Serve HTTP (the default).
    Serve,
    /// Measure prompt and generation speed, cold and after a one-character edit.
    Bench(vps_infer::bench::BenchArgs),
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                // llama.cpp's own log is chatty: only at debug level.
                .unwrap_or_else(|_| "info,llama-cpp-2=warn,llama_cpp_2=warn".into()),
        )
        .init();
    llama_cpp_2::send_logs_to_tracing(llama_cpp_2::LogOptions::default());

    let flags = cli.flags;
    let config = Config::load(
        flags.config.as_deref(),
        &|key| std::env::var(key).ok(),
        Overrides {
            listen: flags.listen,
            models: flags.models,
            default_model: flags.default_model,
            threads: flags.threads,
            ctx_size: flags.ctx_size,
            cache_reuse: flags.cache_reuse,
            parallel: flags.parallel,
            gpu_layers: flags.gpu_layers,
            api_key_file: flags.api_key_file,
        },
    )
    .context("invalid configuration")?;

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    match cli.command.unwrap_or(Command::Serve) {
        Command::Serve => runtime.block_on(vps_infer::serve(config)),
        Command::Bench(args) => runtime.block_on(vps_infer::bench::run(config, args)),
    }
}
