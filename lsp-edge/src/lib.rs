//! lsp-edge: the language server editors reach over TCP (or stdio). It keeps the
//! open documents, asks the context engine what the model should see, streams the
//! completion from vps-infer and trims it. It never loads a model.
//!
//! The folders follow the data: front ends ([`lsp`], the language server; [`http`],
//! the endpoint for scripts; [`cli`], the command line) only translate their
//! protocol into calls to the completion [`pipeline`] (context → request → token
//! stream → trimming, and refactors), which reaches vps-infer through [`backend`]
//! (the client, its circuit breaker and the generation limiter). [`config`] is the
//! one typed configuration and [`edge`] the state every front end shares. Core
//! modules never import a front end.

pub mod backend;
pub mod cli;
pub mod config;
pub mod edge;
pub mod http;
pub mod lsp;
pub mod pipeline;

/// What the unit tests of several modules share.
#[cfg(test)]
mod test_support {
    use proptest::test_runner::Config;

    /// A property's configuration: `default` cases for CI, `PROPTEST_CASES` for a
    /// longer run, and no failure files written into the source tree.
    pub fn proptest_config(default: u32) -> Config {
        let cases = std::env::var("PROPTEST_CASES")
            .ok()
            .and_then(|cases| cases.parse().ok())
            .unwrap_or(default);
        Config {
            cases,
            failure_persistence: None,
            ..Config::default()
        }
    }
}
