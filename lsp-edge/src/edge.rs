//! The state every session and the HTTP endpoint share: the validated
//! configuration, the context engine, the backends with their breakers and routing,
//! and the generation limiter.

use std::sync::Arc;

use cerebrum_context::{ContextEngine, ContextError};

use crate::backend::breaker::{Clock, SystemClock};
use crate::backend::limiter::GenerationLimiter;
use crate::backend::{BackendError, Backends};
use crate::config::Config;

/// Why the shared state could not be built. The cause is in the message, not also a
/// `source`, so a chain of causes (`lsp-edge serve`'s error) says it once.
#[derive(Debug, thiserror::Error)]
pub enum EdgeError {
    #[error("context engine: {0}")]
    Context(ContextError),
    #[error("backend client: {0}")]
    Backend(BackendError),
}

impl From<ContextError> for EdgeError {
    fn from(err: ContextError) -> Self {
        EdgeError::Context(err)
    }
}

impl From<BackendError> for EdgeError {
    fn from(err: BackendError) -> Self {
        EdgeError::Backend(err)
    }
}

#[derive(Debug)]
pub struct Edge {
    pub config: Config,
    pub engine: Arc<ContextEngine>,
    pub backends: Backends,
    pub limiter: GenerationLimiter,
    clock: Arc<dyn Clock>,
}

impl Edge {
    pub fn new(config: Config) -> Result<Arc<Edge>, EdgeError> {
        Edge::with_clock(config, Arc::new(SystemClock))
    }

    /// As [`Edge::new`], with the breakers' clock given (tests).
    pub fn with_clock(config: Config, clock: Arc<dyn Clock>) -> Result<Arc<Edge>, EdgeError> {
        let engine = Arc::new(ContextEngine::new(config.context.clone())?);
        let limiter = GenerationLimiter::new(config.max_in_flight());
        let backends = Backends::new(&config.backend_list(), &config.breaker, &clock)?;
        let mut edge = Edge {
            backends,
            config,
            engine,
            limiter,
            clock,
        };
        edge.config.context = edge.engine.config().clone();
        Ok(Arc::new(edge))
    }

    /// The backends for a session's settings: the shared ones, or (when the
    /// session chose another backend) a client of its own with its own breaker.
    pub fn backends_for(&self, config: &Config) -> Result<Backends, BackendError> {
        let list = config.backend_list();
        if list == self.config.backend_list() {
            return Ok(self.backends.clone());
        }
        Backends::new(&list, &self.config.breaker, &self.clock)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_broken_query_is_named_once_in_the_chain_of_causes() {
        let dir = std::env::temp_dir().join(format!("cerebrum-edge-{}", std::process::id()));
        std::fs::create_dir_all(dir.join("python")).unwrap();
        std::fs::write(dir.join("python/chunks.scm"), "(((").unwrap();
        let mut config = Config::default();
        config.context.queries_dir = Some(dir.clone());
        let err = Edge::new(config).unwrap_err();
        std::fs::remove_dir_all(dir).unwrap();
        let message = err.to_string();
        assert!(message.starts_with("context engine: query "), "{message}");
        assert!(message.contains("does not compile"), "{message}");
        assert!(std::error::Error::source(&err).is_none());
    }
}
