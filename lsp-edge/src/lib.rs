//! lsp-edge: the language server editors reach over TCP (or stdio). It keeps the
//! open documents, asks the context engine what the model should see, streams the
//! completion from vps-infer and trims it. It never loads a model.
//!
//! Module map: [`config`] (one typed configuration); [`backend`] (the vps-infer
//! client), [`breaker`] (its circuit breaker), [`limiter`] (generations in flight),
//! [`completion`] (one generation, protocol-free) and [`trim`] (cutting an answer to
//! size) know nothing of LSP and serve any front end; [`lsp`] is the language
//! server; [`connect`] the stdio-to-TCP bridge; [`eval`] the quality evaluation; [`edge`] the state they share.

pub mod backend;
pub mod breaker;
pub mod cli;
pub mod complete_cmd;
pub mod completion;
pub mod config;
pub mod connect;
pub mod context_cmd;
pub mod edge;
pub mod eval;
pub mod http;
pub mod limiter;
pub mod lsp;
pub mod refactor;
pub mod trim;
