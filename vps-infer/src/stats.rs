//! Counters behind `/v1/stats`: lock-free, written by handlers and the engine thread.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::Mutex;
use std::time::Instant;

use serde::Serialize;

use crate::engine::Priority;

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
    /// Whether llama.cpp can offload layers here: a GPU build that finds a GPU. Set
    /// once, when the engine starts.
    pub gpu_offload_supported: AtomicBool,
    /// Layers of the loaded model whose weights are on the GPU; 0 while no model is
    /// loaded.
    pub offloaded_layers: AtomicU64,
    /// All the loaded model's layers, its output layer counted as llama.cpp does; 0
    /// while no model is loaded.
    pub model_layers: AtomicU64,
    pub last_activity: Mutex<Option<Instant>>,
    /// What each sequence of the loaded model's context holds and does; written by
    /// the engine thread at each change, empty while no model is loaded.
    pub sequences: Mutex<Vec<SequenceStats>>,
    /// Indexed by [`Priority::index`].
    pub by_priority: [PriorityCounters; 3],
}

/// One sequence of the context, as `/v1/stats` shows it.
#[derive(Debug, Clone, Serialize, Default)]
pub struct SequenceStats {
    pub id: usize,
    /// `idle`, `prompt` (evaluating a prompt), `generating` or `paused` (background
    /// work waiting for more urgent work).
    pub state: &'static str,
    /// The priority of the job it serves, if any.
    pub priority: Option<Priority>,
    /// Tokens its KV cache holds.
    pub cached_tokens: usize,
    /// Jobs it finished since the model was loaded.
    pub requests: u64,
    pub tokens_generated: u64,
}

#[derive(Default)]
pub struct PriorityCounters {
    /// Jobs of this priority that got a sequence.
    pub started: AtomicU64,
    pub tokens_generated: AtomicU64,
    /// Sum of the times from submission to the first token, in microseconds.
    pub first_token_us: AtomicU64,
    pub first_tokens: AtomicU64,
    /// Jobs stopped so that a more urgent one got their sequence.
    pub preempted: AtomicU64,
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
            gpu: GpuStats {
                offload_supported: self.gpu_offload_supported.load(Relaxed),
                offloaded_layers: get(&self.offloaded_layers),
                model_layers: get(&self.model_layers),
            },
            sequences: self.sequences.lock().map(|s| s.clone()).unwrap_or_default(),
            priorities: Priority::ALL
                .iter()
                .map(|&p| {
                    let c = &self.by_priority[p.index()];
                    let first_tokens = get(&c.first_tokens);
                    PriorityStats {
                        priority: p,
                        started: get(&c.started),
                        tokens_generated: get(&c.tokens_generated),
                        mean_time_to_first_token: if first_tokens == 0 {
                            0.0
                        } else {
                            get(&c.first_token_us) as f64 / first_tokens as f64 / 1e6
                        },
                        preempted: get(&c.preempted),
                    }
                })
                .collect(),
        }
    }

    /// Changes the figures of sequence `id` (known from `set_sequences`).
    pub fn update_sequence(&self, id: usize, f: impl FnOnce(&mut SequenceStats)) {
        if let Ok(mut sequences) = self.sequences.lock() {
            if let Some(s) = sequences.get_mut(id) {
                f(s);
            }
        }
    }

    /// The loaded model has `offloaded` of its `layers` on the GPU; (0, 0) when it
    /// is unloaded.
    pub fn set_model_layers(&self, offloaded: u32, layers: u32) {
        self.offloaded_layers.store(u64::from(offloaded), Relaxed);
        self.model_layers.store(u64::from(layers), Relaxed);
    }

    /// `n` idle sequences (a model was loaded), or none (it was unloaded).
    pub fn set_sequences(&self, n: usize) {
        if let Ok(mut sequences) = self.sequences.lock() {
            *sequences = (0..n)
                .map(|id| SequenceStats {
                    id,
                    state: "idle",
                    ..SequenceStats::default()
                })
                .collect();
        }
    }
}

#[derive(Debug, Serialize)]
pub struct PriorityStats {
    pub priority: Priority,
    pub started: u64,
    pub tokens_generated: u64,
    /// Seconds from submission (queueing included) to the first token, on average.
    pub mean_time_to_first_token: f64,
    pub preempted: u64,
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
    pub gpu: GpuStats,
    pub sequences: Vec<SequenceStats>,
    pub priorities: Vec<PriorityStats>,
}

/// Where the loaded model's layers are: `offloaded_layers` of `model_layers` on the
/// GPU, the rest on the CPU.
#[derive(Debug, Serialize)]
pub struct GpuStats {
    pub offload_supported: bool,
    pub offloaded_layers: u64,
    pub model_layers: u64,
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gpu_figures_follow_the_loaded_model() {
        let stats = Stats::default();
        stats.gpu_offload_supported.store(true, Relaxed);
        stats.set_model_layers(10, 25);
        let json = serde_json::to_value(stats.snapshot(None, 0, Instant::now())).unwrap();
        assert_eq!(
            json["gpu"],
            serde_json::json!({"offload_supported": true, "offloaded_layers": 10, "model_layers": 25})
        );
        stats.set_model_layers(0, 0);
        let json = serde_json::to_value(stats.snapshot(None, 0, Instant::now())).unwrap();
        assert_eq!(json["gpu"]["model_layers"], 0);
    }
}
