//! What the script endpoint (HTTP, and `lsp-edge complete`) has done since start:
//! counters, chunking totals, breaker transitions and latency percentiles, as JSON
//! (`/v1/stats`) and as Prometheus text (`/metrics`).

use std::collections::VecDeque;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::backend::breaker::{BreakerState, CircuitBreaker};

/// Latency samples kept for the percentiles: the most recent ones, so the figures
/// follow the current load rather than the whole uptime.
const WINDOW: usize = 1024;

#[derive(Debug, Default)]
pub struct Counter(AtomicU64);

impl Counter {
    pub fn add(&self, n: u64) {
        self.0.fetch_add(n, Relaxed);
    }
    pub fn inc(&self) {
        self.add(1);
    }
    pub fn get(&self) -> u64 {
        self.0.load(Relaxed)
    }
}

/// A sliding window of durations, plus the running count and sum over all time.
#[derive(Debug, Default)]
pub struct LatencyWindow {
    recent: VecDeque<f64>,
    count: u64,
    sum_ms: f64,
}

impl LatencyWindow {
    pub fn record(&mut self, duration: Duration) {
        let ms = duration.as_secs_f64() * 1000.0;
        if self.recent.len() == WINDOW {
            self.recent.pop_front();
        }
        self.recent.push_back(ms);
        self.count += 1;
        self.sum_ms += ms;
    }

    pub fn summary(&self) -> LatencySummary {
        let mut sorted: Vec<f64> = self.recent.iter().copied().collect();
        sorted.sort_by(f64::total_cmp);
        LatencySummary {
            p50_ms: percentile(&sorted, 0.50),
            p95_ms: percentile(&sorted, 0.95),
            count: self.count,
            sum_ms: self.sum_ms,
        }
    }
}

/// The nearest-rank percentile of sorted samples; 0 without samples.
fn percentile(sorted: &[f64], quantile: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let rank = (quantile * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct LatencySummary {
    pub p50_ms: f64,
    pub p95_ms: f64,
    pub count: u64,
    pub sum_ms: f64,
}

/// The endpoint's counters. One per server, shared by every request.
#[derive(Debug)]
pub struct HttpStats {
    started: Instant,
    /// Generation requests: single, batch items and refactors.
    pub requests: Counter,
    pub ok: Counter,
    pub failed: Counter,
    /// Ended by the client (disconnect) before the answer was complete.
    pub cancelled: Counter,
    /// Refused because the shared generation limit was reached.
    pub shed: Counter,
    /// Refused at once because the circuit breaker was open.
    pub breaker_refused: Counter,
    /// Refused as malformed (400, 413).
    pub invalid: Counter,
    pub unauthorized: Counter,
    pub cache_hits: Counter,
    pub cache_misses: Counter,
    /// Requests whose prompt went through the context engine.
    pub context_requests: Counter,
    pub chars_before: Counter,
    pub chars_after: Counter,
    pub breaker_opened: Counter,
    pub breaker_half_opened: Counter,
    pub breaker_closed: Counter,
    edge_overhead: Mutex<LatencyWindow>,
    backend_time: Mutex<LatencyWindow>,
}

impl Default for HttpStats {
    fn default() -> Self {
        HttpStats {
            started: Instant::now(),
            requests: Counter::default(),
            ok: Counter::default(),
            failed: Counter::default(),
            cancelled: Counter::default(),
            shed: Counter::default(),
            breaker_refused: Counter::default(),
            invalid: Counter::default(),
            unauthorized: Counter::default(),
            cache_hits: Counter::default(),
            cache_misses: Counter::default(),
            context_requests: Counter::default(),
            chars_before: Counter::default(),
            chars_after: Counter::default(),
            breaker_opened: Counter::default(),
            breaker_half_opened: Counter::default(),
            breaker_closed: Counter::default(),
            edge_overhead: Mutex::default(),
            backend_time: Mutex::default(),
        }
    }
}

/// What the gauges read at snapshot time, from outside the counters.
#[derive(Debug, Clone)]
pub struct Gauges {
    pub in_flight: usize,
    pub max_in_flight: usize,
    /// Whether lsp-edge can generate at all: one backend's breaker, or with
    /// several, the most open of theirs while any takes requests.
    pub breaker: BreakerState,
    pub cache_entries: usize,
    pub cache_bytes: usize,
    pub cache_max_bytes: usize,
    pub backends: Vec<BackendStats>,
}

/// One backend, as `/v1/stats` and `/metrics` show it.
#[derive(Debug, Clone, Serialize)]
pub struct BackendStats {
    pub name: String,
    pub kind: &'static str,
    /// Without credentials.
    pub url: String,
    /// `closed`, `open` or `half_open`.
    pub breaker: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    pub weight: u32,
    pub in_flight: usize,
    pub max_in_flight: usize,
    /// Generations sent to it (LSP and HTTP together).
    pub generations: u64,
    /// Those that failed in a way that counts against it.
    pub failures: u64,
    /// Documents at home on it.
    pub documents: usize,
}

#[derive(Debug, Clone, Serialize)]
pub struct StatsSnapshot {
    pub uptime_s: u64,
    pub requests: RequestCounts,
    pub in_flight: usize,
    pub max_in_flight: usize,
    pub cache: CacheStats,
    pub breaker: BreakerStats,
    pub chunking: ChunkingTotals,
    pub edge_overhead_ms: LatencySummary,
    pub backend_ms: LatencySummary,
    pub backends: Vec<BackendStats>,
}

#[derive(Debug, Clone, Serialize)]
pub struct RequestCounts {
    pub total: u64,
    pub ok: u64,
    pub failed: u64,
    pub cancelled: u64,
    pub shed: u64,
    pub breaker_refused: u64,
    pub invalid: u64,
    pub unauthorized: u64,
}

#[derive(Debug, Clone, Serialize)]
pub struct CacheStats {
    pub hits: u64,
    pub misses: u64,
    pub entries: usize,
    pub bytes: usize,
    pub max_bytes: usize,
}

#[derive(Debug, Clone, Serialize)]
pub struct BreakerStats {
    /// `closed`, `open` or `half_open`.
    pub state: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    pub transitions: BreakerTransitions,
}

#[derive(Debug, Clone, Serialize)]
pub struct BreakerTransitions {
    pub opened: u64,
    pub half_opened: u64,
    pub closed: u64,
}

#[derive(Debug, Clone, Serialize)]
pub struct ChunkingTotals {
    /// Requests whose prompt went through the context engine.
    pub requests: u64,
    pub chars_before: u64,
    pub chars_after: u64,
    /// `100 * (1 - after / before)` over those requests.
    pub reduction_percent: f64,
}

pub fn breaker_state_name(state: &BreakerState) -> &'static str {
    match state {
        BreakerState::Closed => "closed",
        BreakerState::Open { .. } => "open",
        BreakerState::HalfOpen => "half_open",
    }
}

impl HttpStats {
    fn window(lock: &Mutex<LatencyWindow>) -> std::sync::MutexGuard<'_, LatencyWindow> {
        // A window is a few numbers updated under the lock; a panic elsewhere cannot
        // leave it half-written.
        lock.lock().unwrap_or_else(PoisonError::into_inner)
    }

    pub fn record_edge_overhead(&self, duration: Duration) {
        Self::window(&self.edge_overhead).record(duration);
    }

    pub fn record_backend_time(&self, duration: Duration) {
        Self::window(&self.backend_time).record(duration);
    }

    /// Counts the breaker's state changes from now on (the breaker is shared with
    /// the LSP side, so theirs count too). Needs a Tokio runtime; without one it
    /// does nothing.
    pub fn watch_breaker(self: &Arc<Self>, breaker: &CircuitBreaker) {
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let mut changes = breaker.subscribe();
        let stats = Arc::downgrade(self);
        runtime.spawn(async move {
            while changes.changed().await.is_ok() {
                let Some(stats) = stats.upgrade() else {
                    return;
                };
                let counter = match *changes.borrow_and_update() {
                    BreakerState::Closed => &stats.breaker_closed,
                    BreakerState::Open { .. } => &stats.breaker_opened,
                    BreakerState::HalfOpen => &stats.breaker_half_opened,
                };
                counter.inc();
            }
        });
    }

    pub fn snapshot(&self, gauges: Gauges) -> StatsSnapshot {
        let before = self.chars_before.get();
        let after = self.chars_after.get();
        let reduction_percent = if before == 0 {
            0.0
        } else {
            ((1000.0 * (1.0 - after as f64 / before as f64)).round()) / 10.0
        };
        let reason = match &gauges.breaker {
            BreakerState::Open { reason, .. } => Some(reason.clone()),
            _ => None,
        };
        StatsSnapshot {
            uptime_s: self.started.elapsed().as_secs(),
            requests: RequestCounts {
                total: self.requests.get(),
                ok: self.ok.get(),
                failed: self.failed.get(),
                cancelled: self.cancelled.get(),
                shed: self.shed.get(),
                breaker_refused: self.breaker_refused.get(),
                invalid: self.invalid.get(),
                unauthorized: self.unauthorized.get(),
            },
            in_flight: gauges.in_flight,
            max_in_flight: gauges.max_in_flight,
            cache: CacheStats {
                hits: self.cache_hits.get(),
                misses: self.cache_misses.get(),
                entries: gauges.cache_entries,
                bytes: gauges.cache_bytes,
                max_bytes: gauges.cache_max_bytes,
            },
            breaker: BreakerStats {
                state: breaker_state_name(&gauges.breaker),
                reason,
                transitions: BreakerTransitions {
                    opened: self.breaker_opened.get(),
                    half_opened: self.breaker_half_opened.get(),
                    closed: self.breaker_closed.get(),
                },
            },
            chunking: ChunkingTotals {
                requests: self.context_requests.get(),
                chars_before: before,
                chars_after: after,
                reduction_percent,
            },
            edge_overhead_ms: Self::window(&self.edge_overhead).summary(),
            backend_ms: Self::window(&self.backend_time).summary(),
            backends: gauges.backends,
        }
    }
}

/// One metric family: `# HELP`, `# TYPE` and its samples (`labels` include braces).
fn metric(out: &mut String, name: &str, kind: &str, help: &str, samples: &[(&str, f64)]) {
    let _ = writeln!(out, "# HELP cerebrum_edge_{name} {help}");
    let _ = writeln!(out, "# TYPE cerebrum_edge_{name} {kind}");
    for (labels, value) in samples {
        let _ = writeln!(out, "cerebrum_edge_{name}{labels} {value}");
    }
}

/// A metric family: name, type, help, and samples as (labels, value).
type Family<'a> = (&'a str, &'a str, &'a str, Vec<(&'a str, f64)>);

/// The Prometheus text exposition (format 0.0.4) of a snapshot.
pub fn prometheus_text(snapshot: &StatsSnapshot) -> String {
    let (r, c, b, k) = (
        &snapshot.requests,
        &snapshot.cache,
        &snapshot.breaker,
        &snapshot.chunking,
    );
    let state = |name: &str| if b.state == name { 1.0 } else { 0.0 };
    let families: Vec<Family> = vec![
        (
            "http_requests_total",
            "counter",
            "Generation requests over HTTP, by outcome.",
            vec![
                ("{outcome=\"ok\"}", r.ok as f64),
                ("{outcome=\"failed\"}", r.failed as f64),
                ("{outcome=\"cancelled\"}", r.cancelled as f64),
                ("{outcome=\"shed\"}", r.shed as f64),
                ("{outcome=\"breaker_refused\"}", r.breaker_refused as f64),
            ],
        ),
        (
            "http_rejected_total",
            "counter",
            "HTTP requests refused before any work, by reason.",
            vec![
                ("{reason=\"invalid\"}", r.invalid as f64),
                ("{reason=\"unauthorized\"}", r.unauthorized as f64),
            ],
        ),
        (
            "generations_in_flight",
            "gauge",
            "Generations in flight (LSP and HTTP together).",
            vec![("", snapshot.in_flight as f64)],
        ),
        (
            "generations_max_in_flight",
            "gauge",
            "The shared limit on generations in flight.",
            vec![("", snapshot.max_in_flight as f64)],
        ),
        (
            "cache_lookups_total",
            "counter",
            "Temperature-0 answer cache lookups, by result.",
            vec![
                ("{result=\"hit\"}", c.hits as f64),
                ("{result=\"miss\"}", c.misses as f64),
            ],
        ),
        (
            "cache_entries",
            "gauge",
            "Answers in the cache.",
            vec![("", c.entries as f64)],
        ),
        (
            "cache_bytes",
            "gauge",
            "Bytes the cache holds, keys included.",
            vec![("", c.bytes as f64)],
        ),
        (
            "breaker_state",
            "gauge",
            "The backend circuit breaker's state (1 for the current one).",
            vec![
                ("{state=\"closed\"}", state("closed")),
                ("{state=\"open\"}", state("open")),
                ("{state=\"half_open\"}", state("half_open")),
            ],
        ),
        (
            "breaker_transitions_total",
            "counter",
            "Circuit breaker state changes, by the state entered.",
            vec![
                ("{to=\"open\"}", b.transitions.opened as f64),
                ("{to=\"half_open\"}", b.transitions.half_opened as f64),
                ("{to=\"closed\"}", b.transitions.closed as f64),
            ],
        ),
        (
            "context_requests_total",
            "counter",
            "Requests whose prompt went through the context engine.",
            vec![("", k.requests as f64)],
        ),
        (
            "context_chars_total",
            "counter",
            "Characters before and after the context engine.",
            vec![
                ("{stage=\"before\"}", k.chars_before as f64),
                ("{stage=\"after\"}", k.chars_after as f64),
            ],
        ),
    ];
    let mut out = String::new();
    for (name, kind, help, samples) in &families {
        metric(&mut out, name, kind, help, samples);
    }
    for (name, help, summary) in [
        (
            "overhead_seconds",
            "Edge overhead: request received to backend request sent.",
            &snapshot.edge_overhead_ms,
        ),
        (
            "backend_seconds",
            "Backend time: request sent to the last token.",
            &snapshot.backend_ms,
        ),
    ] {
        metric(
            &mut out,
            name,
            "summary",
            help,
            &[
                ("{quantile=\"0.5\"}", summary.p50_ms / 1000.0),
                ("{quantile=\"0.95\"}", summary.p95_ms / 1000.0),
            ],
        );
        let _ = writeln!(out, "cerebrum_edge_{name}_sum {}", summary.sum_ms / 1000.0);
        let _ = writeln!(out, "cerebrum_edge_{name}_count {}", summary.count);
    }
    backend_metrics(&mut out, &snapshot.backends);
    out
}

/// A metric family whose samples' labels are built at run time.
type LabelledFamily<'a> = (&'a str, &'a str, &'a str, Vec<(String, f64)>);

/// The per-backend families, labelled `backend="NAME"`.
fn backend_metrics(out: &mut String, backends: &[BackendStats]) {
    let labels: Vec<String> = backends
        .iter()
        .map(|backend| format!("backend=\"{}\"", label_value(&backend.name)))
        .collect();
    let samples = |value: &dyn Fn(&BackendStats) -> f64, extra: &str| -> Vec<(String, f64)> {
        backends
            .iter()
            .zip(&labels)
            .map(|(backend, label)| (format!("{{{label}{extra}}}"), value(backend)))
            .collect()
    };
    let open = |state: &'static str| {
        move |backend: &BackendStats| f64::from(u8::from(backend.breaker == state))
    };
    let mut breaker = samples(&open("closed"), ",state=\"closed\"");
    breaker.extend(samples(&open("open"), ",state=\"open\""));
    breaker.extend(samples(&open("half_open"), ",state=\"half_open\""));
    type Value = fn(&BackendStats) -> f64;
    let plain: [(&str, &str, &str, Value); 4] = [
        (
            "backend_in_flight",
            "gauge",
            "Generations in flight, per backend.",
            |b| b.in_flight as f64,
        ),
        (
            "backend_generations_total",
            "counter",
            "Generations sent, per backend.",
            |b| b.generations as f64,
        ),
        (
            "backend_failures_total",
            "counter",
            "Generations that failed against the backend, per backend.",
            |b| b.failures as f64,
        ),
        (
            "backend_documents",
            "gauge",
            "Documents at home on each backend.",
            |b| b.documents as f64,
        ),
    ];
    let mut families: Vec<LabelledFamily> = plain
        .iter()
        .map(|&(name, kind, help, value)| (name, kind, help, samples(&value, "")))
        .collect();
    families.push((
        "backend_breaker_state",
        "gauge",
        "Each backend's circuit breaker state (1 for the current one).",
        breaker,
    ));
    for (name, kind, help, samples) in &families {
        let samples: Vec<(&str, f64)> = samples
            .iter()
            .map(|(labels, value)| (labels.as_str(), *value))
            .collect();
        metric(out, name, kind, help, &samples);
    }
}

/// A Prometheus label value: `\`, `"` and line breaks escaped.
fn label_value(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_use_the_nearest_rank() {
        let mut window = LatencyWindow::default();
        assert_eq!(window.summary().p50_ms, 0.0);
        for ms in 1..=100 {
            window.record(Duration::from_millis(ms));
        }
        let summary = window.summary();
        assert_eq!(summary.p50_ms, 50.0);
        assert_eq!(summary.p95_ms, 95.0);
        assert_eq!(summary.count, 100);
        assert_eq!(summary.sum_ms, 5050.0);
    }

    #[test]
    fn the_window_keeps_the_most_recent_samples() {
        let mut window = LatencyWindow::default();
        for _ in 0..WINDOW {
            window.record(Duration::from_millis(1000));
        }
        for _ in 0..WINDOW {
            window.record(Duration::from_millis(1));
        }
        assert_eq!(window.summary().p95_ms, 1.0);
        assert_eq!(window.summary().count, 2 * WINDOW as u64);
    }

    fn gauges(breaker: BreakerState) -> Gauges {
        Gauges {
            in_flight: 1,
            max_in_flight: 2,
            breaker,
            cache_entries: 3,
            cache_bytes: 4096,
            cache_max_bytes: 8192,
            backends: vec![BackendStats {
                name: "vps-a".into(),
                kind: "vps-infer",
                url: "http://10.0.0.1:9000".into(),
                breaker: "open",
                reason: Some("connection refused".into()),
                weight: 1,
                in_flight: 1,
                max_in_flight: 2,
                generations: 7,
                failures: 3,
                documents: 2,
            }],
        }
    }

    #[test]
    fn snapshot_reports_reduction_and_breaker_reason() {
        let stats = HttpStats::default();
        stats.context_requests.inc();
        stats.chars_before.add(8000);
        stats.chars_after.add(2000);
        let snapshot = stats.snapshot(gauges(BreakerState::Open {
            cooldown: Duration::from_secs(10),
            reason: "connection refused".into(),
        }));
        assert_eq!(snapshot.chunking.reduction_percent, 75.0);
        assert_eq!(snapshot.breaker.state, "open");
        assert_eq!(
            snapshot.breaker.reason.as_deref(),
            Some("connection refused")
        );
    }

    #[test]
    fn prometheus_text_has_help_type_and_samples() {
        let stats = HttpStats::default();
        stats.ok.add(5);
        stats.shed.inc();
        stats.cache_hits.add(2);
        stats.record_edge_overhead(Duration::from_millis(2));
        let text = prometheus_text(&stats.snapshot(gauges(BreakerState::Closed)));
        for line in [
            "# TYPE cerebrum_edge_http_requests_total counter",
            "cerebrum_edge_http_requests_total{outcome=\"ok\"} 5",
            "cerebrum_edge_http_requests_total{outcome=\"shed\"} 1",
            "cerebrum_edge_cache_lookups_total{result=\"hit\"} 2",
            "cerebrum_edge_breaker_state{state=\"closed\"} 1",
            "cerebrum_edge_generations_in_flight 1",
            "# TYPE cerebrum_edge_overhead_seconds summary",
            "cerebrum_edge_overhead_seconds{quantile=\"0.5\"} 0.002",
            "cerebrum_edge_overhead_seconds_count 1",
            "cerebrum_edge_backend_generations_total{backend=\"vps-a\"} 7",
            "cerebrum_edge_backend_breaker_state{backend=\"vps-a\",state=\"open\"} 1",
            "cerebrum_edge_backend_breaker_state{backend=\"vps-a\",state=\"closed\"} 0",
        ] {
            assert!(
                text.lines().any(|l| l == line),
                "missing {line:?} in\n{text}"
            );
        }
        // Every sample line is `name{labels} value` with a numeric value.
        for line in text.lines().filter(|l| !l.starts_with('#')) {
            let value = line.rsplit(' ').next().unwrap();
            assert!(value.parse::<f64>().is_ok(), "{line}");
        }
    }
}
