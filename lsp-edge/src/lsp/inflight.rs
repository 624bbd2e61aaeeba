//! The completion in flight per document, so that a newer request supersedes an
//! older one: the older is cancelled (its HTTP stream dropped, which stops the
//! decode) and answers `RequestCancelled`, and the newer inherits its generation
//! slot, so superseding never trips load shedding.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use tokio_util::sync::CancellationToken;
use tower_lsp_server::lsp_types::Uri;

use crate::backend::limiter::GenerationPermit;

type PermitSlot = Arc<Mutex<Option<GenerationPermit>>>;

#[derive(Debug)]
struct Entry {
    id: u64,
    cancel: CancellationToken,
    permit: PermitSlot,
}

#[derive(Debug, Default)]
struct Registry {
    entries: Mutex<HashMap<Uri, Entry>>,
    next_id: AtomicU64,
}

/// The per-session registry of in-flight completions.
#[derive(Debug, Clone, Default)]
pub struct InFlight(Arc<Registry>);

/// One registered completion; unregisters itself when dropped.
#[derive(Debug)]
pub struct Ticket {
    registry: Arc<Registry>,
    uri: Uri,
    id: u64,
    cancel: CancellationToken,
    permit: PermitSlot,
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // Each critical section is a single insert/remove/take: never half done.
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

impl InFlight {
    /// Registers a completion for `uri`, cancelling the one already there. Returns
    /// the ticket and the superseded request's generation slot, if it held one.
    pub fn begin(&self, uri: &Uri) -> (Ticket, Option<GenerationPermit>) {
        let id = self.0.next_id.fetch_add(1, Ordering::Relaxed);
        let cancel = CancellationToken::new();
        let permit: PermitSlot = Arc::default();
        let entry = Entry {
            id,
            cancel: cancel.clone(),
            permit: permit.clone(),
        };
        let previous = lock(&self.0.entries).insert(uri.clone(), entry);
        let inherited = previous.and_then(|old| {
            old.cancel.cancel();
            lock(&old.permit).take()
        });
        let ticket = Ticket {
            registry: self.0.clone(),
            uri: uri.clone(),
            id,
            cancel,
            permit,
        };
        (ticket, inherited)
    }

    /// Cancels every completion (shutdown).
    pub fn cancel_all(&self) {
        for entry in lock(&self.0.entries).values() {
            entry.cancel.cancel();
        }
    }

    pub fn len(&self) -> usize {
        lock(&self.0.entries).len()
    }

    #[cfg(test)]
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl Ticket {
    /// Keeps the generation slot where a superseding request can take it over.
    pub fn hold(&self, permit: GenerationPermit) {
        *lock(&self.permit) = Some(permit);
    }

    /// Resolves when a newer request for the same document supersedes this one.
    pub fn superseded(&self) -> tokio_util::sync::WaitForCancellationFuture<'_> {
        self.cancel.cancelled()
    }

    #[cfg(test)]
    pub fn is_superseded(&self) -> bool {
        self.cancel.is_cancelled()
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        let mut entries = lock(&self.registry.entries);
        if entries
            .get(&self.uri)
            .is_some_and(|entry| entry.id == self.id)
        {
            entries.remove(&self.uri);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::limiter::GenerationLimiter;

    fn uri(name: &str) -> Uri {
        format!("file:///{name}").parse().unwrap()
    }

    #[test]
    fn a_newer_request_cancels_the_older_and_inherits_its_slot() {
        let limiter = GenerationLimiter::new(1);
        let inflight = InFlight::default();
        let (older, inherited) = inflight.begin(&uri("a.py"));
        assert!(inherited.is_none());
        older.hold(limiter.try_acquire().unwrap());

        let (newer, inherited) = inflight.begin(&uri("a.py"));
        assert!(older.is_superseded());
        assert!(!newer.is_superseded());
        let inherited = inherited.expect("the slot moves to the newer request");
        assert_eq!(limiter.in_flight(), 1);
        newer.hold(inherited);

        // The older request ends: the registry still tracks the newer one.
        drop(older);
        assert_eq!(inflight.len(), 1);
        assert_eq!(limiter.in_flight(), 1);
        drop(newer);
        assert!(inflight.is_empty());
        assert_eq!(limiter.in_flight(), 0);
    }

    #[test]
    fn documents_do_not_supersede_each_other() {
        let inflight = InFlight::default();
        let (a, _) = inflight.begin(&uri("a.py"));
        let (b, _) = inflight.begin(&uri("b.py"));
        assert!(!a.is_superseded());
        assert!(!b.is_superseded());
        inflight.cancel_all();
        assert!(a.is_superseded() && b.is_superseded());
    }
}
