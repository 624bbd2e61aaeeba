//! The engine thread: owns the llama.cpp backend, the loaded model and its context.
//!
//! One model at a time. It is loaded by the first job that asks for it (later jobs
//! queue behind that load, so concurrent first requests load it once), switched when a
//! job asks for another (after the jobs running on the old one end), and dropped after
//! an idle period or on `/v1/cleanup`.
//!
//! Several jobs at once: the context has `parallel` sequences, each with its own
//! cached prompt, and one more for parking (below). A job waits in the queue until a
//! sequence is free, then takes the one whose cache shares the longest prefix with its
//! prompt (`schedule.rs`). Each step puts into one `llama_decode` batch the next token
//! of every generating job and a micro-batch of every prompt still being evaluated,
//! most urgent job first; so a long generation never holds a new request back for more
//! than one micro-batch, and its own tokens ride along in the new one's batches.
//!
//! KV-cache reuse: each sequence remembers the tokens it holds; a new prompt keeps the
//! longest common prefix with them in place and, past the first difference, long runs
//! of them at shifted positions (`reuse.rs`), and evaluates only the rest. The parking
//! sequence holds those runs while the gaps before them are evaluated (llama.cpp only
//! appends to a sequence at its end); a job does that when it takes its sequence, in
//! one go, so only one job ever parks at a time.

use std::num::NonZeroU32;
use std::sync::atomic::Ordering;
use std::sync::{mpsc as std_mpsc, Arc};
use std::time::{Duration, Instant};

use tokio::sync::oneshot;

use llama_cpp_2::context::params::LlamaContextParams;
use llama_cpp_2::context::LlamaContext;
use llama_cpp_2::llama_backend::LlamaBackend;
use llama_cpp_2::llama_batch::LlamaBatch;
use llama_cpp_2::model::params::LlamaModelParams;
use llama_cpp_2::model::{LlamaChatMessage, LlamaModel};
use llama_cpp_2::sampling::LlamaSampler;
use llama_cpp_2::token::LlamaToken;
use llama_cpp_2::vocab::LlamaVocab;

use super::first_line::{self, FirstLineGuard, Verdict};
use super::line_start::{Fit, LineStart};
use super::prompt::{self, FimTokens};
use super::reuse::{self, Cached, Plan, Run};
use super::schedule::{self, Candidate, Running};
use super::text::{StopMatcher, Utf8Stream};
use super::tokenize;
use super::EngineError;
use super::{since, Command, Event, Job, Outcome, Priority, Shared, StopReason, UnloadReport};
use crate::config::ModelConfig;
use crate::guard::Refusal;
use crate::stats::Stats;

pub(crate) fn run(
    rx: std_mpsc::Receiver<Command>,
    shared: Arc<Shared>,
    ready: std_mpsc::Sender<anyhow::Result<()>>,
) {
    let backend = match LlamaBackend::init() {
        Ok(b) => b,
        Err(e) => {
            let _ = ready.send(Err(anyhow::anyhow!("cannot initialise llama.cpp: {e}")));
            return;
        }
    };
    report_gpu_offload(&backend, &shared);
    let _ = ready.send(Ok(()));

    let mut pending: Option<Command> = None;
    loop {
        let command = match pending.take() {
            Some(c) => c,
            None => match rx.recv() {
                Ok(c) => c,
                Err(_) => return,
            },
        };
        let job = match command {
            Command::Unload(reply) => {
                let _ = reply.send(UnloadReport::default());
                continue;
            }
            Command::Stop => return,
            Command::Vocab(job) => {
                tokenize::answer_unloaded(&backend, &shared, job);
                continue;
            }
            Command::Generate(job) => job,
        };
        let name = job.request.model.clone();
        let Some(config) = shared.models.get(&name).cloned() else {
            take(&shared, job).fail(
                &shared,
                EngineError::UnknownModel(format!("model {name:?} is not configured")),
            );
            continue;
        };
        let model = match load(&backend, &shared, &name, &config) {
            Ok(m) => m,
            Err(e) => {
                take(&shared, job).fail(&shared, e);
                continue;
            }
        };
        let mut session = match Session::new(&backend, &model, &config, shared.parallel) {
            Ok(s) => s,
            Err(e) => {
                shared.set_status(|s| s.loaded = None);
                shared.stats.set_model_layers(0, 0);
                take(&shared, job).fail(&shared, e);
                continue;
            }
        };
        let model_bytes = model.size() + session.kv_bytes;
        shared.stats.set_sequences(session.slots.len());

        // Serve jobs for this model until something else is asked of us.
        session.waiting.push(job);
        let leave = session.serve(&rx, &shared, &backend, &name);
        drop(session);
        drop(model);
        shared.stats.set_sequences(0);
        shared.stats.set_model_layers(0, 0);
        shared.set_status(|s| s.loaded = None);
        match leave {
            Leave::Idle => {}
            Leave::Switch(command) => pending = Some(*command),
            Leave::Unload(reply) => {
                tracing::info!(model = %name, "unloaded on request");
                let _ = reply.send(UnloadReport {
                    unloaded: Some(name),
                    freed_bytes: model_bytes,
                    freed_mb: model_bytes as f64 / (1024.0 * 1024.0),
                });
            }
            Leave::Stop => return,
        }
    }
}

/// Says once, at start, whether the configured `gpu_layers` can be honoured: a build
/// without a GPU backend, or one that finds no GPU, keeps every layer on the CPU
/// whatever is asked, and an operator who asked for offload must hear of it.
fn report_gpu_offload(backend: &LlamaBackend, shared: &Shared) {
    let supported = backend.supports_gpu_offload();
    shared
        .stats
        .gpu_offload_supported
        .store(supported, Ordering::Relaxed);
    let asking: Vec<&str> = shared
        .models
        .iter()
        .filter(|(_, m)| m.gpu_layers > 0)
        .map(|(name, _)| name.as_str())
        .collect();
    if supported && asking.is_empty() {
        tracing::info!("a GPU is available, but gpu_layers is 0: every layer stays on the CPU");
    } else if supported {
        tracing::info!(models = %asking.join(", "), "a GPU is available: offloading layers");
    } else if !asking.is_empty() && !cfg!(feature = "cuda") {
        tracing::warn!(
            models = %asking.join(", "),
            "gpu_layers is set, but this build of vps-infer has no GPU support: every \
             layer stays on the CPU (build with `cargo build --release -p vps-infer \
             --features cuda`)"
        );
    } else if !asking.is_empty() {
        tracing::warn!(
            models = %asking.join(", "),
            "gpu_layers is set and this build has CUDA, but llama.cpp finds no GPU: \
             every layer stays on the CPU (is NVIDIA's driver loaded, and are \
             /dev/nvidia* visible to the service?)"
        );
    }
}

/// Layers llama.cpp puts on the GPU when `requested` are asked of a model with
/// `layers` (its output layer included): none without a GPU, at most all of them.
fn layers_on_gpu(offload_supported: bool, requested: u32, layers: u32) -> u32 {
    if offload_supported {
        requested.min(layers)
    } else {
        0
    }
}

/// Why the engine stops serving the loaded model.
enum Leave {
    /// Nothing was asked for `idle_unload`.
    Idle,
    /// A job (or another command) wants another model.
    Switch(Box<Command>),
    Unload(oneshot::Sender<UnloadReport>),
    /// The server is stopping, or every handle to the engine is gone.
    Stop,
}

/// Marks a job as taken off the queue (given a sequence, or failed before).
fn take(shared: &Shared, job: Job) -> Job {
    shared.queued.fetch_sub(1, Ordering::SeqCst);
    job
}

impl Job {
    /// The client went away, or the server is stopping.
    fn cancelled(&self, shared: &Shared) -> bool {
        self.events.is_closed() || shared.stopping.load(Ordering::Relaxed)
    }

    fn fail(self, shared: &Shared, error: EngineError) {
        Stats::add(&shared.stats.requests_failed, 1);
        let _ = self.events.blocking_send(Event::Error(error));
    }
}

fn load(
    backend: &LlamaBackend,
    shared: &Arc<Shared>,
    name: &str,
    config: &ModelConfig,
) -> Result<LlamaModel, EngineError> {
    // Loading maps the whole file: only memory can refuse it (CPU load passes).
    if let Err(why @ Refusal::Memory { .. }) = shared.guard.check() {
        Stats::add(&shared.stats.rejected_memory, 1);
        return Err(why.into());
    }
    shared.set_status(|s| s.loading = Some(name.to_string()));
    let started = Instant::now();
    tracing::info!(
        model = %name,
        path = %config.path.display(),
        gpu_layers = config.gpu_layers,
        "loading model"
    );
    // A load takes seconds: llama.cpp reports progress, and answering `false` ends
    // it early when the server is stopping.
    let stopping = shared.clone();
    let params = LlamaModelParams::default()
        .with_n_gpu_layers(config.gpu_layers)
        .with_progress_callback(move |_| !stopping.stopping.load(Ordering::Relaxed));
    let result = LlamaModel::load_from_file(backend, &config.path, &params);
    let elapsed = started.elapsed();
    match result {
        Ok(model) => {
            Stats::add(&shared.stats.model_loads, 1);
            shared
                .stats
                .last_load_ms
                .store(elapsed.as_millis() as u64, Ordering::Relaxed);
            shared.set_status(|s| {
                s.loading = None;
                s.loaded = Some(name.to_string());
                s.last_load_error = None;
            });
            // llama.cpp counts the output layer as one more than the model's blocks.
            let layers = model.n_layer().saturating_add(1);
            let offloaded =
                layers_on_gpu(backend.supports_gpu_offload(), config.gpu_layers, layers);
            shared.stats.set_model_layers(offloaded, layers);
            tracing::info!(
                model = %name,
                seconds = elapsed.as_secs_f64(),
                layers_on_gpu = %format!("{offloaded}/{layers}"),
                "model loaded"
            );
            Ok(model)
        }
        Err(e) => {
            let message = format!(
                "cannot load model {name:?} from {}: {e}",
                config.path.display()
            );
            tracing::error!("{message}");
            shared.set_status(|s| {
                s.loading = None;
                s.last_load_error = Some(message.clone());
            });
            Err(EngineError::unavailable(message, 30))
        }
    }
}

/// A context on the loaded model: its sequences, what each one's KV cache holds and the
/// job it serves, and the jobs waiting for one.
struct Session<'m> {
    model: &'m LlamaModel,
    ctx: LlamaContext<'m>,
    slots: Vec<Slot>,
    /// Jobs taken off the channel and not yet given a sequence, in arrival order.
    waiting: Vec<Job>,
    batch: LlamaBatch<'static>,
    fim: Option<FimTokens>,
    batch_size: usize,
    /// Most prompt tokens of a job put into one batch while a more urgent job
    /// generates (`schedule::prompt_chunk`).
    micro_batch: usize,
    /// Tokens one sequence may hold: the configured context size.
    n_ctx_seq: usize,
    /// What a prompt may reuse past the first difference from the cache.
    reuse: reuse::Policy,
    kv_bytes: u64,
    /// Counts arrivals and ends, to order jobs and find the least recently used slot.
    clock: u64,
    /// Running jobs whose sequences [`Session::clear_all`] emptied: their context is
    /// gone, so they fail (`fail_lost`) rather than generate on without it.
    lost: Vec<Job>,
}

/// One sequence of the context.
struct Slot {
    /// The tokens whose keys and values sit in this sequence, positions 0.. in order,
    /// with how far each has drifted from a cold evaluation.
    cached: Cached<LlamaToken>,
    /// `Session::clock` when its last job ended.
    last_used: u64,
    active: Option<Active>,
    requests: u64,
    tokens_generated: u64,
}

/// A job that holds a sequence.
struct Active {
    job: Job,
    priority: Priority,
    arrival: u64,
    tokens: Vec<LlamaToken>,
    reused: usize,
    shifted: usize,
    /// When the engine gave it a sequence.
    started: Instant,
    prompt_eval_time: Duration,
    sampler: LlamaSampler,
    utf8: Utf8Stream,
    stops: StopMatcher,
    /// Holds the first line back while it may be one the request rejects.
    guard: Option<FirstLineGuard<LlamaToken>>,
    /// Keeps the first line from going deeper than the request allows, or from
    /// being blank when it asks for text.
    line_start: Option<LineStart>,
    generated: usize,
    first_token_at: Option<Instant>,
    gen_started: Option<Instant>,
    /// The token sampled last, to be decoded in the next batch.
    next_token: Option<LlamaToken>,
    /// What it put into the batch being decoded.
    in_batch: InBatch,
}

#[derive(Debug, Clone, Copy)]
enum InBatch {
    Nothing,
    /// Its sampled token, whose logits are at this batch index.
    Token(LlamaToken, i32),
    /// This many prompt tokens; the index of the last one's logits when that ends
    /// the prompt.
    Prompt(usize, Option<i32>),
}

/// A job that could not start, and why.
type Refused = Box<(Job, EngineError)>;

/// The parking sequence's id is the one past the live sequences.
fn park_seq(parallel: usize) -> i32 {
    parallel as i32
}

impl<'m> Session<'m> {
    fn new(
        backend: &LlamaBackend,
        model: &'m LlamaModel,
        config: &ModelConfig,
        parallel: usize,
    ) -> Result<Session<'m>, EngineError> {
        let n_ctx_seq = config.ctx_size.min(model.n_ctx_train().max(256));
        // Every sequence may fill the configured context: the cache is that times
        // the sequences (memory grows with `parallel`, but no request is refused
        // because another one holds a long prompt).
        let n_ctx = n_ctx_seq.saturating_mul(parallel as u32);
        let params = LlamaContextParams::default()
            .with_n_ctx(NonZeroU32::new(n_ctx))
            .with_n_batch(config.batch_size)
            // One shared cache for all sequences, so that moving cells between them
            // (`seq_cp`) is bookkeeping, not a copy; see `arrange_cache`.
            .with_n_seq_max(parallel as u32 + 1)
            .with_kv_unified(true)
            .with_n_ubatch(config.batch_size)
            .with_n_threads(config.threads as i32)
            .with_n_threads_batch(config.threads as i32);
        let ctx = model.new_context(backend, params).map_err(|e| {
            EngineError::Internal(format!("cannot create a llama.cpp context: {e}"))
        })?;
        // Keys and values in f16 for every layer and context position.
        let kv_per_token = 2
            * 2
            * u64::from(model.n_layer())
            * model.n_embd() as u64
            * u64::from(model.n_head_kv())
            / u64::from(model.n_head().max(1));
        let batch_size = (config.batch_size as usize).max(1);
        Ok(Session {
            fim: FimTokens::of(&model.vocab()),
            model,
            ctx,
            slots: (0..parallel)
                .map(|_| Slot {
                    cached: Cached::default(),
                    last_used: 0,
                    active: None,
                    requests: 0,
                    tokens_generated: 0,
                })
                .collect(),
            waiting: Vec::new(),
            batch: LlamaBatch::new(batch_size, 1),
            batch_size,
            // A few tens of milliseconds of prompt on a small CPU.
            micro_batch: (batch_size / 8).max(16),
            n_ctx_seq: n_ctx_seq as usize,
            reuse: config.reuse,
            kv_bytes: kv_per_token * u64::from(n_ctx),
            clock: 0,
            lost: Vec::new(),
        })
    }

    /// Serves jobs until the model should go: takes commands (blocking only when no
    /// job runs), gives waiting jobs their sequences, decodes one batch, again.
    fn serve(
        &mut self,
        rx: &std_mpsc::Receiver<Command>,
        shared: &Shared,
        backend: &LlamaBackend,
        model_name: &str,
    ) -> Leave {
        // Once set, no more commands are read: the running and waiting jobs end,
        // then the engine leaves this model.
        let mut leaving: Option<Leave> = None;
        loop {
            while leaving.is_none() {
                let busy =
                    !self.waiting.is_empty() || self.slots.iter().any(|s| s.active.is_some());
                let command = if busy {
                    match rx.try_recv() {
                        Ok(c) => c,
                        Err(std_mpsc::TryRecvError::Empty) => break,
                        Err(std_mpsc::TryRecvError::Disconnected) => {
                            self.cancel_all(shared);
                            return Leave::Stop;
                        }
                    }
                } else {
                    match rx.recv_timeout(shared.idle_unload) {
                        Ok(c) => c,
                        Err(std_mpsc::RecvTimeoutError::Timeout) => {
                            tracing::info!(model = %model_name, "unloading after {:?} idle", shared.idle_unload);
                            return Leave::Idle;
                        }
                        Err(std_mpsc::RecvTimeoutError::Disconnected) => return Leave::Stop,
                    }
                };
                match command {
                    Command::Generate(job) if job.request.model == model_name => {
                        self.waiting.push(job);
                    }
                    Command::Generate(job) => {
                        tracing::info!(from = %model_name, to = %job.request.model, "switching model");
                        leaving = Some(Leave::Switch(Box::new(Command::Generate(job))));
                    }
                    Command::Vocab(job) if job.model == model_name => {
                        tokenize::answer(self.model, job)
                    }
                    Command::Vocab(job) => tokenize::answer_unloaded(backend, shared, job),
                    Command::Unload(reply) => leaving = Some(Leave::Unload(reply)),
                    Command::Stop => {
                        self.cancel_all(shared);
                        return Leave::Stop;
                    }
                }
            }
            self.admit(shared, model_name);
            if !self.lost.is_empty() {
                let e = EngineError::Internal("llama.cpp lost this request's cache".into());
                self.fail_lost(shared, e);
            }
            self.publish(shared);
            if self.slots.iter().all(|s| s.active.is_none()) {
                if let Some(leave) = leaving.take() {
                    return leave;
                }
                continue;
            }
            shared.stats.touch();
            self.step(shared);
            self.publish(shared);
        }
    }

    /// Ends every running job (the server is stopping).
    fn cancel_all(&mut self, shared: &Shared) {
        for i in 0..self.slots.len() {
            self.finish(shared, i, StopReason::Cancelled);
        }
    }

    /// The running jobs: their slot indices and what the scheduler needs of them.
    fn running(&self) -> (Vec<usize>, Vec<Running>) {
        self.slots
            .iter()
            .enumerate()
            .filter_map(|(i, s)| {
                let a = s.active.as_ref()?;
                Some((
                    i,
                    Running {
                        priority: a.priority,
                        arrival: a.arrival,
                        generating: a.next_token.is_some(),
                    },
                ))
            })
            .unzip()
    }

    /// Gives waiting jobs free sequences, most urgent first; a background job gives
    /// its sequence up to a more urgent one when none is free.
    fn admit(&mut self, shared: &Shared, model_name: &str) {
        loop {
            // The first of the most urgent (max_by_key takes the last of equals).
            let Some(w) = self
                .waiting
                .iter()
                .enumerate()
                .rev()
                .max_by_key(|(_, j)| j.request.priority)
                .map(|(w, _)| w)
            else {
                return;
            };
            if self.waiting[w].cancelled(shared) {
                take(shared, self.waiting.remove(w));
                Stats::add(&shared.stats.requests_cancelled, 1);
                continue;
            }
            let priority = self.waiting[w].request.priority;
            if self.slots.iter().all(|s| s.active.is_some()) {
                let (indices, running) = self.running();
                match schedule::preempt(priority, &running) {
                    Some(k) => {
                        let victim = indices[k];
                        tracing::debug!(sequence = victim, "background job gives its sequence up");
                        Stats::add(
                            &shared.stats.by_priority[Priority::Background.index()].preempted,
                            1,
                        );
                        self.finish(shared, victim, StopReason::Cancelled);
                    }
                    None => return,
                }
            }
            let job = take(shared, self.waiting.remove(w));
            self.clock += 1;
            if let Err(refused) = self.start(shared, model_name, job) {
                let (job, e) = *refused;
                job.fail(shared, e);
            }
        }
    }

    /// Lays out the job's prompt, picks its sequence, reuses that sequence's cache
    /// and evaluates the gaps before reused runs; the rest of the prompt is evaluated
    /// in the batches of the steps to come.
    fn start(&mut self, shared: &Shared, model_name: &str, job: Job) -> Result<(), Refused> {
        let started = Instant::now();
        let request = &job.request;
        let vocab = self.model.vocab();
        let chat = match &request.parts.chat {
            Some(chat) => self.chat_frame(chat.system.is_some()),
            None => None,
        };
        let tokens =
            match prompt::layout(&vocab, self.fim, chat.as_ref(), model_name, &request.parts) {
                Ok(t) => t,
                Err(e) => return Err(Box::new((job, e))),
            };
        let max_tokens = request.sampling.max_tokens as usize;
        if tokens.len() + max_tokens > self.n_ctx_seq {
            let e = EngineError::ExceedContextSize(format!(
                "the prompt has {} tokens and max_tokens is {max_tokens}, more than the context of {} tokens",
                tokens.len(),
                self.n_ctx_seq
            ));
            return Err(Box::new((job, e)));
        }
        let free: Vec<(usize, Candidate<'_, LlamaToken>)> = self
            .slots
            .iter()
            .enumerate()
            .filter(|(_, s)| s.active.is_none())
            .map(|(i, s)| {
                (
                    i,
                    Candidate {
                        cached: s.cached.tokens(),
                        last_used: s.last_used,
                    },
                )
            })
            .collect();
        let Some(i) = schedule::pick_sequence(&free, &tokens) else {
            return Err(Box::new((
                job,
                EngineError::Internal("no free sequence".into()),
            )));
        };

        // Reuse what the cache holds: the common prefix in place, later runs shifted
        // to their new positions (see `reuse`).
        let (plan, moved_from) = self.arrange_cache(i, &tokens);
        let gaps = plan.gaps(tokens.len());
        for (gap, run) in gaps.iter().zip(&plan.runs) {
            let moved = self
                .evaluate_alone(i, &tokens[gap.clone()])
                .and_then(|()| self.unpark(i, run, &moved_from));
            if let Err(e) = moved {
                self.drop_parked();
                return Err(Box::new((job, e)));
            }
        }
        let reused = plan.reused();
        let _ = job.events.blocking_send(Event::Started {
            prompt_tokens: tokens.len(),
            cached_tokens: reused,
        });
        let sampling = &job.request.sampling;
        let sampler = if sampling.temperature <= 0.0 {
            LlamaSampler::greedy()
        } else {
            LlamaSampler::chain_simple([
                LlamaSampler::top_p(sampling.top_p, 1),
                LlamaSampler::temp(sampling.temperature),
                LlamaSampler::dist(sampling.seed),
            ])
        };
        let stops = StopMatcher::new(&sampling.stop);
        let guard = FirstLineGuard::new(&sampling.reject_first_line);
        let line_start = LineStart::new(
            sampling.first_line_max_indent.as_deref(),
            sampling.first_line_not_blank,
        );
        let priority = job.request.priority;
        Stats::add(&shared.stats.by_priority[priority.index()].started, 1);
        self.slots[i].active = Some(Active {
            priority,
            arrival: self.clock,
            tokens,
            reused,
            shifted: plan.shifted(),
            started,
            prompt_eval_time: Duration::ZERO,
            sampler,
            utf8: Utf8Stream::default(),
            stops,
            guard,
            line_start,
            generated: 0,
            first_token_at: None,
            gen_started: None,
            next_token: None,
            in_batch: InBatch::Nothing,
            job,
        });
        Ok(())
    }

    /// Evaluates `tokens` at the end of sequence `i` alone, without logits (a gap
    /// before a parked run).
    fn evaluate_alone(&mut self, i: usize, tokens: &[LlamaToken]) -> Result<(), EngineError> {
        for chunk in tokens.chunks(self.batch_size) {
            self.batch.clear();
            let first = self.slots[i].cached.len();
            for (j, &token) in chunk.iter().enumerate() {
                self.batch
                    .add(token, (first + j) as i32, &[i as i32], false)
                    .map_err(|e| EngineError::Internal(format!("batch: {e}")))?;
            }
            if let Err(e) = self.ctx.decode(&mut self.batch) {
                return Err(self.decode_failed(e));
            }
            self.slots[i].cached.extend_evaluated(chunk);
        }
        Ok(())
    }

    /// One batch: the next token of every generating job and a part of every prompt
    /// being evaluated, most urgent first; then each job whose logits came out samples
    /// its next token.
    fn step(&mut self, shared: &Shared) {
        for i in 0..self.slots.len() {
            if self.slots[i]
                .active
                .as_ref()
                .is_some_and(|a| a.job.cancelled(shared))
            {
                self.finish(shared, i, StopReason::Cancelled);
            }
        }
        let (indices, running) = self.running();
        let order = schedule::service_order(&running);
        self.batch.clear();
        let mut room = self.batch_size;
        // Generating jobs first, one token each, then prompts in what room is left.
        for prompts in [false, true] {
            for &k in &order {
                if schedule::paused(&running[k], &running) || room == 0 {
                    continue;
                }
                let i = indices[k];
                let seq = [i as i32];
                let slot = &mut self.slots[i];
                let pos = slot.cached.len();
                let Some(active) = slot.active.as_mut() else {
                    continue;
                };
                let added = match (prompts, active.next_token) {
                    (false, Some(token)) => {
                        active.in_batch = InBatch::Token(token, self.batch.n_tokens());
                        room -= 1;
                        self.batch.add(token, pos as i32, &seq, true)
                    }
                    (true, None) => {
                        let remaining = active.tokens.len().saturating_sub(pos);
                        let n = schedule::prompt_chunk(
                            active.priority,
                            remaining,
                            room,
                            self.micro_batch,
                            &running,
                        );
                        if n == 0 {
                            continue;
                        }
                        let ends = pos + n == active.tokens.len();
                        let last = self.batch.n_tokens() + n as i32 - 1;
                        active.in_batch = InBatch::Prompt(n, ends.then_some(last));
                        room -= n;
                        active.tokens[pos..pos + n].iter().enumerate().try_for_each(
                            |(j, &token)| {
                                let at = pos + j;
                                self.batch.add(token, at as i32, &seq, ends && j + 1 == n)
                            },
                        )
                    }
                    _ => continue,
                };
                if let Err(e) = added {
                    // Room is counted above, so this is a bug: start afresh.
                    let e = EngineError::Internal(format!("batch: {e}"));
                    self.fail_all(shared, e);
                    return;
                }
            }
        }
        if self.batch.n_tokens() == 0 {
            return;
        }
        let batch_started = Instant::now();
        if let Err(e) = self.ctx.decode(&mut self.batch) {
            let e = self.decode_failed(e);
            self.fail_all(shared, e);
            return;
        }
        let decode_time = batch_started.elapsed();
        for i in 0..self.slots.len() {
            let slot = &mut self.slots[i];
            let Some(active) = slot.active.as_mut() else {
                continue;
            };
            let logits = match std::mem::replace(&mut active.in_batch, InBatch::Nothing) {
                InBatch::Nothing => continue,
                InBatch::Token(token, at) => {
                    slot.cached.extend_evaluated(&[token]);
                    active.next_token = None;
                    at
                }
                InBatch::Prompt(n, at) => {
                    let pos = slot.cached.len();
                    slot.cached.extend_evaluated(&active.tokens[pos..pos + n]);
                    active.prompt_eval_time += decode_time;
                    let Some(at) = at else { continue };
                    prompt_evaluated(shared, active);
                    at
                }
            };
            if let Some(reason) = self.next_token(shared, i, logits) {
                self.finish(shared, i, reason);
            }
        }
    }

    /// Samples job `i`'s next token from the logits at batch index `at` and sends it;
    /// answers why the job ends, if it does.
    fn next_token(&mut self, shared: &Shared, i: usize, at: i32) -> Option<StopReason> {
        let vocab = self.model.vocab();
        let active = self.slots[i].active.as_mut()?;
        let max_tokens = active.job.request.sampling.max_tokens as usize;
        let mut token = active.sampler.sample(&self.ctx, at);
        if active.first_token_at.is_none() {
            let now = Instant::now();
            active.first_token_at = Some(now);
            let counters = &shared.stats.by_priority[active.priority.index()];
            let waited = now.saturating_duration_since(active.job.submitted);
            Stats::add(&counters.first_token_us, waited.as_micros() as u64);
            Stats::add(&counters.first_tokens, 1);
            // `/v1/stats` says "generating" before the client sees a token.
            self.publish(shared);
        }
        let active = self.slots[i].active.as_mut()?;
        let mut end = vocab.is_eog(token);
        let mut piece = Vec::with_capacity(16);
        if !end {
            vocab.token_to_piece_into(token, &mut piece, false, None);
        }
        let line_start = active.line_start.as_mut().filter(|start| start.is_open());
        if let Some(start) = &line_start {
            if start.fit(&piece) == Fit::No {
                // Greedy and random picks keep no state that taking another token
                // after the sampler chose would upset.
                let fits = |piece: &[u8]| start.fit(piece) != Fit::No;
                if let Some((other, other_piece)) = likeliest_fitting(&self.ctx, &vocab, at, fits) {
                    tracing::debug!(
                        passed_over = ?String::from_utf8_lossy(&piece),
                        taken = ?String::from_utf8_lossy(&other_piece),
                        "kept the first line from going deeper or blank"
                    );
                    (token, end, piece) = (other, false, other_piece);
                }
            }
        }
        let ranked = active.guard.is_some().then(|| {
            let (mut candidates, logprob) = likeliest(&self.ctx, &vocab, at, token);
            if let Some(start) = &line_start {
                // A way out of a rejected line starts as asked too.
                candidates.retain(|c| start.fit(&c.piece) != Fit::No);
            }
            (candidates, logprob)
        });
        if let Some(start) = line_start {
            start.push(&piece);
        }
        if let (Some(guard), Some((candidates, logprob))) = (active.guard.as_mut(), ranked) {
            match guard.push(token, &piece, end, &candidates, logprob) {
                Verdict::Hold if active.generated + 1 < max_tokens => {
                    active.generated += 1;
                    active.next_token = Some(token);
                    return None;
                }
                // Out of tokens: what is held is the answer.
                Verdict::Hold => {
                    piece = guard.take_text();
                    active.guard = None;
                }
                Verdict::Release(text) => {
                    active.guard = None;
                    piece = text;
                }
                Verdict::BackUp {
                    keep,
                    token: other,
                    text,
                } => {
                    active.guard = None;
                    tracing::debug!(
                        kept = keep,
                        dropped = active.generated + 1 - keep,
                        "the first line was a rejected one; backed up"
                    );
                    active.generated = keep;
                    token = other;
                    end = false;
                    if let Some(start) = active.line_start.as_mut() {
                        start.restart(&text);
                    }
                    piece = text;
                    // The rejected line's tokens after `keep` leave the cache.
                    let keep = active.tokens.len() + keep;
                    self.truncate_cache(i, keep);
                    if self.slots[i].cached.len() != keep {
                        let e = EngineError::Internal("could not back up in the cache".into());
                        self.fail_all(shared, e);
                        return None;
                    }
                }
            }
        }
        let active = self.slots[i].active.as_mut()?;
        if !piece.is_empty() {
            let released = active.stops.push(&active.utf8.push(&piece));
            // A client that reads slowly holds every job up once its 256-event buffer
            // is full; editors read as fast as tokens come.
            if !released.text.is_empty()
                && active
                    .job
                    .events
                    .blocking_send(Event::Token(released.text))
                    .is_err()
            {
                return Some(StopReason::Cancelled);
            }
            if released.stopped {
                return Some(StopReason::Stop);
            }
        }
        if end {
            return Some(StopReason::Eos);
        }
        active.generated += 1;
        if active.generated >= max_tokens {
            return Some(StopReason::Length);
        }
        active.next_token = Some(token);
        None
    }

    /// Ends job `i` (if any): flushes its text, counts it and sends its outcome.
    fn finish(&mut self, shared: &Shared, i: usize, stop_reason: StopReason) {
        self.clock += 1;
        let slot = &mut self.slots[i];
        let Some(mut active) = slot.active.take() else {
            return;
        };
        slot.last_used = self.clock;
        slot.requests += 1;
        slot.tokens_generated += active.generated as u64;
        if stop_reason != StopReason::Stop {
            let rest = active.stops.push(&active.utf8.finish());
            let rest = rest.text + &active.stops.finish();
            if !rest.is_empty() && stop_reason != StopReason::Cancelled {
                let _ = active.job.events.blocking_send(Event::Token(rest));
            }
        }
        let gen_time = active.gen_started.map(|t| t.elapsed()).unwrap_or_default();
        let generated = active.generated;
        Stats::add(&shared.stats.tokens_generated, generated as u64);
        Stats::add(
            &shared.stats.by_priority[active.priority.index()].tokens_generated,
            generated as u64,
        );
        Stats::add(&shared.stats.generation_us, gen_time.as_micros() as u64);
        let request = &active.job.request;
        let outcome = Outcome {
            text: active.stops.text().to_string(),
            model: request.model.clone(),
            prompt_tokens: active.tokens.len(),
            cached_tokens: active.reused,
            shifted_tokens: active.shifted,
            total_tokens: generated,
            inference_time: since(active.started),
            tokens_per_second: if gen_time.is_zero() || generated == 0 {
                0.0
            } else {
                generated as f64 / gen_time.as_secs_f64()
            },
            prompt_eval_time: active.prompt_eval_time.as_secs_f64(),
            time_to_first_token: active
                .first_token_at
                .unwrap_or_else(Instant::now)
                .saturating_duration_since(active.started)
                .as_secs_f64(),
            stop_reason,
        };
        let counter = if stop_reason == StopReason::Cancelled {
            &shared.stats.requests_cancelled
        } else {
            &shared.stats.requests_ok
        };
        Stats::add(counter, 1);
        // `/v1/stats` shows the sequence free before the client sees the end.
        self.publish(shared);
        let _ = active.job.events.blocking_send(Event::Done(outcome));
    }

    /// Fails every running job (the cache is gone).
    fn fail_all(&mut self, shared: &Shared, error: EngineError) {
        for slot in &mut self.slots {
            if let Some(active) = slot.active.take() {
                active.job.fail(shared, error.clone());
            }
        }
        self.fail_lost(shared, error);
    }

    /// Fails the jobs whose cache was cleared under them.
    fn fail_lost(&mut self, shared: &Shared, error: EngineError) {
        for job in self.lost.drain(..) {
            job.fail(shared, error.clone());
        }
    }

    /// A decode failed: the cache may hold part of the batch, so all of it is
    /// forgotten.
    fn decode_failed(&mut self, e: impl std::fmt::Display) -> EngineError {
        self.clear_all();
        EngineError::Internal(format!("llama.cpp decode failed: {e}"))
    }

    /// Empties every sequence. The jobs running in them lose their context with it,
    /// so they leave their slots for [`Session::lost`].
    fn clear_all(&mut self) {
        self.ctx.clear_kv_cache();
        for slot in &mut self.slots {
            slot.cached.clear();
            if let Some(active) = slot.active.take() {
                self.lost.push(active.job);
            }
        }
    }

    /// Shows each sequence in `/v1/stats`.
    fn publish(&self, shared: &Shared) {
        let (_, running) = self.running();
        for (i, slot) in self.slots.iter().enumerate() {
            shared.stats.update_sequence(i, |s| {
                s.cached_tokens = slot.cached.len();
                s.requests = slot.requests;
                s.tokens_generated = slot.tokens_generated;
                s.priority = slot.active.as_ref().map(|a| a.priority);
                s.state = match &slot.active {
                    None => "idle",
                    Some(a) => {
                        let me = Running {
                            priority: a.priority,
                            arrival: a.arrival,
                            generating: a.next_token.is_some(),
                        };
                        if schedule::paused(&me, &running) {
                            "paused"
                        } else if a.first_token_at.is_some() {
                            "generating"
                        } else {
                            "prompt"
                        }
                    }
                };
            });
        }
    }

    /// The model's chat template around placeholders, or `None` if it has none.
    fn chat_frame(&self, with_system: bool) -> Option<prompt::ChatFrame> {
        let template = self.model.chat_template(None).ok()?;
        let mut messages = Vec::new();
        if with_system {
            messages.push(
                LlamaChatMessage::new("system".into(), prompt::SYSTEM_PLACEHOLDER.into()).ok()?,
            );
        }
        messages.push(LlamaChatMessage::new("user".into(), prompt::USER_PLACEHOLDER.into()).ok()?);
        let rendered = self
            .model
            .apply_chat_template(&template, &messages, true)
            .ok()?;
        prompt::ChatFrame::from_rendered(&rendered, with_system)
    }

    /// Lays sequence `i` out for `tokens`: afterwards it holds the common prefix (and
    /// its `cached` mirrors it) and the parking sequence holds the plan's runs at their
    /// new positions, each to be moved back once the gap before it is evaluated.
    /// Anything llama.cpp refuses falls back to an empty sequence and a full
    /// evaluation.
    ///
    /// Also returns what the sequence held before, which the runs come from.
    fn arrange_cache(&mut self, i: usize, tokens: &[LlamaToken]) -> (Plan, Cached<LlamaToken>) {
        // A request that failed half-way may have left runs parked.
        self.drop_parked();
        let plan = reuse::plan(&self.slots[i].cached, tokens, &self.reuse);
        if plan.runs.is_empty() {
            self.truncate_cache(i, plan.prefix);
            let plan = Plan {
                prefix: plan.prefix.min(self.slots[i].cached.len()),
                runs: Vec::new(),
            };
            return (plan, Cached::default());
        }
        match self.park(i, &plan) {
            Ok(()) => {
                let before = self.slots[i].cached.clone();
                self.slots[i].cached.truncate(plan.prefix);
                (plan, before)
            }
            Err(e) => {
                tracing::warn!("cannot rearrange the KV cache ({e}); evaluating the whole prompt");
                self.drop_parked();
                self.truncate_cache(i, 0);
                let plan = Plan {
                    prefix: 0,
                    runs: Vec::new(),
                };
                (plan, Cached::default())
            }
        }
    }

    fn park(&mut self, i: usize, plan: &Plan) -> Result<(), String> {
        let (live, parked) = (i as i32, park_seq(self.slots.len()));
        let pos = |p: usize| u32::try_from(p).map_err(|_| format!("position {p} is too large"));
        let err = |e: llama_cpp_2::context::kv_cache::KvCacheConversionError| e.to_string();
        let removed = |ok: Result<bool, _>| match ok {
            Ok(true) => Ok(()),
            Ok(false) => Err("llama.cpp refused a partial removal".to_string()),
            Err(e) => Err(err(e)),
        };
        let prefix = pos(plan.prefix)?;
        // Everything after the prefix moves to the parking sequence...
        self.ctx
            .kv_cache_seq_cp(live, parked, Some(prefix), None)
            .map_err(err)?;
        removed(
            self.ctx
                .clear_kv_cache_seq(Some(live as u32), Some(prefix), None),
        )?;
        // ...where what no run keeps is dropped,
        let mut at = plan.prefix;
        for run in &plan.runs {
            if run.from > at {
                removed(self.ctx.clear_kv_cache_seq(
                    Some(parked as u32),
                    Some(pos(at)?),
                    Some(pos(run.from)?),
                ))?;
            }
            at = run.from + run.len;
        }
        removed(
            self.ctx
                .clear_kv_cache_seq(Some(parked as u32), Some(pos(at)?), None),
        )?;
        // and the runs move to their new positions. Runs moving left go first, from
        // the left, then runs moving right, from the right: each position range
        // shifted then holds that run's cells alone.
        let left = plan.runs.iter().filter(|r| r.delta() < 0);
        let right = plan.runs.iter().rev().filter(|r| r.delta() > 0);
        for run in left.chain(right) {
            let delta = i32::try_from(run.delta()).map_err(|_| "shift too large".to_string())?;
            self.ctx
                .kv_cache_seq_add(
                    parked,
                    Some(pos(run.from)?),
                    Some(pos(run.from + run.len)?),
                    delta,
                )
                .map_err(err)?;
        }
        Ok(())
    }

    /// Moves a parked run into sequence `i`, right after what it holds now.
    fn unpark(
        &mut self,
        i: usize,
        run: &Run,
        before: &Cached<LlamaToken>,
    ) -> Result<(), EngineError> {
        let (live, parked) = (i as i32, park_seq(self.slots.len()));
        debug_assert_eq!(self.slots[i].cached.len(), run.to);
        let (p0, p1) = (Some(run.to as u32), Some((run.to + run.len) as u32));
        let moved = self.ctx.kv_cache_seq_cp(parked, live, p0, p1).is_ok()
            && matches!(
                self.ctx.clear_kv_cache_seq(Some(parked as u32), p0, p1),
                Ok(true)
            );
        if !moved {
            self.drop_parked();
            self.truncate_cache(i, 0);
            return Err(EngineError::Internal(
                "llama.cpp refused to move cached tokens".into(),
            ));
        }
        self.slots[i].cached.extend_moved(before, run);
        Ok(())
    }

    /// Forgets runs still parked (a request ended before they were needed), so that
    /// the cache holds exactly what the slots' `cached` say.
    fn drop_parked(&mut self) {
        let parked = park_seq(self.slots.len()) as u32;
        if !matches!(
            self.ctx.clear_kv_cache_seq(Some(parked), None, None),
            Ok(true)
        ) {
            self.clear_all();
        }
    }

    /// Drops sequence `i`'s cache entries from position `keep` on.
    fn truncate_cache(&mut self, i: usize, keep: usize) {
        if keep >= self.slots[i].cached.len() {
            return;
        }
        match self
            .ctx
            .clear_kv_cache_seq(Some(i as u32), Some(keep as u32), None)
        {
            Ok(true) => self.slots[i].cached.truncate(keep),
            // The other sequences go too: they share the cache that llama.cpp
            // could not edit.
            _ => self.clear_all(),
        }
    }
}

/// How many of the likeliest tokens a [`FirstLineGuard`] looks through for a way out
/// of a rejected line.
const WAYS_OUT: usize = 16;

/// The [`WAYS_OUT`] likeliest tokens at batch index `at` with their text, and the
/// log-probability of `token`.
fn likeliest(
    ctx: &LlamaContext<'_>,
    vocab: &LlamaVocab<'_>,
    at: i32,
    token: LlamaToken,
) -> (Vec<first_line::Candidate<LlamaToken>>, f32) {
    let logits = ctx.get_logits_ith(at);
    let mut top: Vec<(usize, f32)> = Vec::with_capacity(WAYS_OUT + 1);
    // log(sum(exp(logits))) in the same pass: `sum` is relative to the largest so far.
    let (mut max, mut sum) = (f32::NEG_INFINITY, 0.0f32);
    for (id, &logit) in logits.iter().enumerate() {
        if logit > max {
            sum = sum * (max - logit).exp() + 1.0;
            max = logit;
        } else {
            sum += (logit - max).exp();
        }
        if top.len() == WAYS_OUT && top.last().is_some_and(|&(_, l)| logit <= l) {
            continue;
        }
        let at = top.partition_point(|&(_, l)| l >= logit);
        top.insert(at, (id, logit));
        top.truncate(WAYS_OUT);
    }
    let norm = max + sum.ln();
    let candidates = top
        .into_iter()
        .map(|(id, logit)| {
            let token = LlamaToken(id as i32);
            let mut piece = Vec::new();
            if !vocab.is_eog(token) {
                vocab.token_to_piece_into(token, &mut piece, false, None);
            }
            first_line::Candidate {
                token,
                logprob: logit - norm,
                piece,
            }
        })
        .collect();
    let logprob = logits
        .get(token.0 as usize)
        .map_or(f32::NEG_INFINITY, |&l| l - norm);
    (candidates, logprob)
}

/// How far down the model's ranking [`likeliest_fitting`] looks.
const FITTING_SEARCH: usize = 4096;

/// The likeliest token at batch index `at` whose text `fits`, with that text, among
/// the [`FITTING_SEARCH`] likeliest; the end of the answer is never one.
fn likeliest_fitting(
    ctx: &LlamaContext<'_>,
    vocab: &LlamaVocab<'_>,
    at: i32,
    fits: impl Fn(&[u8]) -> bool,
) -> Option<(LlamaToken, Vec<u8>)> {
    let logits = ctx.get_logits_ith(at);
    let mut ranked: Vec<(usize, f32)> = logits.iter().copied().enumerate().collect();
    let search = FITTING_SEARCH.min(ranked.len());
    if search < ranked.len() {
        ranked.select_nth_unstable_by(search, |a, b| b.1.total_cmp(&a.1));
        ranked.truncate(search);
    }
    ranked.sort_unstable_by(|a, b| b.1.total_cmp(&a.1));
    let mut piece = Vec::new();
    ranked.into_iter().find_map(|(id, _)| {
        let token = LlamaToken(id as i32);
        if vocab.is_eog(token) {
            return None;
        }
        piece.clear();
        vocab.token_to_piece_into(token, &mut piece, false, None);
        fits(&piece).then(|| (token, piece.clone()))
    })
}

/// A job's prompt is in the cache: count it and start the generation clock.
fn prompt_evaluated(shared: &Shared, active: &mut Active) {
    let evaluated = active.tokens.len() - active.reused;
    Stats::add(&shared.stats.prompt_tokens_evaluated, evaluated as u64);
    Stats::add(&shared.stats.prompt_tokens_reused, active.reused as u64);
    Stats::add(&shared.stats.prompt_tokens_shifted, active.shifted as u64);
    tracing::debug!(
        prompt_tokens = active.tokens.len(),
        reused = active.reused,
        shifted = active.shifted,
        seconds = active.prompt_eval_time.as_secs_f64(),
        "prompt evaluated"
    );
    active.gen_started = Some(Instant::now());
}
