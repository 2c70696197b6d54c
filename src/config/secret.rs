//! Secrets among the settings: a type that never prints its value, and URLs shown with
//! their passwords replaced.

use serde::{Deserialize, Serialize};

/// A setting that must never be printed: its `Debug` shows `***`, and `check-config`
/// replaces it. Only [`Secret::expose`] gives the value, at the one place that uses it.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }

    pub(crate) fn expose(&self) -> &str {
        &self.0
    }
}

impl From<&str> for Secret {
    fn from(value: &str) -> Self {
        Self::new(value)
    }
}

impl From<String> for Secret {
    fn from(value: String) -> Self {
        Self(value)
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("***")
    }
}

/// What [`Settings::to_redacted_toml`] shows instead of a secret.
pub(crate) const REDACTED: &str = "***";

/// The URL with its secrets replaced by `***`: the password of the user information
/// (`redis://user:***@host`, `redis://:***@host`; a user information without `:` is
/// redacted whole, since some clients read it as the password) and the `pass`/`password`
/// query parameters of socket URLs (`redis+unix:///run/redis.sock?pass=***`).
///
/// Works on the text, not a parsed URL, so that a URL too broken to parse is redacted too.
pub fn redact_url(url: &str) -> String {
    let (scheme, rest) = match url.split_once("://") {
        Some((scheme, rest)) => (Some(scheme), rest),
        None => (None, url),
    };
    // The last `@` ends the user information even when the password holds an unescaped `@`.
    let rest = match rest.rsplit_once('@') {
        Some((userinfo, host)) => match userinfo.split_once(':') {
            Some((user, _)) => format!("{user}:{REDACTED}@{host}"),
            None => format!("{REDACTED}@{host}"),
        },
        None => rest.to_string(),
    };
    let rest = match rest.split_once('?') {
        Some((path, query)) => {
            let (query, fragment) = match query.split_once('#') {
                Some((q, f)) => (q, Some(f)),
                None => (query, None),
            };
            let query: Vec<String> = query
                .split('&')
                .map(|pair| match pair.split_once('=') {
                    Some((k, _))
                        if k.eq_ignore_ascii_case("pass") || k.eq_ignore_ascii_case("password") =>
                    {
                        format!("{k}={REDACTED}")
                    }
                    _ => pair.to_string(),
                })
                .collect();
            let mut shown = format!("{path}?{}", query.join("&"));
            if let Some(f) = fragment {
                shown = format!("{shown}#{f}");
            }
            shown
        }
        None => rest,
    };
    match scheme {
        Some(scheme) => format!("{scheme}://{rest}"),
        None => rest,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_are_redacted() {
        assert_eq!(
            redact_url("redis://:secret@host:6379/0"),
            "redis://:***@host:6379/0"
        );
        assert_eq!(redact_url("redis://user:pw@host"), "redis://user:***@host");
        assert_eq!(redact_url("redis://host:6379"), "redis://host:6379");
    }

    #[test]
    fn every_form_of_url_secret_is_redacted() {
        for (url, shown) in [
            ("rediss://:pw@h:6380/1", "rediss://:***@h:6380/1"),
            ("redis://pw@h", "redis://***@h"),
            ("redis://u:p@ss@h", "redis://u:***@h"),
            (
                "redis+unix:///run/r.sock?db=1&pass=pw",
                "redis+unix:///run/r.sock?db=1&pass=***",
            ),
            (
                "unix:///r.sock?user=u&PASSWORD=pw#x",
                "unix:///r.sock?user=u&PASSWORD=***#x",
            ),
            ("u:pw@h:6379", "u:***@h:6379"),
            ("rediss://h:6380/0", "rediss://h:6380/0"),
        ] {
            assert_eq!(redact_url(url), shown, "{url}");
        }
    }
}
