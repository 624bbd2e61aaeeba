//! The inference engine: one thread owns llama.cpp (backend, model, context) and works
//! through jobs that async handlers send it over a channel.
//!
//! Handlers never block on a decode: they submit a [`Job`] and read its [`Event`]s from
//! a tokio channel. Dropping that receiver (a client went away) cancels the job within
//! one token. The thread serves several jobs at once, one per sequence of the context,
//! most urgent [`Priority`] first (`worker.rs`, `schedule.rs`).

mod error;
pub mod first_line;
pub mod gguf;
pub mod line_start;
pub mod prompt;
pub mod reuse;
pub mod schedule;
pub mod text;
pub mod tokenize;
mod worker;

pub use self::error::EngineError;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{mpsc as std_mpsc, Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use serde::Serialize;
use tokio::sync::{mpsc, oneshot};

use crate::config::{Config, ModelConfig};

use crate::guard::ResourceGuard;
use crate::stats::Stats;
pub use prompt::{Extra, PromptParts};

/// Sampling and stopping parameters of one request.
#[derive(Debug, Clone)]
pub struct Sampling {
    pub max_tokens: u32,
    /// 0 means greedy.
    pub temperature: f32,
    pub top_p: f32,
    pub stop: Vec<String>,
    pub seed: u32,
    /// Lines the answer's first line must not be (`first_line`): the lines next to
    /// the cursor, which small models copy.
    pub reject_first_line: Vec<String>,
    /// The deepest indentation the answer's first line may have (`indent`): the
    /// cursor's, when it stands after one.
    pub first_line_max_indent: Option<String>,
    /// The answer's first line has text: a line break or the end before any is
    /// passed over (`indent`). Editors ask for it when the cursor's line is empty.
    pub first_line_not_blank: bool,
}

/// One generation request, validated.
#[derive(Debug, Clone)]
pub struct GenerateRequest {
    pub model: String,
    pub parts: PromptParts,
    pub sampling: Sampling,
    pub priority: Priority,
}

/// How urgent a request is. A more urgent one takes a free sequence first, and its
/// tokens are decoded first; background work is not decoded at all while anything
/// more urgent runs, and gives its sequence up to it when none is free.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, serde::Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum Priority {
    /// Cache warming, speculative completions: worth doing only when nothing else is.
    Background,
    /// Instructions and refactors: someone waits, but for a long answer.
    Instruction,
    /// Ghost text while typing: someone waits for every keystroke.
    Interactive,
}

/// A completion asks for a few tokens; an instruction (a refactor) for many, or talks
/// to the model's chat template.
const INTERACTIVE_MAX_TOKENS: u32 = 256;

impl Priority {
    pub const ALL: [Priority; 3] = [
        Priority::Interactive,
        Priority::Instruction,
        Priority::Background,
    ];

    /// The priority of a request that names none: a chat request, or one without a
    /// suffix that asks for more than 256 tokens, is an instruction; anything else (a
    /// fill-in-the-middle or short completion) is interactive.
    pub fn default_for(parts: &PromptParts, max_tokens: u32) -> Priority {
        let long_without_suffix = parts.suffix.is_none() && max_tokens > INTERACTIVE_MAX_TOKENS;
        if parts.chat.is_some() || long_without_suffix {
            Priority::Instruction
        } else {
            Priority::Interactive
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Priority::Interactive => "interactive",
            Priority::Instruction => "instruction",
            Priority::Background => "background",
        }
    }

    /// Position in [`Priority::ALL`] (and in the statistics' arrays).
    pub fn index(self) -> usize {
        match self {
            Priority::Interactive => 0,
            Priority::Instruction => 1,
            Priority::Background => 2,
        }
    }
}

/// What a job reports, in order: `Started`, any number of `Token`s, then `Done` or
/// `Error`.
#[derive(Debug)]
pub enum Event {
    Started {
        prompt_tokens: usize,
        cached_tokens: usize,
    },
    Token(String),
    Done(Outcome),
    Error(EngineError),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum StopReason {
    Eos,
    Length,
    Stop,
    Cancelled,
}

/// The statistics of a finished generation (the non-streamed answer, and the last SSE
/// event).
#[derive(Debug, Clone, Serialize)]
pub struct Outcome {
    pub text: String,
    pub model: String,
    pub prompt_tokens: usize,
    /// Prompt tokens taken from the KV cache instead of being evaluated.
    pub cached_tokens: usize,
    /// Of `cached_tokens`, those found past the first difference and moved to their
    /// new positions.
    pub shifted_tokens: usize,
    /// Tokens generated.
    pub total_tokens: usize,
    /// Seconds from the engine taking the job to its end, model load excluded.
    pub inference_time: f64,
    /// Generation speed, prompt evaluation excluded.
    pub tokens_per_second: f64,
    /// Seconds spent evaluating the prompt tokens that were not cached.
    pub prompt_eval_time: f64,
    /// Seconds from the engine taking the job to the first generated token.
    pub time_to_first_token: f64,
    pub stop_reason: StopReason,
}

pub(crate) struct Job {
    request: GenerateRequest,
    events: mpsc::Sender<Event>,
    /// When it was submitted: the time to first token counted in the statistics
    /// includes the wait for a sequence.
    submitted: Instant,
}

pub(crate) enum Command {
    Generate(Job),
    Unload(oneshot::Sender<UnloadReport>),
    /// A question about a model's vocabulary (`tokenize.rs`).
    Vocab(tokenize::VocabJob),
    /// Stop decoding, free the model and end the thread.
    Stop,
}

/// What `/v1/cleanup` freed.
#[derive(Debug, Clone, Serialize, Default)]
pub struct UnloadReport {
    pub unloaded: Option<String>,
    pub freed_bytes: u64,
    pub freed_mb: f64,
}

/// The engine's state as `/health` and `/v1/models` see it, without asking the thread.
#[derive(Debug, Default, Clone)]
pub struct EngineStatus {
    pub loaded: Option<String>,
    pub loading: Option<String>,
    pub last_load_error: Option<String>,
}

pub(crate) struct Shared {
    pub status: Mutex<EngineStatus>,
    pub stats: Arc<Stats>,
    pub guard: Arc<ResourceGuard>,
    pub models: BTreeMap<String, ModelConfig>,
    pub idle_unload: Duration,
    /// Sequences decoded together: jobs served at once.
    pub parallel: usize,
    /// Jobs submitted and not yet given a sequence.
    pub queued: AtomicUsize,
    /// Set on shutdown: the jobs in progress stop at their next token, a model load
    /// at its next progress report.
    pub stopping: AtomicBool,
    /// Models whose file failed [`gguf::check`], with the reason; checked again
    /// when asked for, so a replaced file is taken without a restart.
    pub bad_files: Mutex<BTreeMap<String, String>>,
}

impl Shared {
    fn set_status(&self, f: impl FnOnce(&mut EngineStatus)) {
        if let Ok(mut status) = self.status.lock() {
            f(&mut status);
        }
    }
}

/// A cheap handle to the engine thread.
#[derive(Clone)]
pub struct Engine {
    tx: std_mpsc::Sender<Command>,
    shared: Arc<Shared>,
    thread: Arc<Mutex<Option<JoinHandle<()>>>>,
    queue_size: usize,
    default_model: String,
}

impl Engine {
    /// Starts the engine thread. llama.cpp's backend is initialised there, once.
    pub fn start(
        config: &Config,
        stats: Arc<Stats>,
        guard: Arc<ResourceGuard>,
    ) -> anyhow::Result<Engine> {
        let (tx, rx) = std_mpsc::channel();
        let shared = Arc::new(Shared {
            status: Mutex::new(EngineStatus::default()),
            stats,
            guard,
            models: config.models.clone(),
            idle_unload: config.idle_unload,
            parallel: config.parallel,
            queued: AtomicUsize::new(0),
            stopping: AtomicBool::new(false),
            bad_files: Mutex::new(BTreeMap::new()),
        });
        // A corrupt file is reported now, in `/health`, not at the first request.
        let mut first_problem = None;
        for (name, model) in &config.models {
            if let Err(err) = gguf::check(&model.path) {
                let message = format!("model {name:?} cannot be loaded: {err}");
                tracing::error!("{message}");
                if *name == config.default_model || first_problem.is_none() {
                    first_problem = Some(message.clone());
                }
                if let Ok(mut bad) = shared.bad_files.lock() {
                    bad.insert(name.clone(), message);
                }
            }
        }
        shared.set_status(|s| s.last_load_error = first_problem);
        let (ready_tx, ready_rx) = std_mpsc::channel();
        let worker_shared = shared.clone();
        let thread = std::thread::Builder::new()
            .name("llama-engine".into())
            .spawn(move || worker::run(rx, worker_shared, ready_tx))?;
        // Backend initialisation errors are startup errors.
        ready_rx
            .recv()
            .map_err(|_| anyhow::anyhow!("the engine thread died while starting"))??;
        Ok(Engine {
            tx,
            shared,
            thread: Arc::new(Mutex::new(Some(thread))),
            queue_size: config.queue_size,
            default_model: config.default_model.clone(),
        })
    }

    pub fn default_model(&self) -> &str {
        &self.default_model
    }

    pub fn models(&self) -> &BTreeMap<String, ModelConfig> {
        &self.shared.models
    }

    /// Sequences decoded together: requests served at once.
    pub fn parallel(&self) -> usize {
        self.shared.parallel
    }

    /// Requests submitted and not yet given a sequence.
    pub fn queue_depth(&self) -> usize {
        self.shared.queued.load(Ordering::SeqCst)
    }

    pub fn status(&self) -> EngineStatus {
        self.shared
            .status
            .lock()
            .map(|s| s.clone())
            .unwrap_or_default()
    }

    /// Queues a generation; its events arrive on the returned channel. Refuses at once
    /// (503) when the queue of waiting requests is full.
    pub fn generate(&self, request: GenerateRequest) -> Result<mpsc::Receiver<Event>, EngineError> {
        if !self.shared.models.contains_key(&request.model) {
            return Err(EngineError::UnknownModel(format!(
                "model {:?} is not configured; see GET /v1/models",
                request.model
            )));
        }
        self.check_file(&request.model)?;
        let queued = self.shared.queued.fetch_add(1, Ordering::SeqCst);
        if queued >= self.queue_size {
            self.shared.queued.fetch_sub(1, Ordering::SeqCst);
            Stats::add(&self.shared.stats.rejected_queue_full, 1);
            return Err(EngineError::unavailable(
                format!("server busy: {queued} requests are already waiting"),
                2,
            ));
        }
        // Room for a burst of tokens; the engine waits when a client reads slowly.
        let (events, rx) = mpsc::channel(256);
        self.shared.stats.touch();
        if self
            .tx
            .send(Command::Generate(Job {
                request,
                events,
                submitted: Instant::now(),
            }))
            .is_err()
        {
            self.shared.queued.fetch_sub(1, Ordering::SeqCst);
            return Err(EngineError::Internal(
                "the inference engine has stopped".into(),
            ));
        }
        Ok(rx)
    }

    /// Refuses a model whose file failed its check at start, unless it passes now.
    fn check_file(&self, model: &str) -> Result<(), EngineError> {
        let known_bad = self
            .shared
            .bad_files
            .lock()
            .map(|bad| bad.contains_key(model))
            .unwrap_or(false);
        if !known_bad {
            return Ok(());
        }
        let path = &self.shared.models[model].path;
        match gguf::check(path) {
            Ok(_) => {
                tracing::info!(model, "the model file passes its check now");
                if let Ok(mut bad) = self.shared.bad_files.lock() {
                    bad.remove(model);
                }
                self.shared.set_status(|s| s.last_load_error = None);
                Ok(())
            }
            Err(err) => Err(EngineError::unavailable(
                format!("model {model:?} cannot be loaded: {err}"),
                30,
            )),
        }
    }

    /// Stops the engine thread and waits for it: the jobs in progress end at their next
    /// token and the model is freed. The process must not exit while that thread is
    /// inside llama.cpp (tearing down under a running decode crashes), so shutdown
    /// calls this before returning from `main`. Blocks; call it off the runtime.
    pub fn stop(&self) {
        self.shared.stopping.store(true, Ordering::SeqCst);
        let _ = self.tx.send(Command::Stop);
        let thread = self.thread.lock().ok().and_then(|mut t| t.take());
        if let Some(thread) = thread {
            if thread.join().is_err() {
                tracing::error!("the engine thread panicked");
            }
        }
    }

    /// Unloads the model now (after the jobs running or waiting for it, if any).
    pub async fn unload(&self) -> Result<UnloadReport, EngineError> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(Command::Unload(reply))
            .map_err(|_| EngineError::Internal("the inference engine has stopped".into()))?;
        rx.await
            .map_err(|_| EngineError::Internal("the inference engine has stopped".into()))
    }
}

/// Runs one request to the end and collects its text (for callers that do not stream).
pub async fn collect(mut rx: mpsc::Receiver<Event>) -> Result<Outcome, EngineError> {
    while let Some(event) = rx.recv().await {
        match event {
            Event::Done(outcome) => return Ok(outcome),
            Event::Error(e) => return Err(e),
            Event::Started { .. } | Event::Token(_) => {}
        }
    }
    Err(EngineError::Internal(
        "the inference engine dropped the request".into(),
    ))
}

pub(crate) fn since(t: Instant) -> f64 {
    t.elapsed().as_secs_f64()
}
