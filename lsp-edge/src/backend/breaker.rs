//! A circuit breaker in front of vps-infer: after a run of failures it refuses at once
//! for a cooldown instead of letting every keystroke wait for a dead backend.
//!
//! Closed → (N consecutive failures) → Open for `cooldown` → HalfOpen: one probe goes
//! through → success closes it, failure re-opens it with the cooldown doubled, capped.
//! Time comes from a [`Clock`] so that tests drive it by hand.

use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use tokio::sync::watch;

use crate::config::BreakerConfig;

/// The source of "now" for the breaker.
pub trait Clock: Send + Sync + std::fmt::Debug + 'static {
    fn now(&self) -> Instant;
}

/// The real monotonic clock.
#[derive(Debug, Default, Clone, Copy)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> Instant {
        Instant::now()
    }
}

/// The breaker's state as observers see it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BreakerState {
    Closed,
    /// Refusing until the cooldown ends; `reason` is the last failure.
    Open {
        cooldown: Duration,
        reason: String,
    },
    /// Letting one probe through.
    HalfOpen,
}

/// A refused admission.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "vps-infer is unavailable (circuit breaker open, next try in {}s): {reason}",
    retry_in.as_secs_f32().ceil() as u64
)]
pub struct BreakerOpen {
    pub retry_in: Duration,
    pub reason: String,
}

#[derive(Debug)]
enum State {
    Closed { failures: u32 },
    Open { until: Instant },
    HalfOpen { probing: bool },
}

#[derive(Debug)]
struct Inner {
    state: State,
    /// The cooldown of the current (or next) open period.
    cooldown: Duration,
    last_failure: String,
}

pub struct CircuitBreaker {
    config: BreakerConfig,
    clock: Arc<dyn Clock>,
    inner: Mutex<Inner>,
    changes: watch::Sender<BreakerState>,
}

impl std::fmt::Debug for CircuitBreaker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CircuitBreaker")
            .field("state", &self.state())
            .finish()
    }
}

impl CircuitBreaker {
    pub fn new(config: BreakerConfig, clock: Arc<dyn Clock>) -> Arc<CircuitBreaker> {
        let (changes, _) = watch::channel(BreakerState::Closed);
        Arc::new(CircuitBreaker {
            inner: Mutex::new(Inner {
                state: State::Closed { failures: 0 },
                cooldown: Duration::from_millis(config.cooldown_ms),
                last_failure: String::new(),
            }),
            config,
            clock,
            changes,
        })
    }

    /// The current state, as last published.
    pub fn state(&self) -> BreakerState {
        self.changes.borrow().clone()
    }

    /// Every state change, for telling editors once per change.
    pub fn subscribe(&self) -> watch::Receiver<BreakerState> {
        self.changes.subscribe()
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // The state is a few plain fields updated atomically under the lock; a panic
        // elsewhere cannot leave it half-written, so a poisoned lock is still usable.
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn publish(&self, state: BreakerState) {
        self.changes.send_replace(state);
    }

    /// Whether [`CircuitBreaker::admit`] would let a request through now: closed,
    /// or open with its cooldown over (a probe may go), or half-open with no probe
    /// out.
    pub fn would_admit(&self) -> bool {
        let now = self.clock.now();
        match self.lock().state {
            State::Closed { .. } => true,
            State::Open { until } => now >= until,
            State::HalfOpen { probing } => !probing,
        }
    }

    /// Asks to send one request. The returned permit records the outcome; dropping
    /// it without one (a cancelled request) counts as neither success nor failure.
    pub fn admit(self: &Arc<Self>) -> Result<BreakerPermit, BreakerOpen> {
        let now = self.clock.now();
        let mut inner = self.lock();
        match inner.state {
            State::Closed { .. } => Ok(self.permit(false)),
            State::Open { until } if now < until => Err(BreakerOpen {
                retry_in: until - now,
                reason: inner.last_failure.clone(),
            }),
            State::Open { .. } | State::HalfOpen { probing: false } => {
                let was_open = matches!(inner.state, State::Open { .. });
                inner.state = State::HalfOpen { probing: true };
                drop(inner);
                if was_open {
                    tracing::info!("circuit breaker half-open: letting one probe through");
                    self.publish(BreakerState::HalfOpen);
                }
                Ok(self.permit(true))
            }
            State::HalfOpen { probing: true } => Err(BreakerOpen {
                retry_in: Duration::ZERO,
                reason: format!(
                    "a probe request is checking whether vps-infer is back (last error: {})",
                    inner.last_failure
                ),
            }),
        }
    }

    fn permit(self: &Arc<Self>, probe: bool) -> BreakerPermit {
        BreakerPermit {
            breaker: Some(self.clone()),
            probe,
        }
    }

    fn on_success(&self, probe: bool) {
        let mut inner = self.lock();
        match inner.state {
            State::Closed { .. } => inner.state = State::Closed { failures: 0 },
            State::HalfOpen { .. } if probe => {
                inner.state = State::Closed { failures: 0 };
                inner.cooldown = Duration::from_millis(self.config.cooldown_ms);
                drop(inner);
                tracing::info!("circuit breaker closed: vps-infer answers again");
                self.publish(BreakerState::Closed);
            }
            // A request admitted before the breaker opened says nothing about now.
            State::HalfOpen { .. } | State::Open { .. } => {}
        }
    }

    fn on_failure(&self, probe: bool, reason: String) {
        let now = self.clock.now();
        let mut inner = self.lock();
        inner.last_failure = reason;
        let open_for = match inner.state {
            State::Closed { failures } => {
                let failures = failures + 1;
                if failures >= self.config.failure_threshold {
                    Some(inner.cooldown)
                } else {
                    inner.state = State::Closed { failures };
                    None
                }
            }
            State::HalfOpen { .. } if probe => {
                let doubled = inner.cooldown.saturating_mul(2);
                inner.cooldown = doubled.min(Duration::from_millis(self.config.max_cooldown_ms));
                Some(inner.cooldown)
            }
            State::HalfOpen { .. } | State::Open { .. } => None,
        };
        if let Some(cooldown) = open_for {
            inner.state = State::Open {
                until: now + cooldown,
            };
            let reason = inner.last_failure.clone();
            drop(inner);
            tracing::warn!(
                cooldown_s = cooldown.as_secs_f32(),
                %reason,
                "circuit breaker open"
            );
            self.publish(BreakerState::Open { cooldown, reason });
        }
    }

    fn on_neutral(&self, probe: bool) {
        let mut inner = self.lock();
        if probe {
            if let State::HalfOpen { .. } = inner.state {
                inner.state = State::HalfOpen { probing: false };
            }
        }
    }
}

/// One admitted request. Call [`succeeded`](Self::succeeded) or
/// [`failed`](Self::failed); dropping it records nothing.
#[derive(Debug)]
pub struct BreakerPermit {
    breaker: Option<Arc<CircuitBreaker>>,
    probe: bool,
}

impl BreakerPermit {
    pub fn is_probe(&self) -> bool {
        self.probe
    }

    pub fn succeeded(mut self) {
        if let Some(breaker) = self.breaker.take() {
            breaker.on_success(self.probe);
        }
    }

    pub fn failed(mut self, reason: impl Into<String>) {
        if let Some(breaker) = self.breaker.take() {
            breaker.on_failure(self.probe, reason.into());
        }
    }
}

impl Drop for BreakerPermit {
    fn drop(&mut self) {
        if let Some(breaker) = self.breaker.take() {
            breaker.on_neutral(self.probe);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A clock that moves only when the test says so.
    #[derive(Debug)]
    struct ManualClock(Mutex<Instant>);

    impl ManualClock {
        fn advance(&self, by: Duration) {
            let mut now = self.0.lock().unwrap();
            *now += by;
        }
    }

    impl Clock for ManualClock {
        fn now(&self) -> Instant {
            *self.0.lock().unwrap()
        }
    }

    fn breaker() -> (Arc<CircuitBreaker>, Arc<ManualClock>) {
        let clock = Arc::new(ManualClock(Mutex::new(Instant::now())));
        let breaker = CircuitBreaker::new(BreakerConfig::default(), clock.clone());
        (breaker, clock)
    }

    fn fail(breaker: &Arc<CircuitBreaker>) {
        breaker.admit().unwrap().failed("connection refused");
    }

    #[test]
    fn opens_after_three_consecutive_failures() {
        let (breaker, _) = breaker();
        fail(&breaker);
        fail(&breaker);
        assert_eq!(breaker.state(), BreakerState::Closed);
        fail(&breaker);
        assert!(matches!(breaker.state(), BreakerState::Open { .. }));
        let refused = breaker.admit().unwrap_err();
        assert_eq!(refused.retry_in, Duration::from_secs(10));
        assert!(
            refused.to_string().contains("connection refused"),
            "{refused}"
        );
    }

    #[test]
    fn a_success_resets_the_failure_count() {
        let (breaker, _) = breaker();
        fail(&breaker);
        fail(&breaker);
        breaker.admit().unwrap().succeeded();
        fail(&breaker);
        fail(&breaker);
        assert_eq!(breaker.state(), BreakerState::Closed);
    }

    #[test]
    fn after_the_cooldown_one_probe_goes_through_and_success_closes() {
        let (breaker, clock) = breaker();
        for _ in 0..3 {
            fail(&breaker);
        }
        clock.advance(Duration::from_millis(9_999));
        assert!(!breaker.would_admit());
        assert!(breaker.admit().is_err());
        clock.advance(Duration::from_millis(1));
        assert!(breaker.would_admit());
        let probe = breaker.admit().unwrap();
        assert!(probe.is_probe());
        assert_eq!(breaker.state(), BreakerState::HalfOpen);
        assert!(!breaker.would_admit());
        let second = breaker.admit().unwrap_err();
        assert!(second.reason.contains("probe"), "{second}");
        probe.succeeded();
        assert_eq!(breaker.state(), BreakerState::Closed);
        assert!(!breaker.admit().unwrap().is_probe());
    }

    #[test]
    fn a_failed_probe_reopens_with_the_cooldown_doubled_up_to_five_minutes() {
        let (breaker, clock) = breaker();
        for _ in 0..3 {
            fail(&breaker);
        }
        let mut expected = Duration::from_secs(10);
        for _ in 0..8 {
            clock.advance(expected);
            breaker.admit().unwrap().failed("timeout");
            expected = (expected * 2).min(Duration::from_secs(300));
            assert_eq!(breaker.admit().unwrap_err().retry_in, expected);
        }
        assert_eq!(expected, Duration::from_secs(300));
        // Recovery resets the cooldown to its base.
        clock.advance(expected);
        breaker.admit().unwrap().succeeded();
        for _ in 0..3 {
            fail(&breaker);
        }
        assert_eq!(
            breaker.admit().unwrap_err().retry_in,
            Duration::from_secs(10)
        );
    }

    #[test]
    fn a_cancelled_probe_lets_the_next_request_probe() {
        let (breaker, clock) = breaker();
        for _ in 0..3 {
            fail(&breaker);
        }
        clock.advance(Duration::from_secs(10));
        drop(breaker.admit().unwrap());
        assert!(breaker.admit().unwrap().is_probe());
    }

    #[test]
    fn late_outcomes_of_requests_admitted_before_opening_change_nothing() {
        let (breaker, clock) = breaker();
        let early = breaker.admit().unwrap();
        for _ in 0..3 {
            fail(&breaker);
        }
        early.succeeded();
        assert!(matches!(breaker.state(), BreakerState::Open { .. }));
        clock.advance(Duration::from_secs(10));
        let probe = breaker.admit().unwrap();
        let late = CircuitBreaker::permit(&breaker, false);
        late.failed("old news");
        assert_eq!(breaker.state(), BreakerState::HalfOpen);
        probe.succeeded();
        assert_eq!(breaker.state(), BreakerState::Closed);
    }

    #[test]
    fn observers_see_each_state_change_once() {
        let (breaker, clock) = breaker();
        let mut changes = breaker.subscribe();
        for _ in 0..3 {
            fail(&breaker);
        }
        assert!(changes.has_changed().unwrap());
        assert!(matches!(
            *changes.borrow_and_update(),
            BreakerState::Open { .. }
        ));
        assert!(breaker.admit().is_err());
        assert!(!changes.has_changed().unwrap(), "refusals are not changes");
        clock.advance(Duration::from_secs(10));
        breaker.admit().unwrap().succeeded();
        assert_eq!(*changes.borrow_and_update(), BreakerState::Closed);
    }
}
