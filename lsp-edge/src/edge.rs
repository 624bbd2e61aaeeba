//! The state every session (and, later, the HTTP endpoint) shares: the validated
//! configuration, the context engine, the vps-infer client with its breaker, what is
//! known about models without FIM tokens, and the generation limiter.

use std::sync::Arc;

use cerebrum_context::{ContextEngine, ContextError};

use crate::backend::breaker::{CircuitBreaker, Clock, SystemClock};
use crate::backend::limiter::GenerationLimiter;
use crate::backend::{Backend, BackendClient, BackendError, FimMemory};
use crate::config::{BackendConfig, Config};

#[derive(Debug, thiserror::Error)]
pub enum EdgeError {
    #[error("context engine: {0}")]
    Context(#[from] ContextError),
    #[error("backend client: {0}")]
    Backend(#[from] BackendError),
}

#[derive(Debug)]
pub struct Edge {
    pub config: Config,
    pub engine: Arc<ContextEngine>,
    pub backend: Backend,
    pub limiter: GenerationLimiter,
    clock: Arc<dyn Clock>,
}

impl Edge {
    pub fn new(config: Config) -> Result<Arc<Edge>, EdgeError> {
        Edge::with_clock(config, Arc::new(SystemClock))
    }

    /// As [`Edge::new`], with the breaker's clock given (tests).
    pub fn with_clock(config: Config, clock: Arc<dyn Clock>) -> Result<Arc<Edge>, EdgeError> {
        let engine = Arc::new(ContextEngine::new(config.context.clone())?);
        let limiter = GenerationLimiter::new(config.limits.max_in_flight);
        let mut edge = Edge {
            backend: Backend {
                client: BackendClient::new(
                    &config.backend,
                    CircuitBreaker::new(config.breaker.clone(), clock.clone()),
                )?,
                fim: FimMemory::default(),
            },
            config,
            engine,
            limiter,
            clock,
        };
        edge.config.context = edge.engine.config().clone();
        Ok(Arc::new(edge))
    }

    /// The backend for a session's settings: the shared one, or (when the session
    /// chose another vps-infer) a client of its own with its own breaker.
    pub fn backend_for(&self, config: &BackendConfig) -> Result<Backend, BackendError> {
        let shared = &self.config.backend;
        let same = config.url == shared.url
            && config.api_key == shared.api_key
            && config.connect_timeout_ms == shared.connect_timeout_ms
            && config.first_token_timeout_ms == shared.first_token_timeout_ms
            && config.total_timeout_ms == shared.total_timeout_ms
            && config.load_probe_after_ms == shared.load_probe_after_ms;
        if same {
            return Ok(self.backend.clone());
        }
        Ok(Backend {
            client: BackendClient::new(
                config,
                CircuitBreaker::new(self.config.breaker.clone(), self.clock.clone()),
            )?,
            fim: FimMemory::default(),
        })
    }
}
