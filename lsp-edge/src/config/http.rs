//! The `[http]` section of lsp-edge's configuration: where the HTTP endpoint for
//! scripts listens, its optional bearer token and the answer cache's size.

use std::net::SocketAddr;

use serde::{Deserialize, Serialize};

use super::{ConfigError, Secret};

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct HttpConfig {
    /// Where `serve` listens for scripts over HTTP.
    pub listen: SocketAddr,
    /// Bearer token the endpoint requires (`Authorization: Bearer ...`); required
    /// off loopback.
    pub token: Option<Secret>,
    /// Memory for cached temperature-0 answers, keys included; 0 turns the cache off.
    pub cache_max_bytes: usize,
    /// Most requests in one `/v1/complete/batch` call.
    pub max_batch: usize,
    /// Connections open at once; more wait in the listen backlog.
    pub max_connections: usize,
}

impl Default for HttpConfig {
    fn default() -> Self {
        HttpConfig {
            listen: SocketAddr::from(([127, 0, 0, 1], 7000)),
            token: None,
            cache_max_bytes: 16 * 1024 * 1024,
            max_batch: 32,
            max_connections: 128,
        }
    }
}

impl HttpConfig {
    /// `CEREBRUM_HTTP_LISTEN` and `CEREBRUM_HTTP_TOKEN`; `get` answers `None` for an
    /// unset or empty variable.
    pub fn apply_env(&mut self, get: impl Fn(&str) -> Option<String>) -> Result<(), ConfigError> {
        if let Some(listen) = get("CEREBRUM_HTTP_LISTEN") {
            self.listen = listen.parse().map_err(|err| ConfigError::Invalid {
                field: "CEREBRUM_HTTP_LISTEN".into(),
                message: format!("{listen:?}: {err}"),
            })?;
        }
        if let Some(token) = get("CEREBRUM_HTTP_TOKEN") {
            self.token = Some(Secret::new(token));
        }
        if let Some(max) = get("CEREBRUM_HTTP_MAX_CONNECTIONS") {
            self.max_connections = max.parse().map_err(|err| ConfigError::Invalid {
                field: "CEREBRUM_HTTP_MAX_CONNECTIONS".into(),
                message: format!("{max:?}: {err}"),
            })?;
        }
        Ok(())
    }

    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.max_connections == 0 {
            return Err(ConfigError::Invalid {
                field: "http.max_connections".into(),
                message: "must be at least 1".into(),
            });
        }
        if self.max_batch == 0 {
            return Err(ConfigError::Invalid {
                field: "http.max_batch".into(),
                message: "must be at least 1".into(),
            });
        }
        if let Some(token) = &self.token {
            if token.expose().trim().is_empty() {
                return Err(ConfigError::Invalid {
                    field: "http.token".into(),
                    message: "must not be empty".into(),
                });
            }
        }
        Ok(())
    }

    /// The endpoint off loopback must require a token: it spends the backend's time
    /// and key on behalf of whoever reaches it.
    pub fn validate_listener(&self) -> Result<(), ConfigError> {
        if !self.listen.ip().is_loopback() && self.token.is_none() {
            return Err(ConfigError::Invalid {
                field: "http.token".into(),
                message: format!(
                    "serving HTTP on the non-loopback address {} requires a token \
                     (set CEREBRUM_HTTP_TOKEN or `token` in the [http] section)",
                    self.listen
                ),
            });
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn http_defaults_listen_on_loopback_port_7000() {
        let config = HttpConfig::default();
        assert_eq!(config.listen.to_string(), "127.0.0.1:7000");
        config.validate().unwrap();
        config.validate_listener().unwrap();
    }

    #[test]
    fn http_off_loopback_requires_a_token() {
        let mut config = HttpConfig {
            listen: "0.0.0.0:7000".parse().unwrap(),
            ..HttpConfig::default()
        };
        let err = config.validate_listener().unwrap_err().to_string();
        assert!(err.starts_with("http.token"), "{err}");
        config
            .apply_env(|name| (name == "CEREBRUM_HTTP_TOKEN").then(|| "t0k".to_owned()))
            .unwrap();
        config.validate_listener().unwrap();
    }

    #[test]
    fn http_bad_env_names_the_variable() {
        let mut config = HttpConfig::default();
        let err = config
            .apply_env(|name| (name == "CEREBRUM_HTTP_LISTEN").then(|| "nowhere".to_owned()))
            .unwrap_err()
            .to_string();
        assert!(err.starts_with("CEREBRUM_HTTP_LISTEN"), "{err}");
    }
}
