//! Token-bucket rate limiting per client, with a sliding window for bursts.

use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// How many requests a client may make, and how fast the allowance refills.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Quota {
    pub burst: u32,
    pub per_second: f64,
}

impl Quota {
    pub const fn new(burst: u32, per_second: f64) -> Self {
        Quota { burst, per_second }
    }

    /// The time one token takes to come back.
    pub fn refill_interval(&self) -> Duration {
        if self.per_second <= 0.0 {
            Duration::MAX
        } else {
            Duration::from_secs_f64(1.0 / self.per_second)
        }
    }
}

impl Default for Quota {
    fn default() -> Self {
        Quota::new(10, 5.0)
    }
}

/// Why a request was turned away.
#[derive(Debug, Clone, PartialEq)]
pub enum Denied {
    /// Out of tokens: try again after the given wait.
    RateLimited { retry_after: Duration },
    /// The client is blocked outright.
    Blocked { reason: String },
}

impl fmt::Display for Denied {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Denied::RateLimited { retry_after } => {
                write!(f, "rate limited, retry after {} ms", retry_after.as_millis())
            }
            Denied::Blocked { reason } => write!(f, "blocked: {reason}"),
        }
    }
}

impl std::error::Error for Denied {}

#[derive(Debug, Clone)]
struct Bucket {
    tokens: f64,
    updated: Instant,
}

impl Bucket {
    fn full(quota: &Quota, now: Instant) -> Self {
        Bucket {
            tokens: f64::from(quota.burst),
            updated: now,
        }
    }

    fn refill(&mut self, quota: &Quota, now: Instant) {
        let elapsed = now.saturating_duration_since(self.updated).as_secs_f64();
        self.tokens = (self.tokens + elapsed * quota.per_second).min(f64::from(quota.burst));
        self.updated = now;
    }

    fn take(&mut self, quota: &Quota, now: Instant, cost: f64) -> Result<(), Duration> {
        self.refill(quota, now);
        if self.tokens >= cost {
            self.tokens -= cost;
            Ok(())
        } else {
            let missing = cost - self.tokens;
            Err(Duration::from_secs_f64(missing / quota.per_second.max(f64::EPSILON)))
        }
    }
}

/// A sliding window that counts requests over the last `span`.
#[derive(Debug)]
pub struct SlidingWindow {
    span: Duration,
    hits: Vec<Instant>,
}

impl SlidingWindow {
    pub fn new(span: Duration) -> Self {
        SlidingWindow { span, hits: Vec::new() }
    }

    pub fn record(&mut self, now: Instant) -> usize {
        self.evict(now);
        self.hits.push(now);
        self.hits.len()
    }

    pub fn count(&mut self, now: Instant) -> usize {
        self.evict(now);
        self.hits.len()
    }

    fn evict(&mut self, now: Instant) {
        let span = self.span;
        self.hits.retain(|&hit| now.saturating_duration_since(hit) < span);
    }
}

/// The limiter: one bucket per client, shared between request handlers.
#[derive(Debug, Clone, Default)]
pub struct RateLimiter {
    inner: Arc<Mutex<LimiterState>>,
}

#[derive(Debug, Default)]
struct LimiterState {
    default_quota: Quota,
    quotas: HashMap<String, Quota>,
    buckets: HashMap<String, Bucket>,
    blocked: HashMap<String, String>,
}

impl RateLimiter {
    pub fn new(default_quota: Quota) -> Self {
        let state = LimiterState {
            default_quota,
            ..LimiterState::default()
        };
        RateLimiter {
            inner: Arc::new(Mutex::new(state)),
        }
    }

    /// Gives a client its own quota instead of the default one.
    pub fn set_quota(&self, client: &str, quota: Quota) {
        let mut state = self.lock();
        state.quotas.insert(client.to_owned(), quota);
        state.buckets.remove(client);
    }

    pub fn block(&self, client: &str, reason: impl Into<String>) {
        self.lock().blocked.insert(client.to_owned(), reason.into());
    }

    pub fn unblock(&self, client: &str) -> bool {
        self.lock().blocked.remove(client).is_some()
    }

    /// Checks one request of weight `cost` from `client` at `now`.
    pub fn check(&self, client: &str, cost: u32, now: Instant) -> Result<(), Denied> {
        let mut state = self.lock();
        if let Some(reason) = state.blocked.get(client) {
            return Err(Denied::Blocked {
                reason: reason.clone(),
            });
        }
        let quota = state.quotas.get(client).copied().unwrap_or(state.default_quota);
        let bucket = state
            .buckets
            .entry(client.to_owned())
            .or_insert_with(|| Bucket::full(&quota, now));
        bucket
            .take(&quota, now, f64::from(cost))
            .map_err(|retry_after| Denied::RateLimited { retry_after })
    }

    /// Forgets buckets that have been full for a while, to bound memory.
    pub fn prune(&self, now: Instant, idle: Duration) -> usize {
        let mut state = self.lock();
        let before = state.buckets.len();
        state
            .buckets
            .retain(|_, bucket| now.saturating_duration_since(bucket.updated) < idle);
        before - state.buckets.len()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, LimiterState> {
        match self.inner.lock() {
            Ok(guard) => guard,
            Err(poisoned) => poisoned.into_inner(),
        }
    }
}

/// Decides which client a request belongs to.
pub trait ClientKey {
    fn client_key(&self, peer: &str, headers: &[(String, String)]) -> Option<String>;
}

/// Keys clients by an API key header, falling back to the peer address.
pub struct ApiKeyOrPeer {
    pub header: String,
}

impl ClientKey for ApiKeyOrPeer {
    fn client_key(&self, peer: &str, headers: &[(String, String)]) -> Option<String> {
        let from_header = headers
            .iter()
            .find(|(name, _)| name.eq_ignore_ascii_case(&self.header))
            .map(|(_, value)| value.trim().to_owned())
            .filter(|value| !value.is_empty());
        from_header.or_else(|| {
            let host = peer.rsplit_once(':').map_or(peer, |(host, _)| host);
            (!host.is_empty()).then(|| format!("ip:{host}"))
        })
    }
}

/// Parses `"10/s"`, `"300/m"` or `"5000/h"` into a quota whose burst is the count.
pub fn parse_quota(spec: &str) -> Result<Quota, String> {
    let (count, unit) = spec
        .split_once('/')
        .ok_or_else(|| format!("`{spec}`: expected COUNT/UNIT"))?;
    let count: u32 = count
        .trim()
        .parse()
        .map_err(|err| format!("`{spec}`: bad count: {err}"))?;
    let seconds = match unit.trim() {
        "s" | "sec" => 1.0,
        "m" | "min" => 60.0,
        "h" | "hour" => 3600.0,
        other => return Err(format!("`{spec}`: unknown unit `{other}`")),
    };
    Ok(Quota::new(count, f64::from(count) / seconds))
}

macro_rules! quota {
    ($burst:expr, $rate:expr) => {
        $crate::Quota::new($burst, $rate)
    };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn burst_then_refill() {
        let limiter = RateLimiter::new(quota!(2, 1.0));
        let start = Instant::now();
        assert!(limiter.check("a", 1, start).is_ok());
        assert!(limiter.check("a", 1, start).is_ok());
        assert!(limiter.check("a", 1, start).is_err());
        assert!(limiter.check("a", 1, start + Duration::from_secs(1)).is_ok());
    }

    #[test]
    fn blocked_clients_are_denied() {
        let limiter = RateLimiter::default();
        limiter.block("b", "abuse");
        let denied = limiter.check("b", 1, Instant::now()).unwrap_err();
        assert_eq!(denied.to_string(), "blocked: abuse");
        assert!(limiter.unblock("b"));
    }

    #[test]
    fn quotas_parse() {
        assert_eq!(parse_quota("10/s"), Ok(Quota::new(10, 10.0)));
        assert_eq!(parse_quota("60/m"), Ok(Quota::new(60, 1.0)));
        assert!(parse_quota("ten/s").is_err());
    }
}
