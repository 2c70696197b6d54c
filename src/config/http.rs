//! `[http]`: the address, the customer endpoints' token, and the server's limits.

use std::net::SocketAddr;
use std::num::NonZeroU32;
use std::path::PathBuf;

use serde::Serialize;

use super::read::Fields;
use super::secret::Secret;
use super::units::Interval;
use super::{set_but_empty, Problem, Section};

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct HttpSettings {
    /// 127.0.0.1:9898 keeps the API to the host (or pod); 0.0.0.0 serves every interface.
    pub addr: SocketAddr,
    /// When set, `/v1/customers/{id}` and `/v1/summary` require `Authorization: Bearer
    /// <token>`: they show per-customer data. Probes and scraping stay open.
    pub customer_token: Option<Secret>,
    /// A file holding the token (a mounted Kubernetes Secret), read at start; surrounding
    /// whitespace, such as a final newline, is ignored. Instead of `customer_token`.
    pub customer_token_file: Option<PathBuf>,
    /// Connections served at once: each holds a file descriptor, and without a bound idle
    /// clients could take every one that snapshots and Redis need. Must leave room under
    /// the open-file limit (see [`crate::http::serve::descriptor_problem`]).
    pub max_connections: NonZeroU32,
    /// A request's head must be complete this long after its first byte (after the
    /// connection opened, for its first request): slow or silent clients free their place.
    #[serde(rename = "header_timeout_ms")]
    pub header_timeout: Interval,
    /// How long a kept-alive connection may wait for its next request.
    #[serde(rename = "idle_timeout_ms")]
    pub idle_timeout: Interval,
    /// From a request's complete head until its response is handed over whole: a stuck
    /// handler or a client that stops reading gives its place back.
    #[serde(rename = "request_timeout_ms")]
    pub request_timeout: Interval,
}

impl Default for HttpSettings {
    fn default() -> Self {
        Self {
            addr: SocketAddr::from(([0, 0, 0, 0], 9898)),
            customer_token: None,
            customer_token_file: None,
            max_connections: NonZeroU32::new(256).expect("not zero"),
            header_timeout: Interval::from_millis(10_000),
            idle_timeout: Interval::from_millis(60_000),
            request_timeout: Interval::from_millis(30_000),
        }
    }
}

impl HttpSettings {
    /// The customer endpoints' token as `key` gives it (from `customer_token`, or read
    /// from `customer_token_file`), checked to be one a client can send. Errors name the key
    /// and never show the token.
    pub(crate) fn bearer_token(key: &str, token: &str) -> Result<Secret, Problem> {
        if token.is_empty() {
            return Err(Problem::new(
                key,
                "gives an empty token; unset it to serve the customer endpoints without one",
            ));
        }
        // RFC 6750: a bearer token is visible ASCII; anything else cannot be sent in a header.
        if !token.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(Problem::new(
                key,
                "must be visible ASCII characters without spaces (for example from `openssl rand -hex 32`)",
            ));
        }
        Ok(Secret::new(token))
    }
}

/// Settings whose empty value would quietly open the customer endpoints.
const REFUSED_EMPTY: [&str; 2] = ["http.customer_token", "http.customer_token_file"];

impl Section for HttpSettings {
    fn from_fields(f: &mut Fields<'_>) -> Self {
        let d = Self::default();
        Self {
            addr: f.get("addr", d.addr),
            customer_token: f.get("customer_token", d.customer_token),
            customer_token_file: f.get("customer_token_file", d.customer_token_file),
            max_connections: f.get("max_connections", d.max_connections),
            header_timeout: f.get("header_timeout_ms", d.header_timeout),
            idle_timeout: f.get("idle_timeout_ms", d.idle_timeout),
            request_timeout: f.get("request_timeout_ms", d.request_timeout),
        }
    }

    fn problems(&self) -> Vec<Problem> {
        let empty = [
            (self.customer_token.as_ref()).is_some_and(|t| t.expose().is_empty()),
            (self.customer_token_file.as_ref()).is_some_and(|f| f.as_os_str().is_empty()),
        ];
        let mut p: Vec<Problem> = REFUSED_EMPTY
            .iter()
            .zip(empty)
            .filter(|(_, empty)| *empty)
            .map(|(key, _)| {
                set_but_empty(
                    key,
                    "unset it to serve the customer endpoints without a token",
                )
            })
            .collect();
        // The token's checks would only report the empty value again. The file is read
        // at start (`Settings::resolve`).
        if p.is_empty() {
            if let (Some(_), Some(_)) = (&self.customer_token, &self.customer_token_file) {
                p.push(Problem::new(
                    "http.customer_token",
                    "and http.customer_token_file are both set: set one",
                ));
            } else if let Some(token) = &self.customer_token {
                p.extend(Self::bearer_token("http.customer_token", token.expose()).err());
            }
        }
        if let Some(text) = crate::http::serve::descriptor_problem(self.max_connections.get()) {
            let key = "http.max_connections";
            let message = text.strip_prefix(key).unwrap_or(&text).trim_start();
            p.push(Problem::new(key, message));
        }
        p
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn problems_with(change: impl FnOnce(&mut HttpSettings)) -> Vec<String> {
        let mut s = HttpSettings::default();
        change(&mut s);
        s.problems().iter().map(ToString::to_string).collect()
    }

    #[test]
    fn the_token_is_checked_by_key_without_showing_it() {
        assert_eq!(
            problems_with(|s| {
                s.customer_token = Some("direct".into());
                s.customer_token_file = Some("token".into());
            }),
            ["http.customer_token and http.customer_token_file are both set: set one"]
        );
        assert_eq!(
            problems_with(|s| s.customer_token = Some("".into())),
            ["http.customer_token is set but empty: unset it to serve the customer endpoints without a token"]
        );
        let problems = problems_with(|s| s.customer_token = Some("sp ace-secret".into()));
        assert_eq!(
            problems,
            ["http.customer_token must be visible ASCII characters without spaces (for example from `openssl rand -hex 32`)"]
        );
        // The file is read when the settings are resolved, not here.
        assert!(problems_with(|s| s.customer_token_file = Some("/nonexistent".into())).is_empty());
        assert!(problems_with(|s| s.customer_token = Some("t0k3n".into())).is_empty());
    }
}
