//! The way to the model: the vps-infer client ([`BackendClient`]) with its circuit
//! breaker ([`breaker`]), the generation slots every front end shares ([`limiter`]),
//! and what has been learnt about the backend's models ([`FimMemory`]). It knows
//! nothing of prompts or protocols; the completion pipeline ([`crate::pipeline`]) is
//! its one caller on the request path.

pub mod breaker;
mod client;
pub mod limiter;

use std::collections::HashSet;
use std::sync::{Arc, Mutex, PoisonError};

pub use client::{
    redact_url, BackendClient, BackendError, ExtraChunk, GenerationStats, Health, InferenceRequest,
    SseDecoder, StreamEvent, TokenStream,
};

/// A vps-infer client and what has been learnt about its models.
#[derive(Debug, Clone)]
pub struct Backend {
    pub client: BackendClient,
    pub fim: FimMemory,
}

/// Models that vps-infer said have no FIM tokens, remembered per backend so that
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fim_memory_is_per_model() {
        let memory = FimMemory::default();
        memory.remember_no_fim(Some("smollm2-135m"));
        assert!(memory.lacks_fim(Some("smollm2-135m")));
        assert!(!memory.lacks_fim(Some("qwen")));
        assert!(!memory.lacks_fim(None));
    }
}
