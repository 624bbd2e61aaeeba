//! lsp-edge's one typed configuration: defaults < TOML file < `CEREBRUM_*` environment <
//! command line, validated once at start; a session's `initializationOptions` may then
//! override the per-session sections (`backend`, `models`, `completion`).

mod http;

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use cerebrum_context::{EngineConfig, Language};
use serde::{Deserialize, Serialize};

pub use self::http::HttpConfig;

/// Why a configuration was refused. Every message names the field at fault.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The I/O error is in the message, not a `source`, so that the message alone
    /// says it and a chain of causes does not say it twice.
    #[error("cannot read config file {path}: {error}")]
    Read {
        path: PathBuf,
        error: std::io::Error,
    },
    #[error("config file {path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("{field}: {message}")]
    Invalid { field: String, message: String },
}

impl ConfigError {
    fn invalid(field: impl Into<String>, message: impl Into<String>) -> Self {
        ConfigError::Invalid {
            field: field.into(),
            message: message.into(),
        }
    }
}

/// A secret string (API key, session token): never printed by `Debug`.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Self {
        Secret(value.into())
    }
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(***)")
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Where `serve` listens for editors over TCP.
    pub listen: SocketAddr,
    /// Shared session token (`initializationOptions.token`); required off loopback.
    pub token: Option<Secret>,
    /// LSP messages handled at once per session; keep it well above the number of
    /// concurrent completions, or `$/cancelRequest` queues behind them.
    pub session_concurrency: usize,
    /// The backend, or (with `backends`) the defaults `--backend` entries start from
    /// and the key entries without one use.
    pub backend: BackendConfig,
    /// Several backends (`[[backends]]`), used instead of `backend` when given.
    pub backends: Vec<BackendConfig>,
    pub breaker: BreakerConfig,
    pub limits: LimitsConfig,
    pub completion: CompletionConfig,
    pub models: ModelsConfig,
    /// Passed to the context engine unchanged.
    pub context: EngineConfig,
    /// The HTTP endpoint for scripts (`[http]`).
    pub http: HttpConfig,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            listen: SocketAddr::from(([127, 0, 0, 1], 7001)),
            token: None,
            session_concurrency: 64,
            backend: BackendConfig::default(),
            backends: Vec::new(),
            breaker: BreakerConfig::default(),
            limits: LimitsConfig::default(),
            completion: CompletionConfig::default(),
            models: ModelsConfig::default(),
            context: EngineConfig::default(),
            http: HttpConfig::default(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct BackendConfig {
    /// What the backend is, and so which API lsp-edge speaks to it.
    pub kind: BackendKind,
    /// The name logs, `/health` and `/v1/stats` show; default `KIND@HOST:PORT`.
    pub name: Option<String>,
    /// The backend's base URL.
    pub url: String,
    /// The backend's key: `X-API-Key` for vps-infer, `Authorization: Bearer` for
    /// the others.
    pub api_key: Option<Secret>,
    /// The model to ask for. Required for `openai` and `ollama`, whose servers
    /// name their models themselves; it replaces the `[models]` choice there.
    pub model: Option<String>,
    /// An `openai` backend's fill-in-the-middle tokens, when its model's name does
    /// not tell them (see [`FimTokens::for_model`]).
    pub fim_tokens: Option<FimTokens>,
    /// This backend's share of new documents, against the others' weights.
    pub weight: u32,
    /// Generations this backend runs at once; routing goes elsewhere past it.
    pub max_in_flight: usize,
    pub connect_timeout_ms: u64,
    /// From sending the request to the first token (includes a model load and the
    /// prompt evaluation, so it is generous).
    pub first_token_timeout_ms: u64,
    /// From sending the request to the last token.
    pub total_timeout_ms: u64,
    /// While a request waits for its first token this long, lsp-edge asks
    /// `/health` whether vps-infer is loading a model and reports it as progress.
    pub load_probe_after_ms: u64,
}

impl Default for BackendConfig {
    fn default() -> Self {
        BackendConfig {
            kind: BackendKind::VpsInfer,
            name: None,
            url: "http://127.0.0.1:9000".into(),
            api_key: None,
            model: None,
            fim_tokens: None,
            weight: 1,
            max_in_flight: 2,
            connect_timeout_ms: 2_000,
            first_token_timeout_ms: 30_000,
            total_timeout_ms: 60_000,
            load_probe_after_ms: 300,
        }
    }
}

/// The inference engines lsp-edge speaks to.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum BackendKind {
    /// Cerebrum's own service: `/v1/inference`.
    #[default]
    VpsInfer,
    /// llama.cpp's server: `/infill` and `/completion`.
    LlamaServer,
    /// Any OpenAI-compatible `/v1/completions` (vLLM, TGI, llama.cpp, Ollama):
    /// lsp-edge writes the FIM prompt with the model's tokens.
    Openai,
    /// Ollama's `/api/generate`, with `suffix` for fill-in-the-middle.
    Ollama,
}

impl BackendKind {
    pub const ALL: [BackendKind; 4] = [
        BackendKind::VpsInfer,
        BackendKind::LlamaServer,
        BackendKind::Openai,
        BackendKind::Ollama,
    ];

    /// The name used in configuration and on the command line.
    pub fn name(self) -> &'static str {
        match self {
            BackendKind::VpsInfer => "vps-infer",
            BackendKind::LlamaServer => "llama-server",
            BackendKind::Openai => "openai",
            BackendKind::Ollama => "ollama",
        }
    }

    pub fn from_name(name: &str) -> Option<BackendKind> {
        BackendKind::ALL
            .into_iter()
            .find(|kind| kind.name() == name)
    }
}

impl fmt::Display for BackendKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A model's fill-in-the-middle tokens, as text.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FimTokens {
    pub prefix: String,
    pub suffix: String,
    pub middle: String,
    /// Separates files in the repository-level format, for models trained on it.
    #[serde(default)]
    pub file_sep: Option<String>,
}

impl BackendConfig {
    pub fn connect_timeout(&self) -> Duration {
        Duration::from_millis(self.connect_timeout_ms)
    }
    pub fn first_token_timeout(&self) -> Duration {
        Duration::from_millis(self.first_token_timeout_ms)
    }
    pub fn total_timeout(&self) -> Duration {
        Duration::from_millis(self.total_timeout_ms)
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct BreakerConfig {
    /// Consecutive failures (connection errors, timeouts, 5xx) that open the breaker.
    pub failure_threshold: u32,
    /// First cooldown while open; doubled after each failed probe.
    pub cooldown_ms: u64,
    pub max_cooldown_ms: u64,
}

impl Default for BreakerConfig {
    fn default() -> Self {
        BreakerConfig {
            failure_threshold: 3,
            cooldown_ms: 10_000,
            max_cooldown_ms: 300_000,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LimitsConfig {
    /// Generations in flight across all sessions; one more is refused at once.
    /// Default: the sum of the backends' `max_in_flight`.
    pub max_in_flight: Option<usize>,
    /// Largest LSP message an editor may send (a `didOpen` carries the whole file,
    /// JSON-escaped); a larger one is answered with an error and the session closed.
    pub max_message_bytes: usize,
    /// Largest LSP header block (`Content-Length`, `Content-Type`).
    pub max_header_bytes: usize,
}

impl Default for LimitsConfig {
    fn default() -> Self {
        LimitsConfig {
            max_in_flight: None,
            // A 10 MB source file, with room for escaping.
            max_message_bytes: 32 * 1024 * 1024,
            max_header_bytes: 8 * 1024,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CompletionConfig {
    pub max_tokens: u32,
    pub temperature: f32,
    pub top_p: Option<f32>,
    pub seed: Option<u64>,
    pub stop: Vec<String>,
    /// Most lines in one completion.
    pub max_lines: usize,
    /// `textDocument/completion` answers within this budget with what it has, so that
    /// other servers' items are not held up.
    pub budget_ms: u64,
    /// Streamed partial results are sent at line ends, or at most this often.
    pub partial_interval_ms: u64,
    /// Where the suffix goes in a fill-in-the-middle prompt (`psm` or `spm`).
    pub fim_order: FimOrder,
    /// Spaces and tabs at the end of a fill-in-the-middle prompt (the indentation
    /// after an Enter) are left out of the prompt and taken off the start of the
    /// answer. A
    /// tokenizer joins indentation to the word after it, so a prompt that ends in
    /// whitespace ends on a token boundary the model rarely saw in training, and it
    /// answers with extra indentation or the wrong line (measured in
    /// docs/benchmarks.md, "Completion quality").
    pub heal_trailing_whitespace: bool,
    /// A fill-in-the-middle answer whose first line repeats the line above the
    /// cursor or the next one below it is rejected: vps-infer backs up to where
    /// another token makes the likeliest text and goes on from there
    /// (`reject_first_line`). Small models copy a neighbouring line instead of writing
    /// the missing one (measured in docs/benchmarks.md, "Completion quality").
    /// vps-infer backends only.
    pub reject_neighbour_lines: bool,
    /// When the cursor stands after a line's indentation with nothing after it, a
    /// fill-in-the-middle answer's first line goes no deeper: vps-infer passes over
    /// tokens that would indent it further for the likeliest one that does not
    /// (`first_line_max_indent`). Small models otherwise go on inside a deeper block
    /// instead of writing the line that belongs at the cursor (measured in
    /// docs/benchmarks.md, "Completion quality"). vps-infer backends only.
    pub cap_first_line_indent: bool,
    /// When the cursor's line is empty (nothing but spaces and tabs on it), a
    /// fill-in-the-middle answer's first line has text: vps-infer passes over a line
    /// break or the end of the answer before any for the likeliest token that is not
    /// one (`first_line_not_blank`). A model sometimes ends such a line at once, and
    /// the editor shows nothing. Off by default (docs/benchmarks.md, "Completion
    /// quality", twenty-ninth pass). vps-infer backends only.
    pub first_line_not_blank: bool,
    /// When nothing but whitespace follows the cursor on its line, a
    /// fill-in-the-middle prompt's suffix starts at the next line: the line break
    /// that ends the cursor's line goes to the middle, which then ends as a line does
    /// (the answer shown is trimmed as before). Off by default (docs/benchmarks.md,
    /// "Completion quality", twenty-fifth pass).
    pub suffix_from_next_line: bool,
}

/// The order of a fill-in-the-middle prompt's parts, as vps-infer lays them out.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FimOrder {
    /// Prefix, suffix, middle: the order FIM models are trained on.
    #[default]
    Psm,
    /// Suffix, prefix, middle: typing at the cursor (an Enter included) changes only
    /// the end of the prompt, so vps-infer's KV cache keeps the rest.
    Spm,
}

impl FimOrder {
    pub fn is_psm(&self) -> bool {
        *self == FimOrder::Psm
    }
}

impl Default for CompletionConfig {
    fn default() -> Self {
        CompletionConfig {
            max_tokens: 128,
            temperature: 0.2,
            top_p: None,
            seed: None,
            stop: Vec::new(),
            max_lines: 12,
            budget_ms: 2_000,
            partial_interval_ms: 50,
            fim_order: FimOrder::Psm,
            heal_trailing_whitespace: true,
            reject_neighbour_lines: true,
            cap_first_line_indent: true,
            first_line_not_blank: false,
            suffix_from_next_line: false,
        }
    }
}

impl CompletionConfig {
    pub fn budget(&self) -> Duration {
        Duration::from_millis(self.budget_ms)
    }
    pub fn partial_interval(&self) -> Duration {
        Duration::from_millis(self.partial_interval_ms)
    }
}

/// What a generation is for; each task may use its own model.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Task {
    Completion,
    Refactor,
}

/// The models per task, optionally per language.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TaskModels {
    /// `None`: vps-infer's default model.
    pub completion: Option<String>,
    pub refactor: Option<String>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ModelsConfig {
    pub completion: Option<String>,
    pub refactor: Option<String>,
    /// Per-language choices (`[models.language.python]`), over the ones above.
    pub language: BTreeMap<String, TaskModels>,
    /// Whether a model has fill-in-the-middle tokens (`[models.fim] "smollm2-135m" =
    /// false`). Unlisted models are tried with FIM, and remembered as not having it
    /// when vps-infer says so.
    pub fim: BTreeMap<String, bool>,
}

impl ModelsConfig {
    /// The model for a task in a language; `None` leaves the choice to vps-infer.
    pub fn model_for(&self, language: Language, task: Task) -> Option<String> {
        let pick = |models: &TaskModels| match task {
            Task::Completion => models.completion.clone(),
            Task::Refactor => models.refactor.clone(),
        };
        let general = TaskModels {
            completion: self.completion.clone(),
            refactor: self.refactor.clone().or_else(|| self.completion.clone()),
        };
        self.language
            .get(language.name())
            .and_then(pick)
            .or_else(|| pick(&general))
    }

    /// `Some(false)` when the config says the model has no FIM tokens.
    pub fn fim(&self, model: Option<&str>) -> Option<bool> {
        self.fim.get(model.unwrap_or("")).copied()
    }
}

/// Values from the command line; `None` keeps what the file and environment gave.
#[derive(Debug, Clone, Default)]
pub struct Overrides {
    pub listen: Option<SocketAddr>,
    /// `--backend`, each `URL` (a vps-infer) or `KIND=URL`; replaces the file's.
    pub backends: Vec<String>,
}

impl Config {
    /// Builds the configuration: defaults < `file` < environment (`env` looks a
    /// variable up; pass `std::env::var`) < `cli`, then validates it.
    pub fn load(
        file: Option<&Path>,
        env: impl Fn(&str) -> Option<String>,
        cli: &Overrides,
    ) -> Result<Config, ConfigError> {
        let mut config = match file {
            Some(path) => Config::from_file(path)?,
            None => Config::default(),
        };
        config.apply_env(env)?;
        if let Some(listen) = cli.listen {
            config.listen = listen;
        }
        config.set_backends("--backend", &cli.backends)?;
        config.validate()?;
        Ok(config)
    }

    /// The backends lsp-edge sends generations to: `backends`, or `backend` alone.
    /// An entry without a key gets `backend`'s (`CEREBRUM_API_KEY`).
    pub fn backend_list(&self) -> Vec<BackendConfig> {
        if self.backends.is_empty() {
            return vec![self.backend.clone()];
        }
        let mut list = self.backends.clone();
        for backend in &mut list {
            if backend.api_key.is_none() {
                backend.api_key = self.backend.api_key.clone();
            }
        }
        list
    }

    /// Generations in flight across all sessions before one more is shed.
    pub fn max_in_flight(&self) -> usize {
        self.limits.max_in_flight.unwrap_or_else(|| {
            self.backend_list()
                .iter()
                .map(|backend| backend.max_in_flight)
                .sum()
        })
    }

    /// Replaces the backends with `specs` (`URL` or `KIND=URL`, from `source`),
    /// each starting from `backend`'s settings. One plain URL sets `backend.url`,
    /// as it always has.
    fn set_backends(&mut self, source: &str, specs: &[String]) -> Result<(), ConfigError> {
        if let [url] = specs {
            if !is_kind_spec(url) {
                self.backend.url = url.clone();
                self.backends.clear();
                return Ok(());
            }
        }
        if specs.is_empty() {
            return Ok(());
        }
        let mut backends = Vec::with_capacity(specs.len());
        for spec in specs {
            let mut backend = self.backend.clone();
            match spec.split_once('=').filter(|_| is_kind_spec(spec)) {
                Some((kind, url)) => {
                    backend.kind = BackendKind::from_name(kind).ok_or_else(|| {
                        ConfigError::invalid(
                            source,
                            format!(
                                "{spec:?}: unknown backend kind {kind:?} (one of {})",
                                BackendKind::ALL.map(BackendKind::name).join(", ")
                            ),
                        )
                    })?;
                    backend.url = url.to_owned();
                }
                None => backend.url = spec.clone(),
            }
            backends.push(backend);
        }
        self.backends = backends;
        Ok(())
    }

    fn from_file(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|error| ConfigError::Read {
            path: path.to_owned(),
            error,
        })?;
        Config::from_toml(&text).map_err(|message| ConfigError::Parse {
            path: path.to_owned(),
            message,
        })
    }

    /// Parses TOML text; the error names the field at fault.
    pub fn from_toml(text: &str) -> Result<Config, String> {
        let deserializer = toml::Deserializer::new(text);
        serde_path_to_error::deserialize(deserializer).map_err(|err| {
            let path = err.path().to_string();
            let inner = err.into_inner();
            let message = inner.message().to_owned();
            if path.is_empty() || path == "." {
                message
            } else {
                format!("{path}: {message}")
            }
        })
    }

    fn apply_env(&mut self, env: impl Fn(&str) -> Option<String>) -> Result<(), ConfigError> {
        let get = |name: &str| env(name).filter(|value| !value.is_empty());
        if let Some(listen) = get("CEREBRUM_LSP_LISTEN") {
            self.listen = listen.parse().map_err(|err| {
                ConfigError::invalid("CEREBRUM_LSP_LISTEN", format!("{listen:?}: {err}"))
            })?;
        }
        if let Some(url) = get("CEREBRUM_BACKEND_URL") {
            self.backend.url = url;
        }
        if let Some(key) = get("CEREBRUM_API_KEY") {
            self.backend.api_key = Some(Secret::new(key));
        }
        if let Some(list) = get("CEREBRUM_BACKENDS") {
            let specs: Vec<String> = list
                .split(|c: char| c == ',' || c.is_whitespace())
                .filter(|spec| !spec.is_empty())
                .map(str::to_owned)
                .collect();
            self.set_backends("CEREBRUM_BACKENDS", &specs)?;
        }
        if let Some(token) = get("CEREBRUM_LSP_TOKEN") {
            self.token = Some(Secret::new(token));
        }
        if let Some(model) = get("CEREBRUM_DEFAULT_MODEL") {
            self.models.completion = Some(model);
        }
        self.http.apply_env(get)?;
        if let Some(max) = get("CEREBRUM_LSP_MAX_IN_FLIGHT") {
            self.limits.max_in_flight = Some(max.parse().map_err(|err| {
                ConfigError::invalid("CEREBRUM_LSP_MAX_IN_FLIGHT", format!("{max:?}: {err}"))
            })?);
        }
        if let Some(max) = get("CEREBRUM_LSP_MAX_MESSAGE_BYTES") {
            self.limits.max_message_bytes = max.parse().map_err(|err| {
                ConfigError::invalid("CEREBRUM_LSP_MAX_MESSAGE_BYTES", format!("{max:?}: {err}"))
            })?;
        }
        if let Some(max) = get("CEREBRUM_LSP_MAX_HEADER_BYTES") {
            self.limits.max_header_bytes = max.parse().map_err(|err| {
                ConfigError::invalid("CEREBRUM_LSP_MAX_HEADER_BYTES", format!("{max:?}: {err}"))
            })?;
        }
        Ok(())
    }

    /// Checks every field once; the error names the first bad one.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.session_concurrency < 4 {
            return Err(ConfigError::invalid(
                "session_concurrency",
                "must be at least 4",
            ));
        }
        self.backend.validate("backend")?;
        let mut names = std::collections::HashSet::new();
        for (index, backend) in self.backends.iter().enumerate() {
            let field = format!("backends[{index}]");
            backend.validate(&field)?;
            if !names.insert(backend.display_name()) {
                return Err(ConfigError::invalid(
                    format!("{field}.name"),
                    format!("{:?} names two backends", backend.display_name()),
                ));
            }
        }
        let breaker = &self.breaker;
        if breaker.failure_threshold == 0 {
            return Err(ConfigError::invalid(
                "breaker.failure_threshold",
                "must be at least 1",
            ));
        }
        if breaker.cooldown_ms == 0 || breaker.max_cooldown_ms < breaker.cooldown_ms {
            return Err(ConfigError::invalid(
                "breaker.cooldown_ms",
                "must be positive and at most breaker.max_cooldown_ms",
            ));
        }
        if self.limits.max_in_flight == Some(0) {
            return Err(ConfigError::invalid(
                "limits.max_in_flight",
                "must be at least 1",
            ));
        }
        if self.limits.max_message_bytes < 4096 {
            return Err(ConfigError::invalid(
                "limits.max_message_bytes",
                "must be at least 4096",
            ));
        }
        if self.limits.max_header_bytes < 64 {
            return Err(ConfigError::invalid(
                "limits.max_header_bytes",
                "must be at least 64",
            ));
        }
        self.completion.validate()?;
        self.http.validate()?;
        if let Some(token) = &self.token {
            if token.expose().trim().is_empty() {
                return Err(ConfigError::invalid("token", "must not be empty"));
            }
        }
        Ok(())
    }

    /// A TCP listener off loopback must require a session token.
    pub fn validate_listener(&self) -> Result<(), ConfigError> {
        if !self.listen.ip().is_loopback() && self.token.is_none() {
            return Err(ConfigError::invalid(
                "token",
                format!(
                    "listening on the non-loopback address {} requires a session token \
                     (set CEREBRUM_LSP_TOKEN or `token` in the config file)",
                    self.listen
                ),
            ));
        }
        Ok(())
    }

    /// This configuration with a session's `initializationOptions` applied. Only
    /// `backend`, `models` and `completion` may change per session (and `token`,
    /// which is the session's credential, not a setting).
    pub fn with_session_options(&self, options: &serde_json::Value) -> Result<Config, ConfigError> {
        let serde_json::Value::Object(options) = options else {
            return Err(ConfigError::invalid(
                "initializationOptions",
                "must be an object",
            ));
        };
        let mut merged = serde_json::to_value(self)
            .map_err(|err| ConfigError::invalid("initializationOptions", err.to_string()))?;
        for (key, value) in options {
            match key.as_str() {
                "token" => {}
                "backend" | "models" | "completion" => {
                    if let Some(slot) = merged.get_mut(key.as_str()) {
                        merge_json(slot, value);
                    }
                }
                other => {
                    return Err(ConfigError::invalid(
                        format!("initializationOptions.{other}"),
                        "unknown, or not settable per session (backend, models and \
                         completion are)",
                    ))
                }
            }
        }
        // A session that points lsp-edge at another backend uses that one alone, and
        // must bring its key: the server's own key never goes to a URL the client
        // chose.
        if let Some(backend) = options.get("backend") {
            if backend.get("url").is_some() {
                merged["backends"] = serde_json::Value::Array(Vec::new());
                if backend.get("api_key").is_none() {
                    if let Some(slot) = merged.get_mut("backend") {
                        slot["api_key"] = serde_json::Value::Null;
                    }
                }
            }
        }
        let config: Config = serde_path_to_error::deserialize(merged).map_err(|err| {
            ConfigError::invalid(
                format!("initializationOptions.{}", err.path()),
                err.into_inner().to_string(),
            )
        })?;
        config.validate().map_err(|err| match err {
            ConfigError::Invalid { field, message } => ConfigError::Invalid {
                field: format!("initializationOptions.{field}"),
                message,
            },
            other => other,
        })?;
        Ok(config)
    }
}

impl BackendConfig {
    /// The name logs, `/health` and `/v1/stats` show: `name`, or `KIND@HOST:PORT`.
    pub fn display_name(&self) -> String {
        if let Some(name) = &self.name {
            return name.clone();
        }
        let place = reqwest::Url::parse(&self.url)
            .ok()
            .and_then(|url| {
                let host = url.host_str()?.to_owned();
                Some(match url.port_or_known_default() {
                    Some(port) => format!("{host}:{port}"),
                    None => host,
                })
            })
            .unwrap_or_else(|| self.url.clone());
        format!("{}@{place}", self.kind)
    }

    /// `field` is where the table sits (`backend`, `backends[1]`).
    fn validate(&self, field: &str) -> Result<(), ConfigError> {
        let invalid = |name: &str, message: String| {
            Err(ConfigError::invalid(format!("{field}.{name}"), message))
        };
        match reqwest::Url::parse(&self.url) {
            Ok(url) if matches!(url.scheme(), "http" | "https") && url.host().is_some() => {}
            Ok(_) => return invalid("url", format!("{:?} is not an http:// URL", self.url)),
            Err(err) => return invalid("url", format!("{:?}: {err}", self.url)),
        }
        for (name, value) in [
            ("connect_timeout_ms", self.connect_timeout_ms),
            ("first_token_timeout_ms", self.first_token_timeout_ms),
            ("total_timeout_ms", self.total_timeout_ms),
            ("weight", u64::from(self.weight)),
            ("max_in_flight", self.max_in_flight as u64),
        ] {
            if value == 0 {
                return invalid(name, "must be positive".into());
            }
        }
        if self.total_timeout_ms < self.first_token_timeout_ms {
            return invalid(
                "total_timeout_ms",
                format!("must be at least {field}.first_token_timeout_ms"),
            );
        }
        if self
            .name
            .as_deref()
            .is_some_and(|name| name.trim().is_empty())
        {
            return invalid("name", "must not be empty".into());
        }
        let needs_model = matches!(self.kind, BackendKind::Openai | BackendKind::Ollama);
        if needs_model
            && self
                .model
                .as_deref()
                .is_none_or(|model| model.trim().is_empty())
        {
            return invalid(
                "model",
                format!(
                    "a backend of kind {} needs the name of the model it serves",
                    self.kind
                ),
            );
        }
        if self.fim_tokens.is_some() && self.kind != BackendKind::Openai {
            return invalid(
                "fim_tokens",
                format!(
                    "only an openai backend takes FIM tokens; a {} backend knows its model's",
                    self.kind
                ),
            );
        }
        Ok(())
    }
}

impl CompletionConfig {
    fn validate(&self) -> Result<(), ConfigError> {
        if !(1..=4096).contains(&self.max_tokens) {
            return Err(ConfigError::invalid(
                "completion.max_tokens",
                "must be within 1..=4096",
            ));
        }
        if !(0.0..=2.0).contains(&self.temperature) {
            return Err(ConfigError::invalid(
                "completion.temperature",
                "must be within 0..=2",
            ));
        }
        if let Some(top_p) = self.top_p {
            if !(0.0..=1.0).contains(&top_p) || top_p == 0.0 {
                return Err(ConfigError::invalid(
                    "completion.top_p",
                    "must be within (0, 1]",
                ));
            }
        }
        if self.max_lines == 0 {
            return Err(ConfigError::invalid(
                "completion.max_lines",
                "must be at least 1",
            ));
        }
        if self.budget_ms == 0 {
            return Err(ConfigError::invalid(
                "completion.budget_ms",
                "must be positive",
            ));
        }
        Ok(())
    }
}

/// Whether `spec` is `KIND=URL` rather than a URL with a `=` in its query: the
/// part before the first `=` has no `:` or `/`.
fn is_kind_spec(spec: &str) -> bool {
    spec.split_once('=')
        .is_some_and(|(kind, _)| !kind.contains([':', '/']))
}

/// Deep-merges `patch` into `target`: objects key by key, anything else replaced.
fn merge_json(target: &mut serde_json::Value, patch: &serde_json::Value) {
    match (target, patch) {
        (serde_json::Value::Object(target), serde_json::Value::Object(patch)) => {
            for (key, value) in patch {
                match target.get_mut(key) {
                    Some(slot) => merge_json(slot, value),
                    None => {
                        target.insert(key.clone(), value.clone());
                    }
                }
            }
        }
        (target, patch) => *target = patch.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn no_env(_: &str) -> Option<String> {
        None
    }

    #[test]
    fn a_missing_file_is_named_with_its_reason_once() {
        let path = Path::new("/nonexistent/cerebrum/lsp-edge.toml");
        let err = Config::load(Some(path), no_env, &Overrides::default()).unwrap_err();
        let message = err.to_string();
        assert!(
            message.contains("/nonexistent/cerebrum/lsp-edge.toml"),
            "{message}"
        );
        assert!(message.contains("No such file"), "{message}");
        // Not a cause as well: an error chain would say it twice.
        assert!(std::error::Error::source(&err).is_none());
    }

    #[test]
    fn defaults_are_valid_and_match_the_issue() {
        let config = Config::load(None, no_env, &Overrides::default()).unwrap();
        assert_eq!(config.listen.to_string(), "127.0.0.1:7001");
        assert_eq!(config.backend.url, "http://127.0.0.1:9000");
        assert_eq!(config.limits.max_in_flight, None);
        assert_eq!(config.max_in_flight(), 2);
        assert_eq!(config.breaker.failure_threshold, 3);
        assert_eq!(config.breaker.cooldown_ms, 10_000);
        assert_eq!(config.breaker.max_cooldown_ms, 300_000);
    }

    #[test]
    fn file_then_env_then_cli() {
        let dir = std::env::temp_dir().join(format!("lsp-edge-config-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("edge.toml");
        std::fs::write(
            &path,
            r#"
listen = "127.0.0.1:7100"
[backend]
url = "http://file:1"
[limits]
max_in_flight = 5
[models]
completion = "qwen2.5-coder-0.5b"
[models.language.python]
completion = "py-model"
[models.fim]
"smollm2-135m" = false
"#,
        )
        .unwrap();
        let env = |name: &str| match name {
            "CEREBRUM_BACKEND_URL" => Some("http://env:2".to_owned()),
            "CEREBRUM_API_KEY" => Some("k3y".to_owned()),
            "CEREBRUM_LSP_MAX_IN_FLIGHT" => Some("3".to_owned()),
            _ => None,
        };
        let cli = Overrides {
            listen: None,
            backends: vec!["http://cli:3".into()],
        };
        let config = Config::load(Some(&path), env, &cli).unwrap();
        assert_eq!(config.listen.to_string(), "127.0.0.1:7100");
        assert_eq!(config.backend.url, "http://cli:3");
        assert_eq!(config.backend.api_key.as_ref().unwrap().expose(), "k3y");
        assert_eq!(config.limits.max_in_flight, Some(3));
        assert_eq!(
            config.models.model_for(Language::Python, Task::Completion),
            Some("py-model".into())
        );
        assert_eq!(
            config.models.model_for(Language::Rust, Task::Completion),
            Some("qwen2.5-coder-0.5b".into())
        );
        assert_eq!(
            config.models.model_for(Language::Rust, Task::Refactor),
            Some("qwen2.5-coder-0.5b".into())
        );
        assert_eq!(config.models.fim(Some("smollm2-135m")), Some(false));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn the_default_model_names_the_completion_model() {
        let env = |name: &str| (name == "CEREBRUM_DEFAULT_MODEL").then(|| "coder".to_owned());
        let config = Config::load(None, env, &Overrides::default()).unwrap();
        assert_eq!(
            config.models.model_for(Language::Rust, Task::Completion),
            Some("coder".into())
        );
        assert_eq!(
            config.models.model_for(Language::Rust, Task::Refactor),
            Some("coder".into())
        );
    }

    #[test]
    fn a_model_may_have_windows_of_its_own() {
        let config = Config::from_toml(
            "[context]\nprefix_max_lines = 70\n[context.models.coder]\nsuffix_max_chars = 300\n",
        )
        .unwrap();
        let windows = config.context.windows_for("coder").unwrap();
        assert_eq!(windows.suffix_max_chars, Some(300));
        assert_eq!(config.context.prefix_max_lines, 70);
        let err = Config::from_toml("[context.models.coder]\nsuffix = 3\n").unwrap_err();
        assert!(err.contains("suffix"), "{err}");
    }

    #[test]
    fn bad_fields_are_named() {
        let err = Config::from_toml("[limits]\nmax_in_flight = \"two\"").unwrap_err();
        assert!(err.contains("limits.max_in_flight"), "{err}");
        let err = Config::from_toml("[backend]\nurl_typo = 1").unwrap_err();
        assert!(err.contains("url_typo"), "{err}");

        let mut config = Config::default();
        config.limits.max_in_flight = Some(0);
        let err = config.validate().unwrap_err().to_string();
        assert!(err.starts_with("limits.max_in_flight"), "{err}");

        let mut config = Config::default();
        config.backend.url = "ftp://x".into();
        let err = config.validate().unwrap_err().to_string();
        assert!(err.starts_with("backend.url"), "{err}");

        let env = |name: &str| (name == "CEREBRUM_LSP_LISTEN").then(|| "nowhere".to_owned());
        let err = Config::load(None, env, &Overrides::default()).unwrap_err();
        assert!(err.to_string().starts_with("CEREBRUM_LSP_LISTEN"), "{err}");
    }

    #[test]
    fn non_loopback_listener_requires_a_token() {
        let mut config = Config {
            listen: "0.0.0.0:7001".parse().unwrap(),
            ..Config::default()
        };
        let err = config.validate_listener().unwrap_err().to_string();
        assert!(err.contains("requires a session token"), "{err}");
        config.token = Some(Secret::new("t"));
        config.validate_listener().unwrap();
    }

    #[test]
    fn session_options_override_only_session_sections() {
        let mut base = Config::default();
        base.backend.api_key = Some(Secret::new("server-key"));
        let config = base
            .with_session_options(&json!({
                "token": "t",
                "completion": {"max_lines": 3, "budget_ms": 9000},
                "models": {"completion": "smollm2-135m", "fim": {"smollm2-135m": false}},
            }))
            .unwrap();
        assert_eq!(config.completion.max_lines, 3);
        assert_eq!(config.completion.budget_ms, 9000);
        assert_eq!(
            config.completion.max_tokens, 128,
            "untouched fields keep their value"
        );
        assert_eq!(config.models.fim(Some("smollm2-135m")), Some(false));
        assert_eq!(config.backend.api_key, base.backend.api_key);

        let err = base
            .with_session_options(&json!({"limits": {"max_in_flight": 100}}))
            .unwrap_err()
            .to_string();
        assert!(err.starts_with("initializationOptions.limits"), "{err}");

        let err = base
            .with_session_options(&json!({"completion": {"max_lines": "x"}}))
            .unwrap_err()
            .to_string();
        assert!(
            err.starts_with("initializationOptions.completion.max_lines"),
            "{err}"
        );
    }

    #[test]
    fn server_key_never_follows_a_client_chosen_backend() {
        let mut base = Config::default();
        base.backend.api_key = Some(Secret::new("server-key"));
        let config = base
            .with_session_options(&json!({"backend": {"url": "http://elsewhere:9"}}))
            .unwrap();
        assert_eq!(config.backend.url, "http://elsewhere:9");
        assert_eq!(config.backend.api_key, None);
    }

    #[test]
    fn secrets_do_not_print() {
        let secret = Secret::new("hunter2");
        assert_eq!(format!("{secret:?}"), "Secret(***)");
    }

    fn with_backends(specs: &[&str]) -> Result<Config, String> {
        let cli = Overrides {
            backends: specs.iter().map(|spec| (*spec).to_owned()).collect(),
            ..Overrides::default()
        };
        let env = |name: &str| (name == "CEREBRUM_API_KEY").then(|| "k3y".to_owned());
        Config::load(None, env, &cli).map_err(|err| err.to_string())
    }

    /// `kind url key` per backend, for comparing lists at a glance.
    fn summary(config: &Config) -> Vec<String> {
        config
            .backend_list()
            .iter()
            .map(|backend| {
                let key = backend.api_key.as_ref().map_or("-", Secret::expose);
                format!("{} {} {key}", backend.display_name(), backend.url)
            })
            .collect()
    }

    #[test]
    fn backends_from_the_command_line() {
        // One plain URL is the one vps-infer, as it always was.
        let one = with_backends(&["http://vps:9000"]).unwrap();
        assert!(one.backends.is_empty());
        assert_eq!(summary(&one), ["vps-infer@vps:9000 http://vps:9000 k3y"]);
        // A URL whose query has `=` is still a URL.
        let query = with_backends(&["http://vps:9000/?a=b"]).unwrap();
        assert_eq!(query.backend.url, "http://vps:9000/?a=b");

        let several = with_backends(&[
            "http://a:9000",
            "llama-server=http://b:8080",
            "vps-infer=http://c:9000",
        ])
        .unwrap();
        assert_eq!(
            summary(&several),
            [
                "vps-infer@a:9000 http://a:9000 k3y",
                "llama-server@b:8080 http://b:8080 k3y",
                "vps-infer@c:9000 http://c:9000 k3y",
            ]
        );
        assert_eq!(several.max_in_flight(), 6);

        let err = with_backends(&["mistral=http://a:1"]).unwrap_err();
        assert!(err.contains("unknown backend kind \"mistral\""), "{err}");
        assert!(
            err.contains("vps-infer, llama-server, openai, ollama"),
            "{err}"
        );
        let err = with_backends(&["openai=http://a:1"]).unwrap_err();
        assert!(err.starts_with("backends[0].model"), "{err}");
        let err = with_backends(&["http://a:1", "llama-server=ftp://b"]).unwrap_err();
        assert!(err.starts_with("backends[1].url"), "{err}");
        let err = with_backends(&["http://a:1", "http://a:1"]).unwrap_err();
        assert!(err.contains("names two backends"), "{err}");
    }

    #[test]
    fn backends_from_the_file_and_the_environment() {
        let config = Config::from_toml(
            r#"
[backend]
api_key = "shared"

[[backends]]
name = "gpu"
kind = "openai"
url = "http://gpu:8000/v1"
model = "Qwen/Qwen2.5-Coder-1.5B"
weight = 3
max_in_flight = 8
api_key = "own"

[[backends]]
kind = "ollama"
url = "http://laptop:11434"
model = "qwen2.5-coder:1.5b"
"#,
        )
        .unwrap();
        config.validate().unwrap();
        assert_eq!(
            summary(&config),
            [
                "gpu http://gpu:8000/v1 own",
                "ollama@laptop:11434 http://laptop:11434 shared",
            ]
        );
        assert_eq!(config.max_in_flight(), 10);

        let err =
            Config::from_toml("[[backends]]\nkind = \"tgi\"\nurl = \"http://a\"").unwrap_err();
        assert!(err.starts_with("backends[0].kind"), "{err}");
        let mut tokens = Config::default();
        tokens.backends.push(BackendConfig {
            kind: BackendKind::LlamaServer,
            fim_tokens: FimTokens::for_model("qwen2.5-coder"),
            ..BackendConfig::default()
        });
        let err = tokens.validate().unwrap_err().to_string();
        assert!(err.starts_with("backends[0].fim_tokens"), "{err}");

        let env = |name: &str| {
            (name == "CEREBRUM_BACKENDS").then(|| "http://a:9000, ollama=http://b:11434".to_owned())
        };
        let err = Config::load(None, env, &Overrides::default())
            .unwrap_err()
            .to_string();
        assert!(err.starts_with("backends[1].model"), "{err}");
        let env = |name: &str| {
            (name == "CEREBRUM_BACKENDS")
                .then(|| "http://a:9000 llama-server=http://b:8080".to_owned())
        };
        let config = Config::load(None, env, &Overrides::default()).unwrap();
        assert_eq!(config.backend_list().len(), 2);
        // The command line replaces the environment's list.
        let cli = Overrides {
            backends: vec!["http://c:9000".into()],
            ..Overrides::default()
        };
        let config = Config::load(None, env, &cli).unwrap();
        assert_eq!(summary(&config), ["vps-infer@c:9000 http://c:9000 -"]);
    }

    #[test]
    fn a_session_that_names_a_backend_uses_it_alone() {
        let mut base = Config {
            backends: vec![
                BackendConfig {
                    url: "http://a:9000".into(),
                    ..BackendConfig::default()
                },
                BackendConfig {
                    url: "http://b:9000".into(),
                    ..BackendConfig::default()
                },
            ],
            ..Config::default()
        };
        base.backend.api_key = Some(Secret::new("server-key"));
        let same = base
            .with_session_options(&json!({"completion": {"max_tokens": 9}}))
            .unwrap();
        assert_eq!(same.backend_list(), base.backend_list());
        let own = base
            .with_session_options(&json!({"backend": {"url": "http://mine:9000"}}))
            .unwrap();
        assert_eq!(summary(&own), ["vps-infer@mine:9000 http://mine:9000 -"]);
    }
}
