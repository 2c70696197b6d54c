//! Connections to Redis that outlive Redis: connect with capped exponential backoff and
//! jitter, tell a dead connection from a failed command, and report both.
//!
//! Each task (source, sink, monitor) owns its connection: a blocking XREADGROUP must not
//! hold up the sink's writes, and each task knows best when to give up and reconnect.
//!
//! Errors are logged through [`Connector::describe`]: failures only the configuration can
//! fix (a wrong password, an untrusted certificate) say which setting to check, and the
//! password never appears, even should a server or library echo it.
//!
//! The client they come from is built once at start from the `[redis]` settings ([`client`]).

pub mod client_log;
mod conn;
pub(crate) mod tls;

pub use conn::{cluster_nodes, slot_groups, ClusterSeeds, RedisClient, RedisConn};
pub use tls::{client, ClientError};

use std::time::Duration;

use redis::{ErrorKind, IntoConnectionInfo, RedisError, ServerErrorKind};
use tokio_util::sync::CancellationToken;

use crate::config::RedisSettings;
use crate::metrics::{RedisMetrics, RedisRole, RoleMetrics};

/// Capped exponential backoff with jitter: each delay is drawn from the upper half of the
/// current step, so reconnecting replicas spread out.
#[derive(Debug, Clone)]
pub(crate) struct Backoff {
    initial: Duration,
    max: Duration,
    step: Duration,
}

impl Backoff {
    pub fn new(initial: Duration, max: Duration) -> Self {
        Self {
            initial,
            max,
            step: initial,
        }
    }

    pub(crate) fn next_delay(&mut self) -> Duration {
        let step = self.step;
        self.step = (self.step * 2).min(self.max);
        step / 2 + step.mul_f64(rand::random::<f64>() / 2.0)
    }

    pub fn reset(&mut self) {
        self.step = self.initial;
    }
}

pub struct Connector {
    client: RedisClient,
    /// The password the client sends, kept only to scrub it from error messages.
    password: Option<String>,
    connect_timeout: Duration,
    /// Bounds every command on the connection (in a cluster, with its redirections).
    response_timeout: Duration,
    backoff: Backoff,
    role: RedisRole,
    /// The role's series of `churnd_redis_connected` and `churnd_redis_errors_total`.
    metrics: RoleMetrics,
    /// In a cluster, the nodes learnt at the last connection: seeds of the next one beside
    /// `redis.url`'s, so that a reconnect does not depend on that one node being up.
    known_nodes: Vec<(String, u16)>,
}

impl Connector {
    /// `response_timeout` bounds every command on the connection; a blocking read needs one
    /// longer than its BLOCK.
    pub fn new(
        client: RedisClient,
        settings: &RedisSettings,
        response_timeout: Duration,
        role: RedisRole,
        metrics: &RedisMetrics,
    ) -> Self {
        let connect_timeout = settings.connect_timeout.get();
        // The role's error count exists from the start: dashboards see zero, not a gap.
        let metrics = metrics.role(role);
        metrics.connected.set(0);
        let password = match &settings.password {
            Some(p) => Some(p.expose().to_string()),
            None => settings
                .url
                .as_str()
                .into_connection_info()
                .ok()
                .and_then(|i| i.redis_settings().password().map(String::from)),
        }
        .filter(|p| !p.is_empty());
        Self {
            client,
            password,
            connect_timeout,
            response_timeout,
            backoff: Backoff::new(settings.backoff_initial.get(), settings.backoff_max.get()),
            role,
            metrics,
            known_nodes: Vec::new(),
        }
    }

    /// Connects, retrying until it succeeds; `None` if shutdown comes first.
    pub async fn connect(&mut self, shutdown: &CancellationToken) -> Option<RedisConn> {
        let mut attempt = 0u32;
        loop {
            attempt += 1;
            let result = tokio::select! {
                r = tokio::time::timeout(self.connect_timeout * 2, self.attempt()) => r,
                _ = shutdown.cancelled() => return None,
            };
            let error = match result {
                Ok(Ok(conn)) => {
                    if attempt > 1 {
                        tracing::info!(role = self.role.as_str(), attempt, "connected to Redis");
                    }
                    self.metrics.connected.set(1);
                    self.backoff.reset();
                    if conn.is_cluster() {
                        self.learn_nodes(&conn).await;
                    }
                    return Some(conn);
                }
                Ok(Err(e)) => self.describe(&e),
                Err(_) => format!("no answer within {:?}", self.connect_timeout * 2),
            };
            self.metrics.errors.inc();
            if !self.pause(shutdown).await {
                return None;
            }
            tracing::warn!(
                role = self.role.as_str(),
                attempt,
                error,
                "cannot connect to Redis; retrying"
            );
        }
    }

    /// One attempt, within twice the connect timeout, for checks that report rather than
    /// wait (`churnd check-config --connect`): the error as [`Self::describe`] gives it.
    pub(crate) async fn connect_once(&self) -> Result<RedisConn, String> {
        match tokio::time::timeout(self.connect_timeout * 2, self.attempt()).await {
            Ok(Ok(conn)) => Ok(conn),
            Ok(Err(e)) => Err(self.describe(&e)),
            Err(_) => Err(format!("no answer within {:?}", self.connect_timeout * 2)),
        }
    }

    /// One connection attempt: to the server, or to the cluster (the slot map of the first
    /// seed node that answers, then a connection to each primary).
    async fn attempt(&self) -> redis::RedisResult<RedisConn> {
        self.client
            .connection_with(
                self.connect_timeout,
                self.response_timeout,
                &self.known_nodes,
            )
            .await
    }

    /// Keeps the cluster's nodes as seeds for the next connection. (The connection itself
    /// follows failovers without them; a new one is made when an operation's error says the
    /// connection is unusable, and a primary that died can leave the redis crate's slot map
    /// naming it until then: a command sent to every primary keeps failing on it.)
    async fn learn_nodes(&mut self, conn: &RedisConn) {
        let mut c = conn.clone();
        match tokio::time::timeout(self.response_timeout, cluster_nodes(&mut c)).await {
            Ok(Ok(nodes)) if !nodes.is_empty() => self.known_nodes = nodes,
            Ok(Err(e)) => {
                tracing::debug!(role = self.role.as_str(), error = %self.describe(&e), "cannot read the cluster's nodes; keeping those known")
            }
            _ => {}
        }
    }

    /// Whether the connections are to a Redis Cluster.
    pub fn is_cluster(&self) -> bool {
        matches!(self.client, RedisClient::Cluster(_))
    }

    /// Records a failed operation. Returns whether the connection must be dropped and made
    /// anew (otherwise the caller retries on the same connection after [`Self::pause`]).
    pub fn failed(&self, error: &RedisError) -> bool {
        self.metrics.errors.inc();
        let reconnect = needs_reconnect(error);
        let error = self.describe(error);
        if reconnect {
            self.metrics.connected.set(0);
            tracing::warn!(role = self.role.as_str(), %error, "lost the Redis connection; reconnecting");
        } else {
            tracing::warn!(role = self.role.as_str(), %error, "Redis operation failed; retrying");
        }
        reconnect
    }

    /// Sleeps for the next backoff delay; `false` if shutdown came first.
    pub async fn pause(&mut self, shutdown: &CancellationToken) -> bool {
        tokio::select! {
            _ = tokio::time::sleep(self.backoff.next_delay()) => true,
            _ = shutdown.cancelled() => false,
        }
    }

    /// Records an operation that succeeded: the connection answers.
    pub fn succeeded(&mut self) {
        self.backoff.reset();
        self.metrics.connected.set(1);
    }

    /// The error for the log: with a hint when only the configuration can fix it, and with
    /// the password, should it appear, replaced by `***`.
    pub fn describe(&self, error: &RedisError) -> String {
        let text = describe(error);
        match &self.password {
            Some(password) => text.replace(password.as_str(), "***"),
            None => text,
        }
    }
}

/// The error's text, plus what to check when a setting is the likely cause.
pub fn describe(error: &RedisError) -> String {
    let text = error.to_string();
    let code = error.code().unwrap_or_default();
    let hint = if error.kind() == ErrorKind::AuthenticationFailed || code == "WRONGPASS" {
        "authentication failed: check the password in redis.url or redis.password"
    } else if code == "NOAUTH" {
        "authentication required: the server has a password; give it in redis.url or \
         redis.password"
    } else if is_certificate_error(&text) {
        "TLS: the server's certificate is not trusted or does not match its host name; a \
         private CA goes in redis.tls_ca_file"
    } else if text.contains("CertificateRequired") {
        "TLS: the server requires a client certificate: set redis.tls_cert_file and \
         redis.tls_key_file"
    } else {
        return text;
    };
    format!("{text} ({hint})")
}

/// rustls reports verification failures as "invalid peer certificate: <reason>".
fn is_certificate_error(text: &str) -> bool {
    text.contains("invalid peer certificate") || text.contains("UnknownIssuer")
}

/// Whether the connection itself is unusable: I/O failure, timeout, or a server that can no
/// longer take writes (a demoted primary after failover).
pub(crate) fn needs_reconnect(e: &RedisError) -> bool {
    e.is_io_error()
        || e.is_connection_dropped()
        || e.is_connection_refusal()
        || e.is_timeout()
        || e.is_unrecoverable_error()
        || e.kind() == ErrorKind::Server(ServerErrorKind::ReadOnly)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_to_its_cap_with_jitter() {
        let mut b = Backoff::new(Duration::from_millis(100), Duration::from_millis(1000));
        let delays: Vec<Duration> = (0..8).map(|_| b.next_delay()).collect();
        assert!(delays[0] >= Duration::from_millis(50) && delays[0] <= Duration::from_millis(100));
        assert!(delays.iter().all(|d| *d <= Duration::from_millis(1000)));
        assert!(delays[7] >= Duration::from_millis(500));
        b.reset();
        assert!(b.next_delay() <= Duration::from_millis(100));
    }
}
