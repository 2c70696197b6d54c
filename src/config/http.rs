//! `[http]`: the address, the customer endpoints' token, and the server's limits.

use std::net::SocketAddr;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::secret::Secret;
use super::SettingError;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HttpSettings {
    /// 127.0.0.1:9898 keeps the API to the host (or pod); 0.0.0.0 serves every interface.
    pub addr: String,
    /// When set, `/v1/customers/{id}` and `/v1/summary` require `Authorization: Bearer
    /// <token>`: they show per-customer data. Probes and scraping stay open.
    pub customer_token: Option<Secret>,
    /// A file holding the token (a mounted Kubernetes Secret), read at start; surrounding
    /// whitespace, such as a final newline, is ignored. Instead of `customer_token`.
    pub customer_token_file: Option<PathBuf>,
    /// Connections served at once: each holds a file descriptor, and without a bound idle
    /// clients could take every one that snapshots and Redis need. Must leave room under
    /// the open-file limit (see [`crate::http::serve::descriptor_problem`]).
    pub max_connections: u32,
    /// A request's head must be complete this long after its first byte (after the
    /// connection opened, for its first request): slow or silent clients free their place.
    pub header_timeout_ms: u64,
    /// How long a kept-alive connection may wait for its next request.
    pub idle_timeout_ms: u64,
    /// From a request's complete head until its response is handed over whole: a stuck
    /// handler or a client that stops reading gives its place back.
    pub request_timeout_ms: u64,
}

impl Default for HttpSettings {
    fn default() -> Self {
        Self {
            addr: "0.0.0.0:9898".into(),
            customer_token: None,
            customer_token_file: None,
            max_connections: 256,
            header_timeout_ms: 10_000,
            idle_timeout_ms: 60_000,
            request_timeout_ms: 30_000,
        }
    }
}

impl HttpSettings {
    /// The token the customer endpoints require, if any, from `customer_token` or read from
    /// `customer_token_file`. Errors name the key and never show the token.
    pub fn customer_token(&self) -> Result<Option<Secret>, SettingError> {
        let (key, token) = match (&self.customer_token, &self.customer_token_file) {
            (None, None) => return Ok(None),
            (Some(_), Some(_)) => {
                return Err(SettingError(
                    "http.customer_token and http.customer_token_file are both set: set one".into(),
                ))
            }
            (Some(token), None) => ("http.customer_token", token.expose().to_string()),
            (None, Some(path)) => {
                let text = std::fs::read_to_string(path).map_err(|e| {
                    SettingError(format!(
                        "http.customer_token_file {} cannot be read: {e}",
                        path.display()
                    ))
                })?;
                ("http.customer_token_file", text.trim().to_string())
            }
        };
        if token.is_empty() {
            return Err(SettingError(format!(
                "{key} gives an empty token; unset it to serve the customer endpoints without one"
            )));
        }
        // RFC 6750: a bearer token is visible ASCII; anything else cannot be sent in a header.
        if !token.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(SettingError(format!(
                "{key} must be visible ASCII characters without spaces (for example from `openssl rand -hex 32`)"
            )));
        }
        Ok(Some(Secret::new(token)))
    }
}

impl HttpSettings {
    /// Problems with these settings, by key. `checked_token`: whether to read and check the
    /// token (and its file).
    pub(super) fn problems(&self, checked_token: bool) -> Vec<String> {
        let mut p = Vec::new();
        if checked_token {
            if let Err(e) = self.customer_token() {
                p.push(e.0);
            }
        }
        for (key, v) in [
            ("http.header_timeout_ms", self.header_timeout_ms),
            ("http.idle_timeout_ms", self.idle_timeout_ms),
            ("http.request_timeout_ms", self.request_timeout_ms),
            ("http.max_connections", u64::from(self.max_connections)),
        ] {
            if v == 0 {
                p.push(format!("{key} must be at least 1"));
            }
        }
        if self.max_connections > 0 {
            p.extend(crate::http::serve::descriptor_problem(self.max_connections));
        }
        if self.addr.parse::<SocketAddr>().is_err() {
            p.push(format!(
                "http.addr {:?} is not an address such as 0.0.0.0:9898",
                self.addr
            ));
        }
        p
    }
}
