//! The settings with what they name read once, at start: the Redis client with its TLS
//! material, the customer endpoints' token, the consumer name. [`Settings::problems`] checks
//! values without touching anything; [`Settings::resolve`] reads the files and the host
//! name, and whatever fails is reported by key, every failure at once.

use super::{ConfigError, Problem, Problems, Secret, Settings};
use crate::connection;

/// Settings ready to run on: everything they name has been read.
pub struct Resolved {
    /// The settings, `source.consumer` filled in (the host name when empty).
    pub settings: Settings,
    /// A client for the configured Redis: its URL, the password override and, for
    /// `rediss://`, the CA and client certificate from their files.
    pub redis: connection::RedisClient,
    /// The token the customer endpoints require, if any: `http.customer_token`, or read
    /// from `http.customer_token_file`.
    pub customer_token: Option<Secret>,
}

impl std::fmt::Debug for Resolved {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Resolved")
            .field("settings", &self.settings)
            .field("customer_token", &self.customer_token)
            .finish_non_exhaustive()
    }
}

impl Settings {
    /// Reads what the settings name: the certificate files (building the Redis client) and
    /// the token file, and fills `source.consumer` with the host name when it is empty.
    /// Call once, at start; the settings' own checks ([`Settings::load`],
    /// [`Settings::validated`]) come first.
    pub fn resolve(mut self) -> Result<Resolved, ConfigError> {
        let mut problems = Vec::new();
        let redis = connection::client(&self.redis)
            .map_err(|e| problems.push(e.problem()))
            .ok();
        let customer_token = customer_token(&self)
            .map_err(|p| problems.push(p))
            .ok()
            .flatten();
        match redis {
            Some(redis) if problems.is_empty() => {
                if self.source.consumer.is_empty() {
                    self.source.consumer = host_name();
                }
                Ok(Resolved {
                    settings: self,
                    redis,
                    customer_token,
                })
            }
            _ => Err(ConfigError::Invalid(Problems(problems))),
        }
    }
}

/// The customer endpoints' token, reading `http.customer_token_file` if that names it.
fn customer_token(s: &Settings) -> Result<Option<Secret>, Problem> {
    let http = &s.http;
    match (&http.customer_token, &http.customer_token_file) {
        (None, None) => Ok(None),
        (Some(_), Some(_)) => Err(Problem::new(
            "http.customer_token",
            "and http.customer_token_file are both set: set one",
        )),
        (Some(token), None) => {
            super::HttpSettings::bearer_token("http.customer_token", token.expose()).map(Some)
        }
        (None, Some(path)) => {
            let key = "http.customer_token_file";
            let text = std::fs::read_to_string(path).map_err(|e| {
                Problem::new(key, format!("{} cannot be read: {e}", path.display()))
            })?;
            // A mounted Secret ends with a newline, and editors add one.
            super::HttpSettings::bearer_token(key, text.trim()).map(Some)
        }
    }
}

/// This host's name: `HOSTNAME` (set by Kubernetes to the pod's name), else
/// `gethostname(2)`, else `churnd`.
pub(crate) fn host_name() -> String {
    if let Ok(name) = std::env::var("HOSTNAME") {
        if !name.is_empty() {
            return name;
        }
    }
    let mut buf = [0u8; 256];
    // SAFETY: the buffer is valid for its length; gethostname NUL-terminates on success.
    let rc = unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) };
    let len = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
    match std::str::from_utf8(&buf[..len]) {
        Ok(name) if rc == 0 && !name.is_empty() => name.to_string(),
        _ => "churnd".to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_consumer_is_the_host_name_unless_given() {
        let resolved = Settings::default().resolve().unwrap();
        assert!(!resolved.settings.source.consumer.is_empty());
        assert_eq!(resolved.customer_token, None);
        let mut s = Settings::default();
        s.source.consumer = "replica-7".into();
        assert_eq!(s.resolve().unwrap().settings.source.consumer, "replica-7");
    }

    #[test]
    fn the_token_is_read_from_its_file_by_key_without_showing_it() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("token");
        let with_file = |text: Option<&str>| {
            let mut s = Settings::default();
            if let Some(text) = text {
                std::fs::write(&file, text).unwrap();
            }
            s.http.customer_token_file = Some(file.clone());
            s.resolve()
        };
        let resolved = with_file(Some("  from-a-secret\n")).unwrap();
        assert_eq!(
            resolved.customer_token.as_ref().map(Secret::expose),
            Some("from-a-secret")
        );
        let err = with_file(Some("\n")).unwrap_err().to_string();
        assert!(
            err.contains("  - http.customer_token_file gives an empty token"),
            "{err}"
        );
        let err = with_file(Some("sp ace-secret")).unwrap_err().to_string();
        assert!(
            err.contains("  - http.customer_token_file must be visible ASCII"),
            "{err}"
        );
        assert!(!err.contains("ace-secret"), "{err}");
        std::fs::remove_file(&file).unwrap();
        let err = with_file(None).unwrap_err().to_string();
        assert!(
            err.contains(&format!(
                "  - http.customer_token_file {} cannot be read: ",
                file.display()
            )),
            "{err}"
        );
    }

    #[test]
    fn every_file_that_cannot_be_used_is_reported_at_once() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = Settings::default();
        s.redis.url = "rediss://h:6380/0".into();
        s.redis.tls_ca_file = Some(dir.path().join("ca.pem"));
        s.http.customer_token_file = Some(dir.path().join("token"));
        let err = s.resolve().unwrap_err();
        let keys: Vec<&str> = err.problems().iter().map(|p| p.key.as_str()).collect();
        assert_eq!(keys, ["redis.tls_ca_file", "http.customer_token_file"]);
    }
}
