//! Counters behind `/v1/stats`: lock-free, written by handlers and the engine thread.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Mutex;
use std::time::Instant;

use serde::Serialize;

#[derive(Default)]
pub struct Stats {
    pub requests_ok: AtomicU64,
    pub requests_failed: AtomicU64,
    pub requests_cancelled: AtomicU64,
    pub rejected_queue_full: AtomicU64,
    pub rejected_cpu: AtomicU64,
    pub rejected_memory: AtomicU64,
    pub rejected_invalid: AtomicU64,
    pub rejected_auth: AtomicU64,
    pub prompt_tokens_evaluated: AtomicU64,
    pub prompt_tokens_reused: AtomicU64,
    /// Of the reused tokens, those found past the first difference and shifted.
    pub prompt_tokens_shifted: AtomicU64,
    pub tokens_generated: AtomicU64,
    /// Total time spent generating (not evaluating prompts), in microseconds.
    pub generation_us: AtomicU64,
    pub model_loads: AtomicU64,
    pub last_load_ms: AtomicU64,
    pub last_activity: Mutex<Option<Instant>>,
}

impl Stats {
    pub fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Relaxed);
    }

    pub fn touch(&self) {
        if let Ok(mut last) = self.last_activity.lock() {
            *last = Some(Instant::now());
        }
    }

    pub fn snapshot(
        &self,
        loaded_model: Option<String>,
        queue_depth: usize,
        started: Instant,
    ) -> StatsSnapshot {
        let get = |c: &AtomicU64| c.load(Relaxed);
        let generated = get(&self.tokens_generated);
        let gen_us = get(&self.generation_us);
        let idle_since = self
            .last_activity
            .lock()
            .ok()
            .and_then(|l| *l)
            .unwrap_or(started);
        StatsSnapshot {
            requests: RequestStats {
                ok: get(&self.requests_ok),
                failed: get(&self.requests_failed),
                cancelled: get(&self.requests_cancelled),
                rejected: RejectedStats {
                    queue_full: get(&self.rejected_queue_full),
                    cpu: get(&self.rejected_cpu),
                    memory: get(&self.rejected_memory),
                    invalid: get(&self.rejected_invalid),
                    auth: get(&self.rejected_auth),
                },
            },
            prompt_tokens_evaluated: get(&self.prompt_tokens_evaluated),
            prompt_tokens_reused: get(&self.prompt_tokens_reused),
            prompt_tokens_shifted: get(&self.prompt_tokens_shifted),
            tokens_generated: generated,
            mean_tokens_per_second: if gen_us == 0 {
                0.0
            } else {
                generated as f64 / (gen_us as f64 / 1e6)
            },
            queue_depth,
            loaded_model,
            model_loads: get(&self.model_loads),
            last_load_seconds: get(&self.last_load_ms) as f64 / 1000.0,
            idle_seconds: idle_since.elapsed().as_secs_f64(),
        }
    }
}

#[derive(Debug, Serialize)]
pub struct StatsSnapshot {
    pub requests: RequestStats,
    pub prompt_tokens_evaluated: u64,
    pub prompt_tokens_reused: u64,
    pub prompt_tokens_shifted: u64,
    pub tokens_generated: u64,
    pub mean_tokens_per_second: f64,
    /// Requests waiting for the engine right now.
    pub queue_depth: usize,
    pub loaded_model: Option<String>,
    pub model_loads: u64,
    pub last_load_seconds: f64,
    pub idle_seconds: f64,
}

#[derive(Debug, Serialize)]
pub struct RequestStats {
    pub ok: u64,
    pub failed: u64,
    pub cancelled: u64,
    pub rejected: RejectedStats,
}

#[derive(Debug, Serialize)]
pub struct RejectedStats {
    pub queue_full: u64,
    pub cpu: u64,
    pub memory: u64,
    pub invalid: u64,
    pub auth: u64,
}
