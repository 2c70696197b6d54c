//! The Redis client the `[redis]` settings describe: the URL with the password override
//! and, for `rediss://`, the CA and client certificate read from their files. Built once at
//! start ([`crate::config::Settings::resolve`]); every connection of the process comes from
//! it.
//!
//! TLS is rustls with the web PKI roots compiled in, unless `redis.tls_ca_file` names a
//! private CA: no system CA store is read and no OpenSSL is needed.

use std::path::Path;

use redis::{ConnectionAddr, IntoConnectionInfo};

use super::{ClusterSeeds, RedisClient};
use crate::config::{Problem, RedisMode, RedisSettings};

/// Why no client can be built: the setting to look at, and what is wrong (never a secret).
#[derive(Debug, thiserror::Error)]
#[error("{key} {message}")]
pub struct ClientError {
    pub key: &'static str,
    /// What is wrong, as it follows the key: `/etc/churnd/ca.pem cannot be read: …`.
    pub message: String,
}

impl ClientError {
    fn new(key: &'static str, message: impl Into<String>) -> Self {
        Self {
            key,
            message: message.into(),
        }
    }

    /// As a configuration problem.
    pub fn problem(&self) -> Problem {
        Problem::new(self.key, self.message.clone())
    }
}

/// A client for the configured server (or, with `redis.mode = "cluster"`, for the cluster
/// `redis.url` is a seed node of). Reads and checks the certificate files, so a bad one is
/// reported by its key before anything connects. The settings' own checks
/// (`Settings::problems`) come first; a URL asking for TLS without verification is refused
/// here as well, whoever calls.
pub fn client(settings: &RedisSettings) -> Result<RedisClient, ClientError> {
    let mut info = settings
        .url
        .as_str()
        .into_connection_info()
        .map_err(|_| ClientError::new("redis.url", "is not a Redis URL"))?;
    if let Some(password) = &settings.password {
        let redis_info = info
            .redis_settings()
            .clone()
            .set_password(password.expose());
        info = info.set_redis_settings(redis_info);
    }
    let certificates = match info.addr() {
        ConnectionAddr::TcpTls { insecure: true, .. } => {
            return Err(ClientError::new("redis.url", INSECURE_REFUSED));
        }
        ConnectionAddr::TcpTls { .. } => Some(certificates(settings)?),
        _ => None,
    };
    match settings.mode {
        RedisMode::Standalone => standalone(info, certificates).map(RedisClient::Standalone),
        RedisMode::Cluster => cluster(info, certificates).map(RedisClient::Cluster),
    }
}

/// The CA and client certificate the settings name, read and checked.
fn certificates(settings: &RedisSettings) -> Result<redis::TlsCertificates, ClientError> {
    install_crypto_provider();
    let root_cert = match &settings.tls_ca_file {
        Some(path) => Some(read_certificates("redis.tls_ca_file", path)?),
        None => None,
    };
    let client_tls = match (&settings.tls_cert_file, &settings.tls_key_file) {
        (None, None) => None,
        (Some(cert), Some(key)) => Some(redis::ClientTlsConfig {
            client_cert: read_certificates("redis.tls_cert_file", cert)?,
            client_key: read_private_key("redis.tls_key_file", key)?,
        }),
        _ => return Err(ClientError::new("redis.tls_cert_file", CERT_WITHOUT_KEY)),
    };
    Ok(redis::TlsCertificates {
        client_tls,
        root_cert,
    })
}

fn standalone(
    info: redis::ConnectionInfo,
    certificates: Option<redis::TlsCertificates>,
) -> Result<redis::Client, ClientError> {
    match certificates {
        None => redis::Client::open(info)
            .map_err(|e| ClientError::new("redis.url", format!("cannot be used: {e}"))),
        Some(certificates) => redis::Client::build_with_tls(info, certificates).map_err(|e| {
            ClientError::new(
                "redis.url",
                format!("cannot be used with these TLS settings: {e}"),
            )
        }),
    }
}

/// The cluster as reached from the URL's node: its password, user name and TLS settings
/// serve for every node the slot map names.
fn cluster(
    info: redis::ConnectionInfo,
    certificates: Option<redis::TlsCertificates>,
) -> Result<ClusterSeeds, ClientError> {
    let tls = certificates.is_some();
    ClusterSeeds::new(info, certificates).map_err(|e| {
        let with = if tls { " with these TLS settings" } else { "" };
        ClientError::new(
            "redis.url",
            format!("cannot be used as a cluster seed node{with}: {e}"),
        )
    })
}

/// After `redis.tls_cert_file` when only one of the two is set.
pub(crate) const CERT_WITHOUT_KEY: &str = "and redis.tls_key_file go together: set both or neither";
/// After `redis.url` when it asks for TLS without verification.
pub(crate) const INSECURE_REFUSED: &str = "must not ask for #insecure (TLS without \
    certificate verification): give the server's CA in redis.tls_ca_file";

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

fn read_file(key: &'static str, path: &Path) -> Result<Vec<u8>, ClientError> {
    std::fs::read(path)
        .map_err(|e| ClientError::new(key, format!("{} cannot be read: {e}", path.display())))
}

/// A PEM file's bytes, checked to hold at least one well-formed certificate.
fn read_certificates(key: &'static str, path: &Path) -> Result<Vec<u8>, ClientError> {
    use rustls::pki_types::{pem::PemObject, CertificateDer};
    let pem = read_file(key, path)?;
    let certificates = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| {
            ClientError::new(
                key,
                format!("{} is not a PEM certificate file: {e}", path.display()),
            )
        })?;
    if certificates.is_empty() {
        return Err(ClientError::new(
            key,
            format!(
                "{} holds no PEM certificate (-----BEGIN CERTIFICATE-----)",
                path.display()
            ),
        ));
    }
    Ok(pem)
}

/// A PEM file's bytes, checked to hold a private key (PKCS#8, PKCS#1 or SEC1).
fn read_private_key(key: &'static str, path: &Path) -> Result<Vec<u8>, ClientError> {
    use rustls::pki_types::{pem::PemObject, PrivateKeyDer};
    let pem = read_file(key, path)?;
    // The parse error is about the file's structure; it never quotes the key.
    PrivateKeyDer::from_pem_slice(&pem).map_err(|e| {
        ClientError::new(
            key,
            format!("{} holds no usable PEM private key: {e}", path.display()),
        )
    })?;
    Ok(pem)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tls(change: impl FnOnce(&mut RedisSettings)) -> RedisSettings {
        let mut s = RedisSettings {
            url: "rediss://:s3cr3t-pass@h:6380/0".into(),
            ..RedisSettings::default()
        };
        change(&mut s);
        s
    }

    #[test]
    fn certificate_files_are_read_and_checked_by_key() {
        let dir = tempfile::tempdir().unwrap();
        let not_pem = dir.path().join("not.pem");
        std::fs::write(&not_pem, "not a certificate\n").unwrap();
        let missing = dir.path().join("missing.pem");
        for (settings, expected) in [
            (
                tls(|s| s.tls_ca_file = Some(missing.clone())),
                format!("redis.tls_ca_file {} cannot be read: ", missing.display()),
            ),
            (
                tls(|s| s.tls_ca_file = Some(not_pem.clone())),
                format!(
                    "redis.tls_ca_file {} holds no PEM certificate",
                    not_pem.display()
                ),
            ),
            (
                tls(|s| {
                    s.tls_cert_file = Some(not_pem.clone());
                    s.tls_key_file = Some(not_pem.clone());
                }),
                format!(
                    "redis.tls_cert_file {} holds no PEM certificate",
                    not_pem.display()
                ),
            ),
            (
                tls(|s| s.url = "rediss://:s3cr3t-pass@h:6380/0#insecure".into()),
                "redis.url must not ask for #insecure".to_string(),
            ),
        ] {
            let err = client(&settings).unwrap_err().to_string();
            assert!(err.starts_with(&expected), "{expected:?}: {err}");
            assert!(!err.contains("s3cr3t"), "{err}");
        }
        // The web PKI roots by default: a rediss:// URL alone gives a client.
        assert!(client(&tls(|_| {})).is_ok());
        // The password override is the one the client sends.
        let Ok(RedisClient::Standalone(c)) = client(&tls(|s| s.password = Some("override".into())))
        else {
            panic!("a standalone client")
        };
        assert_eq!(
            c.get_connection_info().redis_settings().password(),
            Some("override")
        );
        // A cluster client from the same settings.
        let c = client(&tls(|s| s.mode = RedisMode::Cluster)).unwrap();
        assert!(matches!(c, RedisClient::Cluster(_)));
    }
}
