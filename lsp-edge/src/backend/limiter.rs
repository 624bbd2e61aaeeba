//! The shared limit on generations in flight across all sessions. It sheds load
//! instead of queueing: a completion that waits behind others is stale by the time it
//! would run, so one more than the limit is refused at once.

use std::sync::Arc;

use tokio::sync::{OwnedSemaphorePermit, Semaphore, TryAcquireError};

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{max} generations are already in flight; this request was shed (try again shortly)")]
pub struct Overloaded {
    pub max: usize,
}

#[derive(Debug, Clone)]
pub struct GenerationLimiter {
    slots: Arc<Semaphore>,
    max: usize,
}

/// One generation's slot; freed when dropped.
#[derive(Debug)]
pub struct GenerationPermit {
    _permit: OwnedSemaphorePermit,
}

impl GenerationLimiter {
    pub fn new(max: usize) -> GenerationLimiter {
        GenerationLimiter {
            slots: Arc::new(Semaphore::new(max)),
            max,
        }
    }

    pub fn max(&self) -> usize {
        self.max
    }

    pub fn in_flight(&self) -> usize {
        self.max - self.slots.available_permits()
    }

    /// Takes a slot now, or refuses.
    pub fn try_acquire(&self) -> Result<GenerationPermit, Overloaded> {
        match self.slots.clone().try_acquire_owned() {
            Ok(permit) => Ok(GenerationPermit { _permit: permit }),
            Err(TryAcquireError::NoPermits | TryAcquireError::Closed) => {
                Err(Overloaded { max: self.max })
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_more_than_the_limit_is_refused_and_a_freed_slot_is_reused() {
        let limiter = GenerationLimiter::new(2);
        let first = limiter.try_acquire().unwrap();
        let _second = limiter.try_acquire().unwrap();
        assert_eq!(limiter.in_flight(), 2);
        let refused = limiter.try_acquire().unwrap_err();
        assert_eq!(refused, Overloaded { max: 2 });
        assert!(refused.to_string().contains("2 generations"));
        drop(first);
        assert_eq!(limiter.in_flight(), 1);
        limiter.try_acquire().unwrap();
    }

    #[test]
    fn clones_share_the_slots() {
        let limiter = GenerationLimiter::new(1);
        let other = limiter.clone();
        let _held = limiter.try_acquire().unwrap();
        assert!(other.try_acquire().is_err());
    }
}
