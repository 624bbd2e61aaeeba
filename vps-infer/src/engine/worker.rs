//! The engine thread: owns the llama.cpp backend, the loaded model and its context.
//!
//! One model at a time. It is loaded by the first job that asks for it (later jobs
//! queue behind that load, so concurrent first requests load it once), switched when a
//! job asks for another, and dropped after an idle period or on `/v1/cleanup`.
//!
//! KV-cache reuse: the context remembers the tokens it holds for sequence 0; a new
//! prompt keeps the longest common prefix with them in place and, past the first
//! difference, long runs of them at shifted positions (`reuse.rs`), and evaluates only
//! the rest. Sequence 1 is a parking place for those runs while the gaps before them
//! are evaluated: llama.cpp only appends to a sequence at its end.

use std::num::NonZeroU32;
use std::sync::atomic::Ordering;
use std::sync::{mpsc as std_mpsc, Arc};
use std::time::Instant;

use llama_cpp_2::context::params::LlamaContextParams;
use llama_cpp_2::context::LlamaContext;
use llama_cpp_2::llama_backend::LlamaBackend;
use llama_cpp_2::llama_batch::LlamaBatch;
use llama_cpp_2::model::params::LlamaModelParams;
use llama_cpp_2::model::{LlamaChatMessage, LlamaModel};
use llama_cpp_2::sampling::LlamaSampler;
use llama_cpp_2::token::LlamaToken;

use super::prompt::{self, FimTokens};
use super::reuse::{self, Cached, Plan, Run};
use super::text::{StopMatcher, Utf8Stream};
use super::tokenize;
use super::EngineError;
use super::{since, Command, Event, Job, Outcome, Shared, StopReason, UnloadReport};
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
        let mut session = match Session::new(&backend, &model, &config) {
            Ok(s) => s,
            Err(e) => {
                shared.set_status(|s| s.loaded = None);
                take(&shared, job).fail(&shared, e);
                continue;
            }
        };
        let model_bytes = model.size() + session.kv_bytes;

        // Serve jobs for this model until something else is asked of us.
        session.run(&shared, &name, take(&shared, job));
        let unload_reply = loop {
            let command = match rx.recv_timeout(shared.idle_unload) {
                Ok(c) => c,
                Err(std_mpsc::RecvTimeoutError::Timeout) => {
                    tracing::info!(model = %name, "unloading after {:?} idle", shared.idle_unload);
                    break None;
                }
                Err(std_mpsc::RecvTimeoutError::Disconnected) => return,
            };
            match command {
                Command::Generate(job) if job.request.model == name => {
                    session.run(&shared, &name, take(&shared, job));
                }
                Command::Generate(job) => {
                    tracing::info!(from = %name, to = %job.request.model, "switching model");
                    pending = Some(Command::Generate(job));
                    break None;
                }
                Command::Vocab(job) if job.model == name => tokenize::answer(&model, job),
                Command::Vocab(job) => tokenize::answer_unloaded(&backend, &shared, job),
                Command::Unload(reply) => break Some(reply),
                // Session and model are dropped on the way out, in that order.
                Command::Stop => return,
            }
        };
        drop(session);
        drop(model);
        shared.set_status(|s| s.loaded = None);
        if let Some(reply) = unload_reply {
            tracing::info!(model = %name, "unloaded on request");
            let _ = reply.send(UnloadReport {
                unloaded: Some(name),
                freed_bytes: model_bytes,
                freed_mb: model_bytes as f64 / (1024.0 * 1024.0),
            });
        }
    }
}

/// Marks a job as taken off the queue.
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
    tracing::info!(model = %name, path = %config.path.display(), "loading model");
    // A load takes seconds: llama.cpp reports progress, and answering `false` ends
    // it early when the server is stopping.
    let stopping = shared.clone();
    let params = LlamaModelParams::default()
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
            tracing::info!(model = %name, seconds = elapsed.as_secs_f64(), "model loaded");
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

/// A context on the loaded model, and what its KV cache holds.
struct Session<'m> {
    model: &'m LlamaModel,
    ctx: LlamaContext<'m>,
    /// The tokens whose keys and values sit in the cache, positions 0.. in order, with
    /// how far each has drifted from a cold evaluation.
    cached: Cached<LlamaToken>,
    fim: Option<FimTokens>,
    batch_size: usize,
    /// Shortest run of cached tokens worth shifting past the first difference; 0
    /// keeps only the common prefix.
    cache_reuse: usize,
    /// Most drift a reused run may reach (`reuse::plan`).
    cache_reuse_max_drift: u32,
    kv_bytes: u64,
}

/// The sequence that holds the prompt and the generated tokens.
const MAIN: i32 = 0;
/// Where runs of cached tokens wait, already at their new positions, while the gap
/// before each is evaluated into `MAIN`.
const PARKED: i32 = 1;

impl<'m> Session<'m> {
    fn new(
        backend: &LlamaBackend,
        model: &'m LlamaModel,
        config: &ModelConfig,
    ) -> Result<Session<'m>, EngineError> {
        let n_ctx = config.ctx_size.min(model.n_ctx_train().max(256));
        let params = LlamaContextParams::default()
            .with_n_ctx(NonZeroU32::new(n_ctx))
            .with_n_batch(config.batch_size)
            // Two sequences over one shared cache, so that moving cells between them
            // (`seq_cp`) is bookkeeping, not a copy; see `arrange_cache`.
            .with_n_seq_max(2)
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
        Ok(Session {
            fim: FimTokens::of(&model.vocab()),
            model,
            ctx,
            cached: Cached::default(),
            batch_size: config.batch_size as usize,
            cache_reuse: config.cache_reuse as usize,
            cache_reuse_max_drift: config.cache_reuse_max_drift,
            kv_bytes: kv_per_token * u64::from(n_ctx),
        })
    }

    fn run(&mut self, shared: &Shared, model_name: &str, job: Job) {
        if job.cancelled(shared) {
            Stats::add(&shared.stats.requests_cancelled, 1);
            return;
        }
        shared.stats.touch();
        match self.generate(shared, model_name, &job) {
            Ok(outcome) => {
                let counter = if outcome.stop_reason == StopReason::Cancelled {
                    &shared.stats.requests_cancelled
                } else {
                    &shared.stats.requests_ok
                };
                Stats::add(counter, 1);
                let _ = job.events.blocking_send(Event::Done(outcome));
            }
            Err(e) => job.fail(shared, e),
        }
        shared.stats.touch();
    }

    fn generate(
        &mut self,
        shared: &Shared,
        model_name: &str,
        job: &Job,
    ) -> Result<Outcome, EngineError> {
        let started = Instant::now();
        let request = &job.request;
        let vocab = self.model.vocab();
        let chat = match &request.parts.chat {
            Some(chat) => self.chat_frame(chat.system.is_some()),
            None => None,
        };
        let tokens = prompt::layout(&vocab, self.fim, chat.as_ref(), model_name, &request.parts)?;
        let n_ctx = self.ctx.n_ctx() as usize;
        let max_tokens = request.sampling.max_tokens as usize;
        if tokens.len() + max_tokens > n_ctx {
            return Err(EngineError::ExceedContextSize(format!(
                "the prompt has {} tokens and max_tokens is {max_tokens}, more than the context of {n_ctx} tokens",
                tokens.len()
            )));
        }

        // Reuse what the cache holds: the common prefix in place, later runs shifted
        // to their new positions (see `reuse`).
        let (plan, moved_from) = self.arrange_cache(&tokens);
        let reused = plan.reused();
        let shifted = plan.shifted();
        let _ = job.events.blocking_send(Event::Started {
            prompt_tokens: tokens.len(),
            cached_tokens: reused,
        });

        let eval_started = Instant::now();
        let mut batch = LlamaBatch::new(self.batch_size.max(1), 1);
        let gaps = plan.gaps(tokens.len());
        for (i, gap) in gaps.iter().enumerate() {
            for chunk in tokens[gap.clone()].chunks(self.batch_size.max(1)) {
                if job.cancelled(shared) {
                    self.drop_parked();
                    return Ok(self.outcome(
                        request,
                        &tokens,
                        reused,
                        "",
                        0,
                        started,
                        started,
                        StopReason::Cancelled,
                    ));
                }
                batch.clear();
                let first = self.cached.len();
                for (j, &token) in chunk.iter().enumerate() {
                    let pos = first + j;
                    let is_last = pos + 1 == tokens.len();
                    batch
                        .add(token, pos as i32, &[0], is_last)
                        .map_err(|e| EngineError::Internal(format!("batch: {e}")))?;
                }
                self.decode(&mut batch)?;
                self.cached.extend_evaluated(chunk);
            }
            if let Some(run) = plan.runs.get(i) {
                self.unpark(run, &moved_from)?;
            }
        }
        let evaluated = tokens.len() - reused;
        Stats::add(&shared.stats.prompt_tokens_evaluated, evaluated as u64);
        Stats::add(&shared.stats.prompt_tokens_reused, reused as u64);
        Stats::add(&shared.stats.prompt_tokens_shifted, shifted as u64);
        let prompt_eval_time = eval_started.elapsed();
        tracing::debug!(
            prompt_tokens = tokens.len(),
            reused,
            shifted,
            seconds = prompt_eval_time.as_secs_f64(),
            "prompt evaluated"
        );

        let sampling = &request.sampling;
        let mut sampler = if sampling.temperature <= 0.0 {
            LlamaSampler::greedy()
        } else {
            LlamaSampler::chain_simple([
                LlamaSampler::top_p(sampling.top_p, 1),
                LlamaSampler::temp(sampling.temperature),
                LlamaSampler::dist(sampling.seed),
            ])
        };
        let mut utf8 = Utf8Stream::default();
        let mut stops = StopMatcher::new(&sampling.stop);
        let mut piece = Vec::with_capacity(16);
        let mut generated = 0usize;
        let mut first_token_at = None;
        let gen_started = Instant::now();
        let mut logits_index = batch.n_tokens() - 1;
        let stop_reason = loop {
            if generated >= max_tokens {
                break StopReason::Length;
            }
            if job.cancelled(shared) {
                break StopReason::Cancelled;
            }
            let token = sampler.sample(&self.ctx, logits_index);
            first_token_at.get_or_insert_with(Instant::now);
            if vocab.is_eog(token) {
                break StopReason::Eos;
            }
            generated += 1;
            piece.clear();
            vocab.token_to_piece_into(token, &mut piece, false, None);
            let released = stops.push(&utf8.push(&piece));
            if !released.text.is_empty()
                && job
                    .events
                    .blocking_send(Event::Token(released.text))
                    .is_err()
            {
                break StopReason::Cancelled;
            }
            if released.stopped {
                break StopReason::Stop;
            }
            if generated >= max_tokens {
                break StopReason::Length;
            }
            batch.clear();
            batch
                .add(token, self.cached.len() as i32, &[0], true)
                .map_err(|e| EngineError::Internal(format!("batch: {e}")))?;
            self.decode(&mut batch)?;
            self.cached.extend_evaluated(&[token]);
            logits_index = 0;
        };
        if stop_reason != StopReason::Stop {
            let rest = stops.push(&utf8.finish());
            let rest = rest.text + &stops.finish();
            if !rest.is_empty() && stop_reason != StopReason::Cancelled {
                let _ = job.events.blocking_send(Event::Token(rest));
            }
        }
        let gen_time = gen_started.elapsed();
        Stats::add(&shared.stats.tokens_generated, generated as u64);
        Stats::add(&shared.stats.generation_us, gen_time.as_micros() as u64);
        let mut outcome = self.outcome(
            request,
            &tokens,
            reused,
            stops.text(),
            generated,
            started,
            first_token_at.unwrap_or_else(Instant::now),
            stop_reason,
        );
        outcome.prompt_eval_time = prompt_eval_time.as_secs_f64();
        outcome.shifted_tokens = shifted;
        outcome.tokens_per_second = if gen_time.is_zero() || generated == 0 {
            0.0
        } else {
            generated as f64 / gen_time.as_secs_f64()
        };
        Ok(outcome)
    }

    #[allow(clippy::too_many_arguments)]
    fn outcome(
        &self,
        request: &super::GenerateRequest,
        tokens: &[LlamaToken],
        reuse: usize,
        text: &str,
        generated: usize,
        started: Instant,
        first_token_at: Instant,
        stop_reason: StopReason,
    ) -> Outcome {
        Outcome {
            text: text.to_string(),
            model: request.model.clone(),
            prompt_tokens: tokens.len(),
            cached_tokens: reuse,
            shifted_tokens: 0,
            total_tokens: generated,
            inference_time: since(started),
            tokens_per_second: 0.0,
            prompt_eval_time: 0.0,
            time_to_first_token: first_token_at
                .saturating_duration_since(started)
                .as_secs_f64(),
            stop_reason,
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

    /// Lays the cache out for `tokens`: afterwards `MAIN` holds the common prefix (and
    /// `self.cached` mirrors it) and `PARKED` holds the plan's runs at their new
    /// positions, each to be moved into `MAIN` once the gap before it is evaluated.
    /// Anything llama.cpp refuses falls back to an empty cache and a full evaluation.
    ///
    /// Also returns what the cache held before, which the runs come from.
    fn arrange_cache(&mut self, tokens: &[LlamaToken]) -> (Plan, Cached<LlamaToken>) {
        // A request that failed half-way may have left runs parked.
        self.drop_parked();
        let plan = reuse::plan(
            &self.cached,
            tokens,
            self.cache_reuse,
            self.cache_reuse_max_drift,
        );
        if plan.runs.is_empty() {
            self.truncate_cache(plan.prefix);
            let plan = Plan {
                prefix: plan.prefix.min(self.cached.len()),
                runs: Vec::new(),
            };
            return (plan, Cached::default());
        }
        match self.park(&plan) {
            Ok(()) => {
                let before = self.cached.clone();
                self.cached.truncate(plan.prefix);
                (plan, before)
            }
            Err(e) => {
                tracing::warn!("cannot rearrange the KV cache ({e}); evaluating the whole prompt");
                self.ctx.clear_kv_cache();
                self.cached.clear();
                let plan = Plan {
                    prefix: 0,
                    runs: Vec::new(),
                };
                (plan, Cached::default())
            }
        }
    }

    fn park(&mut self, plan: &Plan) -> Result<(), String> {
        let pos = |p: usize| u32::try_from(p).map_err(|_| format!("position {p} is too large"));
        let err = |e: llama_cpp_2::context::kv_cache::KvCacheConversionError| e.to_string();
        let removed = |ok: Result<bool, _>| match ok {
            Ok(true) => Ok(()),
            Ok(false) => Err("llama.cpp refused a partial removal".to_string()),
            Err(e) => Err(err(e)),
        };
        let prefix = pos(plan.prefix)?;
        // Everything after the prefix moves to PARKED...
        self.ctx
            .kv_cache_seq_cp(MAIN, PARKED, Some(prefix), None)
            .map_err(err)?;
        removed(
            self.ctx
                .clear_kv_cache_seq(Some(MAIN as u32), Some(prefix), None),
        )?;
        // ...where what no run keeps is dropped,
        let mut at = plan.prefix;
        for run in &plan.runs {
            if run.from > at {
                removed(self.ctx.clear_kv_cache_seq(
                    Some(PARKED as u32),
                    Some(pos(at)?),
                    Some(pos(run.from)?),
                ))?;
            }
            at = run.from + run.len;
        }
        removed(
            self.ctx
                .clear_kv_cache_seq(Some(PARKED as u32), Some(pos(at)?), None),
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
                    PARKED,
                    Some(pos(run.from)?),
                    Some(pos(run.from + run.len)?),
                    delta,
                )
                .map_err(err)?;
        }
        Ok(())
    }

    /// Moves a parked run into `MAIN`, right after what `MAIN` holds now.
    fn unpark(&mut self, run: &Run, before: &Cached<LlamaToken>) -> Result<(), EngineError> {
        debug_assert_eq!(self.cached.len(), run.to);
        let (p0, p1) = (Some(run.to as u32), Some((run.to + run.len) as u32));
        let moved = self.ctx.kv_cache_seq_cp(PARKED, MAIN, p0, p1).is_ok()
            && matches!(
                self.ctx.clear_kv_cache_seq(Some(PARKED as u32), p0, p1),
                Ok(true)
            );
        if !moved {
            self.ctx.clear_kv_cache();
            self.cached.clear();
            return Err(EngineError::Internal(
                "llama.cpp refused to move cached tokens".into(),
            ));
        }
        self.cached.extend_moved(before, run);
        Ok(())
    }

    /// Forgets runs still parked (a request ended before they were needed), so that
    /// the cache holds exactly `self.cached`.
    fn drop_parked(&mut self) {
        if !matches!(
            self.ctx.clear_kv_cache_seq(Some(PARKED as u32), None, None),
            Ok(true)
        ) {
            self.ctx.clear_kv_cache();
            self.cached.clear();
        }
    }

    fn decode(&mut self, batch: &mut LlamaBatch) -> Result<(), EngineError> {
        self.ctx.decode(batch).map_err(|e| {
            // The cache may hold part of the batch now: forget all of it.
            self.ctx.clear_kv_cache();
            self.cached.clear();
            EngineError::Internal(format!("llama.cpp decode failed: {e}"))
        })
    }

    /// Drops cache entries from position `keep` on.
    fn truncate_cache(&mut self, keep: usize) {
        if keep >= self.cached.len() {
            return;
        }
        match self
            .ctx
            .clear_kv_cache_seq(Some(0), Some(keep as u32), None)
        {
            Ok(true) => self.cached.truncate(keep),
            _ => {
                self.ctx.clear_kv_cache();
                self.cached.clear();
            }
        }
    }
}
