//! One typed configuration: defaults < TOML file < `CEREBRUM_*` environment < flags,
//! validated once at start with messages that name the bad field.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context as _};
use serde::Deserialize;

use crate::engine::reuse;

#[derive(Debug, Clone)]
pub struct Config {
    pub listen: SocketAddr,
    /// `None` only on a loopback address: then every request is let through.
    pub api_key: Option<String>,
    pub models: BTreeMap<String, ModelConfig>,
    pub default_model: String,
    pub idle_unload: Duration,
    pub guard: GuardConfig,
    /// Requests that may wait for a free sequence; one more gets a 503.
    pub queue_size: usize,
    /// Sequences in the context: requests generated at once, each keeping its own
    /// cached prompt.
    pub parallel: usize,
    pub max_body_bytes: usize,
    /// HTTP connections open at once; more wait in the listen backlog.
    pub max_connections: usize,
}

#[derive(Debug, Clone)]
pub struct ModelConfig {
    pub path: PathBuf,
    pub ctx_size: u32,
    pub threads: u32,
    pub batch_size: u32,
    /// What a prompt may reuse of the cache past the first difference:
    /// `cache_reuse` (llama.cpp's `--cache-reuse`, the shortest run shifted into
    /// place; 0 keeps only the common prefix), `cache_reuse_max_drift` (tokens
    /// inserted and removed before a run since it was evaluated, summed over reuses;
    /// past it the run is evaluated again) and `cache_reuse_fresh` (tokens right
    /// after each edit evaluated afresh).
    pub reuse: reuse::Policy,
    /// Layers whose weights go to the GPU (llama.cpp's `--n-gpu-layers`): 0 keeps the
    /// model on the CPU; more than the model has (999) offloads all of it. Without a
    /// GPU build (`--features cuda`) or a GPU, every layer stays on the CPU.
    pub gpu_layers: u32,
}

/// A few dozen keystrokes before the suffix, or a window that slid by a few lines:
/// beyond that, shifted keys and values stray from a cold evaluation often enough to
/// change greedy answers (`vps-infer bench --fidelity`).
const DEFAULT_CACHE_REUSE_MAX_DRIFT: u32 = 32;

/// On: a keystroke or an Enter then costs the tokens typed and the fresh window after
/// them, not everything after the cursor (docs/benchmarks.md, "Typing latency").
const DEFAULT_CACHE_REUSE: u32 = 16;

/// The tokens next to an edit: after a keystroke, the start of the suffix. Shifted
/// whole, a fill-in-the-middle suffix's keys and values still say where the cursor
/// was, and greedy answers follow the old text (`lsp-edge eval --after-enter`: exact
/// match 0.042 against 0.333); with its first 8 tokens evaluated again, 90 of 96
/// answers are those of the common prefix alone and exact match is one case apart
/// (docs/benchmarks.md, "Typing latency").
const DEFAULT_CACHE_REUSE_FRESH: u32 = 8;

#[derive(Debug, Clone, Copy)]
pub struct GuardConfig {
    /// Refuse when the CPU used by *other* processes exceeds this share of the machine.
    pub max_cpu_percent: f32,
    /// Refuse when less memory than this is available.
    pub min_free_memory_mb: u64,
}

/// What the TOML file may hold; every field optional.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    pub listen: Option<String>,
    pub api_key: Option<String>,
    pub api_key_file: Option<PathBuf>,
    pub default_model: Option<String>,
    pub threads: Option<u32>,
    pub ctx_size: Option<u32>,
    pub batch_size: Option<u32>,
    pub cache_reuse: Option<u32>,
    pub cache_reuse_max_drift: Option<u32>,
    pub cache_reuse_fresh: Option<u32>,
    pub gpu_layers: Option<u32>,
    pub idle_unload_secs: Option<u64>,
    pub queue_size: Option<usize>,
    pub parallel: Option<usize>,
    pub max_connections: Option<usize>,
    #[serde(default)]
    pub guard: FileGuard,
    #[serde(default)]
    pub models: BTreeMap<String, FileModel>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileGuard {
    pub max_cpu_percent: Option<f32>,
    pub min_free_memory_mb: Option<u64>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileModel {
    pub path: PathBuf,
    pub ctx_size: Option<u32>,
    pub threads: Option<u32>,
    pub gpu_layers: Option<u32>,
}

/// The command-line layer (filled by clap in `main.rs`).
#[derive(Debug, Default, Clone)]
pub struct Overrides {
    pub listen: Option<String>,
    pub models: Vec<String>,
    pub default_model: Option<String>,
    pub threads: Option<u32>,
    pub ctx_size: Option<u32>,
    pub cache_reuse: Option<u32>,
    pub parallel: Option<usize>,
    pub gpu_layers: Option<u32>,
    pub api_key_file: Option<PathBuf>,
}

const DEFAULT_LISTEN: &str = "127.0.0.1:9000";

impl Config {
    /// Builds the configuration from its layers. `env` is a lookup so tests need not
    /// touch the process environment.
    pub fn load(
        file: Option<&Path>,
        env: &dyn Fn(&str) -> Option<String>,
        flags: Overrides,
    ) -> anyhow::Result<Config> {
        let file_cfg = match file {
            Some(path) => {
                let text = std::fs::read_to_string(path)
                    .with_context(|| format!("cannot read config file {}", path.display()))?;
                toml::from_str::<FileConfig>(&text)
                    .with_context(|| format!("invalid config file {}", path.display()))?
            }
            None => FileConfig::default(),
        };
        let base_dir = file.and_then(Path::parent).unwrap_or(Path::new("."));

        let listen = pick(flags.listen, env("CEREBRUM_LISTEN"), file_cfg.listen)
            .unwrap_or_else(|| DEFAULT_LISTEN.to_string());
        let listen: SocketAddr = listen
            .parse()
            .with_context(|| format!("listen: {listen:?} is not an address like 127.0.0.1:9000"))?;

        let threads = match pick_parsed(
            "threads",
            flags.threads,
            env("CEREBRUM_THREADS"),
            file_cfg.threads,
        )? {
            Some(0) => bail!("threads: must be at least 1"),
            Some(n) => n,
            None => std::thread::available_parallelism().map_or(2, |n| n.get() as u32),
        };
        let ctx_size = pick_parsed(
            "ctx_size",
            flags.ctx_size,
            env("CEREBRUM_CTX_SIZE"),
            file_cfg.ctx_size,
        )?
        .unwrap_or(4096);
        if !(256..=131_072).contains(&ctx_size) {
            bail!("ctx_size: {ctx_size} is outside 256..=131072");
        }
        let batch_size = pick_parsed(
            "batch_size",
            None,
            env("CEREBRUM_BATCH_SIZE"),
            file_cfg.batch_size,
        )?
        .unwrap_or(512)
        .clamp(32, ctx_size);
        let reuse = reuse::Policy {
            min_run: pick_parsed(
                "cache_reuse",
                flags.cache_reuse,
                env("CEREBRUM_CACHE_REUSE"),
                file_cfg.cache_reuse,
            )?
            .unwrap_or(DEFAULT_CACHE_REUSE) as usize,
            max_drift: pick_parsed(
                "cache_reuse_max_drift",
                None,
                env("CEREBRUM_CACHE_REUSE_MAX_DRIFT"),
                file_cfg.cache_reuse_max_drift,
            )?
            .unwrap_or(DEFAULT_CACHE_REUSE_MAX_DRIFT),
            fresh: pick_parsed(
                "cache_reuse_fresh",
                None,
                env("CEREBRUM_CACHE_REUSE_FRESH"),
                file_cfg.cache_reuse_fresh,
            )?
            .unwrap_or(DEFAULT_CACHE_REUSE_FRESH) as usize,
        };
        // CPU only unless asked: llama.cpp's own default offloads every layer, which
        // a GPU build would then do on any machine with a GPU, wanted or not.
        let gpu_layers = pick_parsed(
            "gpu_layers",
            flags.gpu_layers,
            env("CEREBRUM_GPU_LAYERS"),
            file_cfg.gpu_layers,
        )?
        .unwrap_or(0);

        let mut models = BTreeMap::new();
        let mut first_model = None;
        for (name, m) in file_cfg.models {
            let path = resolve(base_dir, &m.path);
            first_model.get_or_insert_with(|| name.clone());
            models.insert(
                name,
                ModelConfig {
                    path,
                    ctx_size: m.ctx_size.unwrap_or(ctx_size),
                    threads: m.threads.unwrap_or(threads),
                    batch_size,
                    reuse,
                    gpu_layers: m.gpu_layers.unwrap_or(gpu_layers),
                },
            );
        }
        // Flags come last and so win; the first flag model is the default when none is named.
        let mut first_flag_model = None;
        for spec in &flags.models {
            let Some((name, path)) = spec.split_once('=') else {
                bail!("--model: expected NAME=PATH, got {spec:?}");
            };
            if name.is_empty() || path.is_empty() {
                bail!("--model: expected NAME=PATH, got {spec:?}");
            }
            first_flag_model.get_or_insert_with(|| name.to_string());
            models.insert(
                name.to_string(),
                ModelConfig {
                    path: PathBuf::from(path),
                    ctx_size,
                    threads,
                    batch_size,
                    reuse,
                    gpu_layers,
                },
            );
        }
        if models.is_empty() {
            bail!("models: no model configured; pass --model NAME=PATH or add [models.NAME] to the config file");
        }
        for (name, m) in &models {
            if !m.path.is_file() {
                bail!("models.{name}.path: {} is not a file", m.path.display());
            }
        }
        let default_model = pick(
            flags.default_model,
            env("CEREBRUM_DEFAULT_MODEL"),
            file_cfg.default_model,
        )
        .or(first_flag_model)
        .or(first_model)
        .unwrap_or_default();
        if !models.contains_key(&default_model) {
            bail!(
                "default_model: {default_model:?} is not among the configured models ({})",
                models.keys().cloned().collect::<Vec<_>>().join(", ")
            );
        }

        let key_file = flags
            .api_key_file
            .or_else(|| env("CEREBRUM_API_KEY_FILE").map(PathBuf::from))
            .or(file_cfg.api_key_file.map(|p| resolve(base_dir, &p)));
        // Every source is trimmed the same way, and a source that holds only
        // whitespace is a mistake to report, not a key (nor "no key"). An empty
        // variable counts as unset, as for every other variable.
        let env_key = env("CEREBRUM_API_KEY").filter(|key| !key.is_empty());
        let (api_key, source) = match (env_key, key_file, file_cfg.api_key) {
            (Some(key), _, _) => (Some(key), "CEREBRUM_API_KEY".to_string()),
            (None, Some(path), _) => (
                Some(
                    std::fs::read_to_string(&path)
                        .with_context(|| format!("api_key_file: cannot read {}", path.display()))?,
                ),
                format!("the key file {}", path.display()),
            ),
            (None, None, key) => (key, "api_key in the config file".to_string()),
        };
        let api_key = match api_key.as_deref().map(str::trim) {
            None => None,
            Some("") => {
                bail!("api_key: {source} is blank; give a key, or no key at all on loopback")
            }
            Some(key) => Some(key.to_string()),
        };
        if api_key.is_none() && !listen.ip().is_loopback() {
            bail!("api_key: listening on {listen}, which is not loopback, needs an API key (CEREBRUM_API_KEY or --api-key-file)");
        }

        let idle_unload_secs = pick_parsed(
            "idle_unload_secs",
            None,
            env("CEREBRUM_IDLE_UNLOAD_SECS"),
            file_cfg.idle_unload_secs,
        )?
        .unwrap_or(3600);
        let queue_size = pick_parsed(
            "queue_size",
            None,
            env("CEREBRUM_QUEUE_SIZE"),
            file_cfg.queue_size,
        )?
        .unwrap_or(8);
        // Two: an editor's completions beside a refactor or a second editor. More
        // buys little on a small VPS (the batch shares the same cores).
        let parallel = pick_parsed(
            "parallel",
            flags.parallel,
            env("CEREBRUM_PARALLEL"),
            file_cfg.parallel,
        )?
        .unwrap_or(2);
        if !(1..=16).contains(&parallel) {
            bail!("parallel: {parallel} is outside 1..=16");
        }
        let max_cpu_percent = pick_parsed(
            "guard.max_cpu_percent",
            None,
            env("CEREBRUM_GUARD_MAX_CPU_PERCENT"),
            file_cfg.guard.max_cpu_percent,
        )?
        .unwrap_or(70.0);
        if !(0.0..=100.0).contains(&max_cpu_percent) {
            bail!("guard.max_cpu_percent: {max_cpu_percent} is outside 0..=100");
        }
        let min_free_memory_mb = pick_parsed(
            "guard.min_free_memory_mb",
            None,
            env("CEREBRUM_GUARD_MIN_FREE_MEMORY_MB"),
            file_cfg.guard.min_free_memory_mb,
        )?
        .unwrap_or(1024);

        let max_connections = pick_parsed(
            "max_connections",
            None,
            env("CEREBRUM_MAX_CONNECTIONS"),
            file_cfg.max_connections,
        )?
        .unwrap_or(256);
        if max_connections == 0 {
            bail!("max_connections: must be at least 1");
        }

        Ok(Config {
            listen,
            api_key,
            models,
            default_model,
            idle_unload: Duration::from_secs(idle_unload_secs),
            guard: GuardConfig {
                max_cpu_percent,
                min_free_memory_mb,
            },
            queue_size,
            parallel,
            max_body_bytes: 64 * 1024,
            max_connections,
        })
    }
}

fn pick(flag: Option<String>, env: Option<String>, file: Option<String>) -> Option<String> {
    flag.or(env).or(file)
}

/// The first layer that is set, with the environment's text parsed; a bad value names
/// its field.
fn pick_parsed<T: std::str::FromStr>(
    field: &str,
    flag: Option<T>,
    env: Option<String>,
    file: Option<T>,
) -> anyhow::Result<Option<T>> {
    if flag.is_some() {
        return Ok(flag);
    }
    if let Some(text) = env {
        return match text.trim().parse() {
            Ok(v) => Ok(Some(v)),
            Err(_) => bail!("{field}: {text:?} (from the environment) is not a valid value"),
        };
    }
    Ok(file)
}

fn resolve(base: &Path, path: &Path) -> PathBuf {
    if path.is_absolute() {
        path.to_path_buf()
    } else {
        base.join(path)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env_of(pairs: &'static [(&'static str, &'static str)]) -> impl Fn(&str) -> Option<String> {
        move |k| {
            pairs
                .iter()
                .find(|(n, _)| *n == k)
                .map(|(_, v)| v.to_string())
        }
    }

    fn model_file() -> (PathBuf, String) {
        let dir = std::env::temp_dir().join(format!("vps-infer-config-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("m.gguf");
        std::fs::write(&path, b"GGUF").unwrap();
        let s = path.display().to_string();
        (path, s)
    }

    /// Writes `text` as a config file, in a directory of its own named after `test`.
    fn config_file(test: &str, text: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("vps-infer-cfg-{test}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("c.toml");
        std::fs::write(&file, text).unwrap();
        file
    }

    #[test]
    fn flags_win_over_env_and_file() {
        let (_p, path) = model_file();
        let file = config_file(
            "layers",
            &format!("listen = \"127.0.0.1:1\"\nthreads = 3\n[models.a]\npath = \"{path}\"\n"),
        );
        let env = env_of(&[
            ("CEREBRUM_LISTEN", "127.0.0.1:2"),
            ("CEREBRUM_THREADS", "5"),
        ]);
        let cfg = Config::load(
            Some(&file),
            &env,
            Overrides {
                listen: Some("127.0.0.1:3".into()),
                ..Default::default()
            },
        )
        .unwrap();
        assert_eq!(cfg.listen.port(), 3);
        assert_eq!(cfg.models["a"].threads, 5);
        assert_eq!(cfg.default_model, "a");
    }

    #[test]
    fn bad_values_name_their_field() {
        let (_p, path) = model_file();
        let model = format!("m={path}");
        let cases: &[(&[(&str, &str)], &str)] = &[
            (&[("CEREBRUM_THREADS", "two")], "threads"),
            (
                &[("CEREBRUM_GUARD_MAX_CPU_PERCENT", "170")],
                "guard.max_cpu_percent",
            ),
            (&[("CEREBRUM_DEFAULT_MODEL", "nope")], "default_model"),
            (&[("CEREBRUM_LISTEN", "0.0.0.0:9000")], "api_key"),
            (&[("CEREBRUM_CTX_SIZE", "10")], "ctx_size"),
            (&[("CEREBRUM_PARALLEL", "0")], "parallel"),
            (&[("CEREBRUM_GPU_LAYERS", "-1")], "gpu_layers"),
            (&[("CEREBRUM_GPU_LAYERS", "all")], "gpu_layers"),
        ];
        for (pairs, field) in cases {
            let pairs: Vec<(String, String)> = pairs
                .iter()
                .map(|(a, b)| (a.to_string(), b.to_string()))
                .collect();
            let env = move |k: &str| pairs.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone());
            let err = Config::load(
                None,
                &env,
                Overrides {
                    models: vec![model.clone()],
                    ..Default::default()
                },
            )
            .unwrap_err();
            let msg = format!("{err:#}");
            assert!(msg.starts_with(field), "{field}: {msg}");
        }
    }

    #[test]
    fn gpu_layers_default_to_none_and_a_model_may_set_its_own() {
        let (_p, path) = model_file();
        let file = config_file(
            "gpu",
            &format!(
                "gpu_layers = 12\n[models.a]\npath = \"{path}\"\n\
                 [models.b]\npath = \"{path}\"\ngpu_layers = 0\n"
            ),
        );
        let load = |file: Option<&Path>, pairs: &'static [(&'static str, &'static str)], flag| {
            Config::load(
                file,
                &env_of(pairs),
                Overrides {
                    models: vec![format!("c={path}")],
                    gpu_layers: flag,
                    ..Default::default()
                },
            )
            .unwrap()
        };
        fn layers(cfg: &Config) -> Vec<(&str, u32)> {
            cfg.models
                .iter()
                .map(|(name, m)| (name.as_str(), m.gpu_layers))
                .collect()
        }
        // CPU only unless asked.
        assert_eq!(layers(&load(None, &[], None)), [("c", 0)]);
        // Of the global values the flag wins over the environment, which wins over the
        // file; a model's own value in the file wins over all of them, as for `threads`.
        assert_eq!(
            layers(&load(Some(&file), &[], None)),
            [("a", 12), ("b", 0), ("c", 12)]
        );
        let env = &[("CEREBRUM_GPU_LAYERS", " 999 ")];
        assert_eq!(
            layers(&load(Some(&file), env, None)),
            [("a", 999), ("b", 0), ("c", 999)]
        );
        assert_eq!(
            layers(&load(Some(&file), env, Some(4))),
            [("a", 4), ("b", 0), ("c", 4)]
        );
    }

    #[test]
    fn bad_gpu_layers_in_the_file_name_the_field() {
        let (_p, path) = model_file();
        for (i, text) in [
            "gpu_layers = -1\n".to_string(),
            "gpu_layers = \"all\"\n".to_string(),
            format!("[models.a]\npath = \"{path}\"\ngpu_layers = 1.5\n"),
        ]
        .iter()
        .enumerate()
        {
            let file = config_file(&format!("gpu-bad-{i}"), text);
            let err = Config::load(Some(&file), &env_of(&[]), Overrides::default()).unwrap_err();
            assert!(format!("{err:#}").contains("gpu_layers"), "{text}: {err:#}");
        }
    }

    #[test]
    fn model_flag_needs_name_and_existing_path() {
        let env = env_of(&[]);
        let err = Config::load(
            None,
            &env,
            Overrides {
                models: vec!["x".into()],
                ..Default::default()
            },
        )
        .unwrap_err();
        assert!(format!("{err}").contains("NAME=PATH"));
        let err = Config::load(
            None,
            &env,
            Overrides {
                models: vec!["x=/nonexistent.gguf".into()],
                ..Default::default()
            },
        )
        .unwrap_err();
        assert!(format!("{err}").contains("models.x.path"));
    }

    #[test]
    fn api_keys_are_trimmed_and_blank_ones_refused() {
        let (_p, path) = model_file();
        let overrides = || Overrides {
            models: vec![format!("m={path}")],
            ..Default::default()
        };
        let cfg = Config::load(
            None,
            &env_of(&[("CEREBRUM_API_KEY", " key \n")]),
            overrides(),
        );
        assert_eq!(cfg.unwrap().api_key.as_deref(), Some("key"));
        let err =
            Config::load(None, &env_of(&[("CEREBRUM_API_KEY", "  \t")]), overrides()).unwrap_err();
        assert!(format!("{err:#}").contains("blank"), "{err:#}");
        let dir = std::env::temp_dir().join(format!("vps-infer-cfg-key-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let key_file = dir.join("key");
        std::fs::write(&key_file, " \n").unwrap();
        let err = Config::load(
            None,
            &env_of(&[]),
            Overrides {
                api_key_file: Some(key_file),
                ..overrides()
            },
        )
        .unwrap_err();
        assert!(format!("{err:#}").contains("blank"), "{err:#}");
    }

    #[test]
    fn unknown_file_field_is_refused() {
        let file = config_file("unknown", "lissten = \"x\"\n");
        let err = Config::load(Some(&file), &env_of(&[]), Overrides::default()).unwrap_err();
        assert!(format!("{err:#}").contains("lissten"), "{err:#}");
    }
}
