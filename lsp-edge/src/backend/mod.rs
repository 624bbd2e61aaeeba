//! The way to the models: a client per backend ([`BackendClient`], speaking each
//! kind's API through [`wire`]) with its own circuit breaker ([`breaker`]), the
//! routing over them ([`Backends`]), the generation slots every front end shares
//! ([`limiter`]), and what has been learnt about each backend's models
//! ([`FimMemory`]). It knows nothing of prompts or protocols; the completion
//! pipeline ([`crate::pipeline`]) is its one caller on the request path.

pub mod breaker;
mod client;
pub mod limiter;
pub mod wire;

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::{Arc, Mutex, PoisonError};

pub use client::{
    redact_url, BackendClient, BackendError, DefaultModel, ExtraChunk, GenerationStats, Health,
    InferenceRequest, SseDecoder, StreamEvent, TokenStream, Usage,
};

use self::breaker::{CircuitBreaker, Clock};
use crate::config::{BackendConfig, BackendKind, BreakerConfig};

/// One backend: its client and what has been learnt about its models.
#[derive(Debug, Clone)]
pub struct Backend {
    pub client: BackendClient,
    pub fim: FimMemory,
}

impl Backend {
    pub fn new(
        config: &BackendConfig,
        breaker: BreakerConfig,
        clock: Arc<dyn Clock>,
    ) -> Result<Backend, BackendError> {
        let client = BackendClient::new(config, CircuitBreaker::new(breaker, clock))?;
        if client.kind() == BackendKind::Openai && client.config().fim_tokens.is_none() {
            tracing::warn!(
                backend = client.name(),
                model = ?config.model,
                "no FIM tokens are known for this model (set fim_tokens): completions \
                 will be plain continuations"
            );
        }
        Ok(Backend {
            client,
            fim: FimMemory::default(),
        })
    }

    /// Whether `model` is known to have no fill-in-the-middle form here: the
    /// backend said so, or (an `openai` backend) its FIM tokens are unknown.
    pub fn lacks_fim(&self, model: Option<&str>) -> bool {
        let config = self.client.config();
        self.fim.lacks_fim(model)
            || config.kind == BackendKind::Openai && config.fim_tokens.is_none()
    }

    /// Whether its breaker refuses requests now (once the cooldown is over it lets
    /// a probe through, and the backend is a candidate again).
    fn refusing(&self) -> bool {
        !self.client.breaker().would_admit()
    }
}

/// Models that a backend said have no FIM tokens, remembered per backend so that
/// only the first request pays for the refusal.
#[derive(Debug, Clone, Default)]
pub struct FimMemory(Arc<Mutex<HashSet<String>>>);

impl FimMemory {
    fn key(model: Option<&str>) -> String {
        model.unwrap_or("").to_owned()
    }

    pub fn lacks_fim(&self, model: Option<&str>) -> bool {
        self.0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .contains(&Self::key(model))
    }

    pub fn remember_no_fim(&self, model: Option<&str>) {
        self.0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(Self::key(model));
    }
}

/// The backends generations go to, and which one each document is at home on.
///
/// A document stays on its home backend while that one is healthy: the backend's
/// KV cache holds the document's prompt, and a keystroke costs only what changed
/// there. A new document, or one whose home failed, goes to the least busy backend
/// for its weight. One backend is the common case and costs nothing extra.
#[derive(Debug, Clone)]
pub struct Backends(Arc<Pool>);

#[derive(Debug)]
struct Pool {
    members: Vec<Backend>,
    homes: Mutex<Homes>,
}

/// Documents' homes, the oldest forgotten first past [`Homes::MAX`].
#[derive(Debug, Default)]
struct Homes {
    by_document: HashMap<String, usize>,
    order: VecDeque<String>,
}

impl Homes {
    const MAX: usize = 4096;

    fn set(&mut self, document: &str, member: usize) -> Option<usize> {
        let previous = self.by_document.insert(document.to_owned(), member);
        if previous.is_none() {
            self.order.push_back(document.to_owned());
            while self.order.len() > Homes::MAX {
                if let Some(oldest) = self.order.pop_front() {
                    self.by_document.remove(&oldest);
                }
            }
        }
        previous
    }

    /// Documents at home on each of `members` members.
    fn counts(&self, members: usize) -> Vec<usize> {
        let mut counts = vec![0; members];
        for &member in self.by_document.values() {
            if let Some(count) = counts.get_mut(member) {
                *count += 1;
            }
        }
        counts
    }
}

impl Backends {
    /// One backend per entry of `configs` (at least one), each with its own breaker.
    pub fn new(
        configs: &[BackendConfig],
        breaker: &BreakerConfig,
        clock: &Arc<dyn Clock>,
    ) -> Result<Backends, BackendError> {
        let members = configs
            .iter()
            .map(|config| Backend::new(config, breaker.clone(), clock.clone()))
            .collect::<Result<Vec<_>, _>>()?;
        if members.is_empty() {
            return Err(BackendError::Protocol("no backend is configured".into()));
        }
        Ok(Backends(Arc::new(Pool {
            members,
            homes: Mutex::default(),
        })))
    }

    pub fn members(&self) -> &[Backend] {
        &self.0.members
    }

    /// The first backend: the only one, in the common case.
    pub fn first(&self) -> &Backend {
        &self.0.members[0]
    }

    /// The model a request naming none is answered with, once known
    /// ([`BackendClient::learn_default_model`]): its document's home's, else the
    /// first backend's. Cheaper than [`Backends::candidates`], which ranks them all:
    /// backends behind one lsp-edge serve the same model as a rule.
    pub fn default_model(&self, document: Option<&str>) -> Option<String> {
        let members = &self.0.members;
        let home = match (document, members.len()) {
            (Some(document), 2..) => self.homes().by_document.get(document).copied(),
            _ => None,
        };
        let backend = home.and_then(|m| members.get(m)).unwrap_or(self.first());
        backend.client.default_model()
    }

    /// Starts learning each backend's default model in the background.
    pub fn learn_default_models(&self) {
        for backend in self.members() {
            let client = backend.client.clone();
            tokio::spawn(async move { client.learn_default_model().await });
        }
    }

    fn homes(&self) -> std::sync::MutexGuard<'_, Homes> {
        // Two maps updated together under the lock; a panic elsewhere cannot leave
        // them half-written in a way that matters (a home is a hint).
        self.0.homes.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Documents at home on each backend, in [`Backends::members`]' order.
    pub fn documents(&self) -> Vec<usize> {
        self.homes().counts(self.0.members.len())
    }

    /// The backends to try for `document`, in order: its home while that one
    /// takes requests, then the rest from the least busy for its weight (busy:
    /// generations in flight, then documents at home), backends whose breaker
    /// refuses or that are at their limit last.
    pub fn candidates(&self, document: Option<&str>) -> Vec<(usize, Backend)> {
        let members = &self.0.members;
        if members.len() == 1 {
            return vec![(0, members[0].clone())];
        }
        let homes = self.homes();
        let documents = homes.counts(members.len());
        let home = document
            .and_then(|document| homes.by_document.get(document).copied())
            .filter(|&m| !members[m].refusing());
        drop(homes);
        // Each member's load once, then the order: refusing last, then full, then
        // the least busy for its weight.
        let mut others: Vec<(usize, (bool, bool, f64, f64))> = (0..members.len())
            .filter(|&m| Some(m) != home)
            .map(|m| {
                let backend = &members[m];
                let config = backend.client.config();
                let in_flight = backend.client.usage().in_flight();
                let weight = f64::from(config.weight.max(1));
                let load = (
                    backend.refusing(),
                    in_flight >= config.max_in_flight,
                    in_flight as f64 / weight,
                    documents[m] as f64 / weight,
                );
                (m, load)
            })
            .collect();
        others.sort_by(|(a, a_load), (b, b_load)| {
            a_load
                .partial_cmp(b_load)
                .unwrap_or(std::cmp::Ordering::Equal)
                .then(a.cmp(b))
        });
        home.into_iter()
            .chain(others.into_iter().map(|(m, _)| m))
            .map(|m| (m, members[m].clone()))
            .collect()
    }

    /// Records that `document` was served by member `member`: its home from now on.
    pub fn settle(&self, document: Option<&str>, member: usize) {
        let Some(document) = document else { return };
        if self.0.members.len() == 1 {
            return;
        }
        let previous = self.homes().set(document, member);
        if let Some(previous) = previous.filter(|&previous| previous != member) {
            tracing::info!(
                document = %document.chars().take(200).collect::<String>(),
                from = self.0.members[previous].client.name(),
                to = self.0.members[member].client.name(),
                "document moved to another backend"
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pool(weights: &[u32]) -> Backends {
        let configs: Vec<BackendConfig> = weights
            .iter()
            .enumerate()
            .map(|(index, &weight)| BackendConfig {
                name: Some(format!("b{index}")),
                url: format!("http://127.0.0.1:{}", 9 + index),
                weight,
                ..BackendConfig::default()
            })
            .collect();
        let breaker = BreakerConfig {
            failure_threshold: 1,
            ..BreakerConfig::default()
        };
        let clock: Arc<dyn Clock> = Arc::new(breaker::SystemClock);
        Backends::new(&configs, &breaker, &clock).unwrap()
    }

    /// The candidates' names for `document`, in order.
    fn order(backends: &Backends, document: &str) -> Vec<String> {
        backends
            .candidates(Some(document))
            .into_iter()
            .map(|(_, backend)| backend.client.name().to_owned())
            .collect()
    }

    #[test]
    fn the_default_model_is_known_at_once_only_where_the_backend_is_always_asked_for_it() {
        let clock: Arc<dyn Clock> = Arc::new(breaker::SystemClock);
        let configs: Vec<BackendConfig> = [BackendKind::VpsInfer, BackendKind::Ollama]
            .into_iter()
            .map(|kind| BackendConfig {
                kind,
                model: Some("m".into()),
                ..BackendConfig::default()
            })
            .collect();
        let backends = Backends::new(&configs, &BreakerConfig::default(), &clock).unwrap();
        let known: Vec<Option<String>> = (backends.members().iter())
            .map(|backend| backend.client.default_model())
            .collect();
        // A vps-infer is sent the request's model, not `model`: it says its own.
        assert_eq!(known, [None, Some("m".to_owned())]);
        backends.settle(Some("doc"), 1);
        assert_eq!(backends.default_model(Some("doc")), Some("m".into()));
        assert_eq!(backends.default_model(Some("new")), None);
    }

    #[test]
    fn documents_stay_home_and_new_ones_spread_by_weight() {
        let backends = pool(&[1, 1, 2]);
        // Ties go to the first; each settled document makes its backend busier.
        assert_eq!(order(&backends, "a.py"), ["b0", "b1", "b2"]);
        backends.settle(Some("a.py"), 0);
        assert_eq!(order(&backends, "b.py")[0], "b1");
        backends.settle(Some("b.py"), 1);
        assert_eq!(order(&backends, "c.py")[0], "b2");
        backends.settle(Some("c.py"), 2);
        // b2 has twice the weight: one document there weighs half as much.
        assert_eq!(order(&backends, "d.py")[0], "b2");
        backends.settle(Some("d.py"), 2);
        assert_eq!(backends.documents(), [1, 1, 2]);
        // A document's home comes first, however busy it is.
        assert_eq!(order(&backends, "c.py"), ["b2", "b0", "b1"]);
    }

    #[test]
    fn a_home_whose_breaker_opened_is_left_and_tried_last() {
        let backends = pool(&[1, 1]);
        backends.settle(Some("a.py"), 0);
        let home = &backends.members()[0];
        home.client
            .breaker()
            .admit()
            .unwrap()
            .failed("connection refused");
        assert!(home.refusing());
        assert_eq!(order(&backends, "a.py"), ["b1", "b0"]);
        backends.settle(Some("a.py"), 1);
        assert_eq!(backends.documents(), [0, 1]);
        assert_eq!(order(&backends, "new.py"), ["b1", "b0"]);
    }

    #[test]
    fn homes_are_forgotten_oldest_first() {
        let mut homes = Homes::default();
        for index in 0..=Homes::MAX {
            homes.set(&format!("{index}.py"), index % 2);
        }
        assert_eq!(homes.by_document.len(), Homes::MAX);
        assert!(!homes.by_document.contains_key("0.py"));
        assert_eq!(homes.set("1.py", 0), Some(1));
    }

    #[test]
    fn fim_memory_is_per_model() {
        let memory = FimMemory::default();
        memory.remember_no_fim(Some("smollm2-135m"));
        assert!(memory.lacks_fim(Some("smollm2-135m")));
        assert!(!memory.lacks_fim(Some("qwen")));
        assert!(!memory.lacks_fim(None));
    }
}
