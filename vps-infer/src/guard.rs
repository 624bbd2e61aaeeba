//! Resource guards: refuse new work while other processes hog the CPU or memory runs low.
//!
//! A background thread samples the machine once a second. sysinfo computes CPU use
//! between two samples, so the first sample only sets the baseline: on its own it reads
//! as the average since boot, and right after a long build that refused the first
//! requests of a fresh start. CPU used by vps-infer itself is subtracted, so our own
//! decoding never trips our own guard.

use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::Duration;

use sysinfo::{Pid, ProcessRefreshKind, ProcessesToUpdate, System};

use crate::config::GuardConfig;

/// Which guard refused, and why.
#[derive(Debug, Clone, Copy, PartialEq, thiserror::Error)]
pub enum Refusal {
    #[error("server busy: other processes use {percent:.0}% CPU (limit {limit:.0}%)")]
    Cpu { percent: f32, limit: f32 },
    #[error("low memory: {available_mb} MB available (need {need_mb} MB)")]
    Memory { available_mb: u64, need_mb: u64 },
}

impl Refusal {
    /// How long a client should wait before trying again: CPU load passes quickly,
    /// memory pressure slowly.
    pub fn retry_after_s(&self) -> u32 {
        match self {
            Refusal::Cpu { .. } => 5,
            Refusal::Memory { .. } => 30,
        }
    }
}

pub struct ResourceGuard {
    config: GuardConfig,
    other_cpu_percent: AtomicU32,
    available_mb: AtomicU64,
    sampled: AtomicBool,
}

impl ResourceGuard {
    /// Starts the sampler thread; it lives as long as the process.
    pub fn start(config: GuardConfig) -> Arc<ResourceGuard> {
        let guard = Arc::new(ResourceGuard::unsampled(config));
        let weak = Arc::downgrade(&guard);
        let spawned = std::thread::Builder::new()
            .name("resource-guard".into())
            .spawn(move || {
                let mut sys = System::new();
                let pid = Pid::from_u32(std::process::id());
                while let Some(guard) = weak.upgrade() {
                    guard.sample(&mut sys, pid);
                    drop(guard);
                    std::thread::sleep(Duration::from_secs(1));
                }
            });
        if let Err(e) = spawned {
            tracing::warn!("resource guard disabled: cannot start its thread: {e}");
        }
        guard
    }

    /// A guard that lets everything through until its first samples.
    fn unsampled(config: GuardConfig) -> ResourceGuard {
        ResourceGuard {
            config,
            other_cpu_percent: AtomicU32::new(0f32.to_bits()),
            available_mb: AtomicU64::new(u64::MAX),
            sampled: AtomicBool::new(false),
        }
    }

    fn sample(&self, sys: &mut System, pid: Pid) {
        let baseline_only = !self.sampled.load(Relaxed);
        sys.refresh_cpu_usage();
        sys.refresh_memory();
        sys.refresh_processes_specifics(
            ProcessesToUpdate::Some(&[pid]),
            true,
            ProcessRefreshKind::nothing().with_cpu(),
        );
        self.available_mb
            .store(sys.available_memory() / (1024 * 1024), Relaxed);
        self.sampled.store(true, Relaxed);
        if baseline_only {
            return;
        }
        let n_cpus = sys.cpus().len().max(1) as f32;
        let total = sys.global_cpu_usage();
        // A process's usage is in percent of one core; the global figure is of all cores.
        let own = sys.process(pid).map_or(0.0, |p| p.cpu_usage() / n_cpus);
        let other = (total - own).max(0.0);
        self.other_cpu_percent.store(other.to_bits(), Relaxed);
    }

    pub fn other_cpu_percent(&self) -> f32 {
        f32::from_bits(self.other_cpu_percent.load(Relaxed))
    }

    pub fn available_mb(&self) -> Option<u64> {
        self.sampled
            .load(Relaxed)
            .then(|| self.available_mb.load(Relaxed))
    }

    /// Whether new work may start now.
    pub fn check(&self) -> Result<(), Refusal> {
        let cpu = self.other_cpu_percent();
        if self.config.max_cpu_percent < 100.0 && cpu > self.config.max_cpu_percent {
            return Err(Refusal::Cpu {
                percent: cpu,
                limit: self.config.max_cpu_percent,
            });
        }
        if let Some(mb) = self.available_mb() {
            if mb < self.config.min_free_memory_mb {
                return Err(Refusal::Memory {
                    available_mb: mb,
                    need_mb: self.config.min_free_memory_mb,
                });
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::EngineError;
    use crate::error::ApiError;

    fn guard(max_cpu: f32, min_mb: u64, cpu: f32, mb: u64) -> ResourceGuard {
        ResourceGuard {
            config: GuardConfig {
                max_cpu_percent: max_cpu,
                min_free_memory_mb: min_mb,
            },
            other_cpu_percent: AtomicU32::new(cpu.to_bits()),
            available_mb: AtomicU64::new(mb),
            sampled: AtomicBool::new(true),
        }
    }

    #[test]
    fn refuses_on_cpu_then_memory() {
        assert!(guard(70.0, 1024, 10.0, 4096).check().is_ok());
        let why = guard(70.0, 1024, 85.0, 4096).check().unwrap_err();
        assert!(matches!(why, Refusal::Cpu { .. }), "{why:?}");
        let err = ApiError::from(EngineError::from(why));
        assert_eq!(err.status().as_u16(), 503);
        assert!(err.to_string().contains("85% CPU"), "{err}");
        let why = guard(70.0, 1024, 10.0, 512).check().unwrap_err();
        assert!(matches!(why, Refusal::Memory { .. }), "{why:?}");
        assert!(why.to_string().contains("512 MB"), "{why}");
    }

    #[test]
    fn first_sample_sets_the_cpu_baseline_only() {
        let guard = ResourceGuard::unsampled(GuardConfig {
            max_cpu_percent: 0.0,
            min_free_memory_mb: 0,
        });
        let mut sys = System::new();
        let pid = Pid::from_u32(std::process::id());
        // Alone, one sample reads the average since boot, never exactly 0 on a
        // machine that has run anything; the guard must not act on it.
        guard.sample(&mut sys, pid);
        assert_eq!(guard.other_cpu_percent(), 0.0);
        assert!(guard.available_mb().is_some_and(|mb| mb > 0));
        assert!(guard.check().is_ok());
    }

    #[test]
    fn limits_at_their_bounds_disable_the_guard() {
        assert!(guard(100.0, 0, 100.0, 0).check().is_ok());
    }
}
