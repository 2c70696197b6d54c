//! `[redis]`: the server, its password and TLS material, timeouts and reconnect backoff.

use std::path::PathBuf;

use serde::Serialize;

use super::read::{read_choices, Choice, Fields};
use super::secret::{redact_url, Secret};
use super::units::Interval;
use super::{set_but_empty, Problem, Section};
use crate::connection::tls::{CERT_WITHOUT_KEY, INSECURE_REFUSED};

/// How churnd talks to Redis: one server (or a primary behind a proxy or Sentinel-managed
/// address), or a Redis Cluster reached through a seed node.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum RedisMode {
    /// One server at `url`.
    Standalone,
    /// A Redis Cluster: `url` is a seed node; the slot map is read from it and MOVED, ASK
    /// and failovers are followed.
    Cluster,
}

impl Choice for RedisMode {
    const ALL: &'static [Self] = &[Self::Standalone, Self::Cluster];
    fn name(self) -> &'static str {
        match self {
            Self::Standalone => "standalone",
            Self::Cluster => "cluster",
        }
    }
}
read_choices!(RedisMode);

#[derive(Clone, PartialEq, Serialize)]
pub struct RedisSettings {
    /// `standalone` (one server) or `cluster` (`url` is a seed node of a Redis Cluster).
    pub mode: RedisMode,
    /// `redis://` or, for TLS, `rediss://`; may carry the password (redacted wherever shown).
    pub url: String,
    /// Overrides the URL's password (e.g. from a Kubernetes Secret); never printed.
    pub password: Option<Secret>,
    /// PEM file with the CA certificate(s) that sign the server's certificate: a private CA.
    /// It replaces the built-in web PKI roots, which serve when it is unset.
    pub tls_ca_file: Option<PathBuf>,
    /// PEM client certificate (chain) for servers that require client certificates (mTLS);
    /// goes with `tls_key_file`.
    pub tls_cert_file: Option<PathBuf>,
    /// PEM private key of `tls_cert_file`.
    pub tls_key_file: Option<PathBuf>,
    /// Time allowed to establish a connection.
    #[serde(rename = "connect_timeout_ms")]
    pub connect_timeout: Interval,
    /// Time allowed for a command's reply (blocking reads get `source.block_ms` on top).
    #[serde(rename = "response_timeout_ms")]
    pub response_timeout: Interval,
    /// Reconnect backoff: exponential from this…
    #[serde(rename = "backoff_initial_ms")]
    pub backoff_initial: Interval,
    /// …to this, with jitter.
    #[serde(rename = "backoff_max_ms")]
    pub backoff_max: Interval,
}

impl Default for RedisSettings {
    fn default() -> Self {
        Self {
            mode: RedisMode::Standalone,
            url: "redis://127.0.0.1:6379/0".into(),
            password: None,
            tls_ca_file: None,
            tls_cert_file: None,
            tls_key_file: None,
            connect_timeout: Interval::from_millis(2_000),
            response_timeout: Interval::from_millis(5_000),
            backoff_initial: Interval::from_millis(100),
            backoff_max: Interval::from_millis(5_000),
        }
    }
}

impl std::fmt::Debug for RedisSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisSettings")
            .field("mode", &self.mode)
            .field("url", &redact_url(&self.url))
            .field("password", &self.password)
            .field("tls_ca_file", &self.tls_ca_file)
            .field("tls_cert_file", &self.tls_cert_file)
            .field("tls_key_file", &self.tls_key_file)
            .field("connect_timeout", &self.connect_timeout)
            .field("response_timeout", &self.response_timeout)
            .field("backoff_initial", &self.backoff_initial)
            .field("backoff_max", &self.backoff_max)
            .finish()
    }
}

impl RedisSettings {
    /// Whether the URL asks for TLS (`rediss://`, or Valkey's `valkeys://`).
    pub(crate) fn uses_tls(&self) -> bool {
        let scheme = self.url.split_once("://").map_or("", |(s, _)| s);
        scheme.eq_ignore_ascii_case("rediss") || scheme.eq_ignore_ascii_case("valkeys")
    }
}

/// Settings whose empty value would quietly mean "off" (the URL's password or none, the
/// built-in CA roots, no client certificate), with what to do instead: refused wherever the
/// empty value comes from (a Kubernetes Secret with an empty value becomes an empty variable).
const REFUSED_EMPTY: [(&str, &str); 4] = [
    (
        "redis.password",
        "unset it to use the password in redis.url (or none)",
    ),
    (
        "redis.tls_ca_file",
        "unset it to trust the built-in web PKI roots",
    ),
    (
        "redis.tls_cert_file",
        "unset it and redis.tls_key_file to connect without a client certificate",
    ),
    (
        "redis.tls_key_file",
        "unset it and redis.tls_cert_file to connect without a client certificate",
    ),
];

/// The URL schemes churnd can connect with.
const SCHEMES: [&str; 7] = [
    "redis",
    "rediss",
    "valkey",
    "valkeys",
    "redis+unix",
    "valkey+unix",
    "unix",
];

impl Section for RedisSettings {
    fn from_fields(f: &mut Fields<'_>) -> Self {
        let d = Self::default();
        Self {
            mode: f.get("mode", d.mode),
            url: f.get("url", d.url),
            password: f.get("password", d.password),
            tls_ca_file: f.get("tls_ca_file", d.tls_ca_file),
            tls_cert_file: f.get("tls_cert_file", d.tls_cert_file),
            tls_key_file: f.get("tls_key_file", d.tls_key_file),
            connect_timeout: f.get("connect_timeout_ms", d.connect_timeout),
            response_timeout: f.get("response_timeout_ms", d.response_timeout),
            backoff_initial: f.get("backoff_initial_ms", d.backoff_initial),
            backoff_max: f.get("backoff_max_ms", d.backoff_max),
        }
    }

    fn problems(&self) -> Vec<Problem> {
        let path = |p: &Option<PathBuf>| p.as_ref().is_some_and(|p| p.as_os_str().is_empty());
        let empty = [
            self.password
                .as_ref()
                .is_some_and(|s| s.expose().is_empty()),
            path(&self.tls_ca_file),
            path(&self.tls_cert_file),
            path(&self.tls_key_file),
        ];
        let mut p: Vec<Problem> = REFUSED_EMPTY
            .iter()
            .zip(empty)
            .filter(|(_, empty)| *empty)
            .map(|((key, instead), _)| set_but_empty(key, instead))
            .collect();
        // The connection's checks would only report the empty value again.
        if p.is_empty() {
            p.extend(self.connection_problems());
        }
        if self.backoff_max < self.backoff_initial {
            p.push(Problem::new(
                "redis.backoff_max_ms",
                "must be at least redis.backoff_initial_ms",
            ));
        }
        p
    }
}

/// What is wrong with `url` as a Redis URL, if anything, without the secrets it may hold.
fn url_problem(url: &str) -> Option<Problem> {
    use redis::IntoConnectionInfo;
    const EXPECTED: &str = "a Redis URL: redis://[user:password@]host[:port][/db], rediss://… \
        for TLS, or redis+unix:///path/to/socket";
    let shown = redact_url(url);
    let scheme = url
        .split_once("://")
        .map(|(scheme, _)| scheme.to_ascii_lowercase());
    let Some(scheme) = scheme.filter(|s| SCHEMES.contains(&s.as_str())) else {
        return Some(Problem::new(
            "redis.url",
            format!("must be {EXPECTED} (got {shown:?})"),
        ));
    };
    let error = url.into_connection_info().err()?;
    // The library's own words ("Missing hostname - InvalidClientConfig"), without the
    // name of its error kind.
    let text = error.to_string();
    let reason = text.split(" - ").next().unwrap_or(&text).to_lowercase();
    let reason = if reason.contains("did not parse") {
        format!("is not a valid {scheme}:// URL")
    } else {
        reason
    };
    Some(Problem::new(
        "redis.url",
        format!("must be {EXPECTED} (got {shown:?}: {reason})"),
    ))
}

impl RedisSettings {
    /// What keeps a connection from being made as these settings describe it, before any
    /// file is read: the URL, and TLS settings that do not go with it.
    fn connection_problems(&self) -> Vec<Problem> {
        use redis::{ConnectionAddr, IntoConnectionInfo};
        if let Some(problem) = url_problem(&self.url) {
            return vec![problem];
        }
        let Ok(info) = self.url.as_str().into_connection_info() else {
            return vec![Problem::new("redis.url", "is not a Redis URL")];
        };
        let mut p = Vec::new();
        match info.addr() {
            ConnectionAddr::TcpTls { insecure: true, .. } => {
                p.push(Problem::new("redis.url", INSECURE_REFUSED));
            }
            ConnectionAddr::TcpTls { .. } => {}
            _ => {
                for (key, file) in [
                    ("redis.tls_ca_file", &self.tls_ca_file),
                    ("redis.tls_cert_file", &self.tls_cert_file),
                    ("redis.tls_key_file", &self.tls_key_file),
                ] {
                    if file.is_some() {
                        p.push(Problem::new(
                            key,
                            "is set but redis.url is not a rediss:// (TLS) URL",
                        ));
                    }
                }
            }
        }
        if self.tls_cert_file.is_some() != self.tls_key_file.is_some() {
            p.push(Problem::new("redis.tls_cert_file", CERT_WITHOUT_KEY));
        }
        if self.mode == RedisMode::Cluster {
            p.extend(cluster_problem(&info));
        }
        p
    }
}

/// What a Redis Cluster cannot be reached through: a Unix socket (the nodes announce TCP
/// addresses), or a database other than 0 (a cluster has only database 0).
fn cluster_problem(info: &redis::ConnectionInfo) -> Option<Problem> {
    use redis::ConnectionAddr;
    if let ConnectionAddr::Unix(_) = info.addr() {
        return Some(Problem::new(
            "redis.url",
            "must be a redis:// or rediss:// URL of a cluster node when redis.mode = \"cluster\" \
             (a cluster's nodes announce TCP addresses, not Unix sockets)",
        ));
    }
    let db = info.redis_settings().db();
    (db != 0).then(|| {
        Problem::new(
            "redis.url",
            format!(
                "selects database {db}, but a Redis Cluster has only database 0: remove /{db} \
                 from the URL, or set redis.mode = \"standalone\""
            ),
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn problems_with(change: impl FnOnce(&mut RedisSettings)) -> Vec<String> {
        let mut s = RedisSettings::default();
        change(&mut s);
        s.problems().iter().map(ToString::to_string).collect()
    }

    #[test]
    fn a_url_that_is_not_one_says_why_without_its_password() {
        let expected = "redis.url must be a Redis URL: redis://[user:password@]host[:port][/db], \
            rediss://… for TLS, or redis+unix:///path/to/socket";
        for (url, reason) in [
            (
                "http://:hunter2@cache:6379",
                "(got \"http://:***@cache:6379\")",
            ),
            (
                "redis://:hunter2@",
                "(got \"redis://:***@\": is not a valid redis:// URL)",
            ),
            (
                "redis://:hunter2@h:6379/x",
                "(got \"redis://:***@h:6379/x\": invalid database number)",
            ),
            ("redis://:hunter2@h:port", ": is not a valid redis:// URL)"),
            (
                "rediss://:hunter2@h#verify",
                ": only #insecure is supported",
            ),
        ] {
            let problems = problems_with(|s| s.url = url.into());
            assert_eq!(problems.len(), 1, "{url}: {problems:?}");
            assert!(
                problems[0].starts_with(expected) && problems[0].contains(reason),
                "{url}: {problems:?}"
            );
            assert!(!problems[0].contains("hunter2"), "{problems:?}");
        }
        for url in [
            "redis://127.0.0.1:6379/0",
            "rediss://:pw@h:6380/0",
            "unix:///run/redis.sock",
            "valkeys://h",
        ] {
            assert_eq!(
                problems_with(|s| s.url = url.into()),
                Vec::<String>::new(),
                "{url}"
            );
        }
    }

    #[test]
    fn tls_settings_must_go_with_the_url() {
        assert_eq!(
            problems_with(|s| {
                s.tls_ca_file = Some("ca.pem".into());
                s.tls_key_file = Some("client.key".into());
            }),
            [
                "redis.tls_ca_file is set but redis.url is not a rediss:// (TLS) URL",
                "redis.tls_key_file is set but redis.url is not a rediss:// (TLS) URL",
                "redis.tls_cert_file and redis.tls_key_file go together: set both or neither",
            ]
        );
        assert_eq!(
            problems_with(|s| s.url = "rediss://:pw@h:6380/#insecure".into()),
            [
                "redis.url must not ask for #insecure (TLS without certificate verification): \
              give the server's CA in redis.tls_ca_file"
            ]
        );
        // Files are not read here (see `Settings::resolve`).
        assert_eq!(
            problems_with(|s| {
                s.url = "rediss://h:6380".into();
                s.tls_ca_file = Some("/nonexistent/ca.pem".into());
            }),
            Vec::<String>::new()
        );
    }

    #[test]
    fn an_empty_value_is_refused_and_not_checked_again() {
        let problems = problems_with(|s| {
            s.url = "rediss://h:6380".into();
            s.password = Some("".into());
            s.tls_cert_file = Some("".into());
        });
        assert_eq!(
            problems,
            [
                "redis.password is set but empty: unset it to use the password in redis.url (or none)",
                "redis.tls_cert_file is set but empty: unset it and redis.tls_key_file to connect without a client certificate",
            ]
        );
    }

    #[test]
    fn cluster_mode_needs_a_tcp_url_of_database_0() {
        let cluster = |url: &str| {
            problems_with(|s| {
                s.mode = RedisMode::Cluster;
                s.url = url.into();
            })
        };
        assert_eq!(cluster("redis://:pw@node-0:7000"), Vec::<String>::new());
        assert_eq!(cluster("rediss://node-0:7000/0"), Vec::<String>::new());
        let unix = cluster("unix:///run/redis.sock");
        assert_eq!(unix.len(), 1, "{unix:?}");
        assert!(
            unix[0].starts_with("redis.url must be a redis:// or rediss:// URL of a cluster node"),
            "{unix:?}"
        );
        assert_eq!(
            cluster("redis://node-0:7000/3"),
            [
                "redis.url selects database 3, but a Redis Cluster has only database 0: remove /3 \
              from the URL, or set redis.mode = \"standalone\""
            ]
        );
        // The same URLs serve one server.
        assert!(problems_with(|s| s.url = "redis://h:6379/3".into()).is_empty());
    }

    #[test]
    fn the_backoff_grows_to_its_maximum() {
        assert_eq!(
            problems_with(|s| s.backoff_max = Interval::from_millis(50)),
            ["redis.backoff_max_ms must be at least redis.backoff_initial_ms"]
        );
        assert!(RedisSettings::default().problems().is_empty());
    }
}
