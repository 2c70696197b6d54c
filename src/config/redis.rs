//! `[redis]`: the server, its password and TLS material, timeouts and reconnect backoff.

use std::path::{Path, PathBuf};

use serde::Serialize;

use super::read::Fields;
use super::secret::{redact_url, Secret};
use super::units::Interval;
use super::{set_but_empty, Problem, Section, SettingError};

#[derive(Clone, PartialEq, Serialize)]
pub struct RedisSettings {
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
    pub fn uses_tls(&self) -> bool {
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
        // The client's checks would only report the empty value again.
        if p.is_empty() {
            match url_problem(&self.url) {
                Some(problem) => p.push(problem),
                None => {
                    if let Err(e) = self.client() {
                        p.push(e.0);
                    }
                }
            }
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
    pub fn client(&self) -> Result<redis::Client, SettingError> {
        use redis::{ConnectionAddr, IntoConnectionInfo};
        let r = self;
        let mut info = r.url.as_str().into_connection_info().map_err(|_| {
            let problem = url_problem(&r.url)
                .unwrap_or_else(|| Problem::new("redis.url", "is not a Redis URL"));
            SettingError(problem)
        })?;
        if let Some(password) = &r.password {
            let redis_info = info
                .redis_settings()
                .clone()
                .set_password(password.expose());
            info = info.set_redis_settings(redis_info);
        }
        let files = [
            ("redis.tls_ca_file", &r.tls_ca_file),
            ("redis.tls_cert_file", &r.tls_cert_file),
            ("redis.tls_key_file", &r.tls_key_file),
        ];
        match info.addr() {
            ConnectionAddr::TcpTls { insecure: true, .. } => {
                return Err(SettingError(Problem::new("redis.url", INSECURE_REFUSED)));
            }
            ConnectionAddr::TcpTls { .. } => {}
            _ => {
                if let Some((key, _)) = files.iter().find(|(_, f)| f.is_some()) {
                    return Err(SettingError(Problem::new(
                        *key,
                        "is set but redis.url is not a rediss:// (TLS) URL",
                    )));
                }
                return redis::Client::open(info).map_err(|e| {
                    SettingError(Problem::new("redis.url", format!("cannot be used: {e}")))
                });
            }
        }
        install_crypto_provider();
        let root_cert = match &r.tls_ca_file {
            Some(path) => Some(read_certificates("redis.tls_ca_file", path)?),
            None => None,
        };
        let client_tls = match (&r.tls_cert_file, &r.tls_key_file) {
            (None, None) => None,
            (Some(cert), Some(key)) => Some(redis::ClientTlsConfig {
                client_cert: read_certificates("redis.tls_cert_file", cert)?,
                client_key: read_private_key("redis.tls_key_file", key)?,
            }),
            _ => {
                return Err(SettingError(Problem::new(
                    "redis.tls_cert_file",
                    CERT_WITHOUT_KEY,
                )))
            }
        };
        let certificates = redis::TlsCertificates {
            client_tls,
            root_cert,
        };
        redis::Client::build_with_tls(info, certificates).map_err(|e| {
            SettingError(Problem::new(
                "redis.url",
                format!("cannot be used with these TLS settings: {e}"),
            ))
        })
    }
}

const CERT_WITHOUT_KEY: &str = "and redis.tls_key_file go together: set both or neither";
const INSECURE_REFUSED: &str = "must not ask for #insecure (TLS without certificate \
    verification): give the server's CA in redis.tls_ca_file";

/// rustls needs a process-wide crypto provider. Only ring is compiled in, which rustls would
/// pick by itself; installing it explicitly keeps TLS working should another dependency
/// ever enable a second provider (rustls then refuses to guess and panics).
fn install_crypto_provider() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        // An error means a provider is installed already, which serves as well.
        let _ = rustls::crypto::ring::default_provider().install_default();
    });
}

fn read_file(key: &str, path: &Path) -> Result<Vec<u8>, SettingError> {
    std::fs::read(path).map_err(|e| {
        SettingError(Problem::new(
            key,
            format!("{} cannot be read: {e}", path.display()),
        ))
    })
}

/// A PEM file's bytes, checked to hold at least one well-formed certificate.
fn read_certificates(key: &str, path: &Path) -> Result<Vec<u8>, SettingError> {
    use rustls::pki_types::{pem::PemObject, CertificateDer};
    let pem = read_file(key, path)?;
    let certificates = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| {
            SettingError(Problem::new(
                key,
                format!("{} is not a PEM certificate file: {e}", path.display()),
            ))
        })?;
    if certificates.is_empty() {
        return Err(SettingError(Problem::new(
            key,
            format!(
                "{} holds no PEM certificate (-----BEGIN CERTIFICATE-----)",
                path.display()
            ),
        )));
    }
    Ok(pem)
}

/// A PEM file's bytes, checked to hold a private key (PKCS#8, PKCS#1 or SEC1).
fn read_private_key(key: &str, path: &Path) -> Result<Vec<u8>, SettingError> {
    use rustls::pki_types::{pem::PemObject, PrivateKeyDer};
    let pem = read_file(key, path)?;
    // The parse error is about the file's structure; it never quotes the key.
    PrivateKeyDer::from_pem_slice(&pem).map_err(|e| {
        SettingError(Problem::new(
            key,
            format!("{} holds no usable PEM private key: {e}", path.display()),
        ))
    })?;
    Ok(pem)
}
