//! Any replica answers `GET /v1/customers/{id}` under `partitions.ownership = leases`: a
//! replica that does not serve the customer's partition passes the request on to the one
//! that does, and returns its answer.
//!
//! The owner is the holder of the partition's lease (`<group>:lease:{p}`), read from Redis
//! for each request passed on, so that a partition that moved is found at its new owner at
//! once; where the owner is reached is the URL it publishes with its heartbeats
//! (`<group>:addresses`, `partitions.advertise_url`). A request passed on carries
//! [`FORWARDED_BY`]; a replica that receives one for a partition it does not serve answers
//! 503 instead of passing it on again, so that two replicas that disagree about an owner
//! during a hand-over never bounce a request between them. Every answer under leases names
//! the replica whose engine answered in [`SERVED_BY`].

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::http::{header, HeaderMap, HeaderName, HeaderValue, Request, StatusCode, Uri};
use axum::response::Response;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use prometheus::IntCounter;
use redis::RedisError;
use tokio::sync::{watch, Mutex};

use crate::connection::{Connector, RedisConn};
use crate::metrics::PerLabel;
use crate::ownership::lease::Leases;
use crate::ownership::membership::Membership;
use crate::ownership::MemberName;
use crate::partition::PartitionCount;

/// Set on a request passed on to a partition's owner: the name of the replica that passed
/// it on. A replica never passes on a request that carries it.
pub const FORWARDED_BY: HeaderName = HeaderName::from_static("x-churnd-forwarded-by");
/// Set on every customer answer under leases: the replica whose engine answered.
pub const SERVED_BY: HeaderName = HeaderName::from_static("x-churnd-served-by");

/// How long the owner may take to answer: its own wait for its engine (up to twice
/// [`super::QUERY_TIMEOUT`]) and a margin.
const FORWARD_TIMEOUT: Duration = Duration::from_secs(12);
/// How long connecting to the owner may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// The largest answer passed back (a customer's view is a few KiB).
const MAX_ANSWER: usize = 1 << 20;
/// The `Retry-After` of a 503 while a partition moves, in seconds.
const RETRY_AFTER: &str = "1";

/// What came of a query for a partition this replica does not serve: the `outcome` label
/// of `churnd_http_forwarded_requests_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Forwarded {
    /// Passed on to the owner, whose answer (whatever its status) was returned.
    Answered,
    /// No replica holds the partition's lease, or its holder published no URL: 503.
    OwnerUnknown,
    /// The owner did not answer (refused, timed out, broke off): 502.
    OwnerUnreachable,
    /// A request another replica passed on, for a partition this one does not serve: 503.
    LoopRefused,
}

impl Forwarded {
    pub const ALL: [Self; 4] = [
        Self::Answered,
        Self::OwnerUnknown,
        Self::OwnerUnreachable,
        Self::LoopRefused,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Answered => "answered",
            Self::OwnerUnknown => "owner_unknown",
            Self::OwnerUnreachable => "owner_unreachable",
            Self::LoopRefused => "loop_refused",
        }
    }
}

/// The partitions a replica holds now, as its generations publish them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LocalPartitions {
    /// Their engines run and answer queries.
    pub serving: BTreeSet<u16>,
    /// Held, but their engines are starting (restore, replay start) or stopping (hand-over).
    pub moving: BTreeSet<u16>,
}

impl LocalPartitions {
    /// Every partition held here, serving or moving.
    pub fn held(&self) -> BTreeSet<u16> {
        self.serving.union(&self.moving).copied().collect()
    }
}

/// Where a customer query goes.
pub(crate) enum Route {
    /// This replica's engines serve the partition: ask them.
    Local,
    /// Answered already: the owner's answer, or why there is none.
    Answered(Response),
}

/// A partition's lease holder and where it is reached.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Owner {
    pub member: String,
    pub url: Option<String>,
}

/// What a replica needs to pass queries on.
pub(crate) struct Replicas {
    me: MemberName,
    count: PartitionCount,
    leases: Leases,
    addresses: String,
    local: watch::Receiver<LocalPartitions>,
    /// Looks owners up; one connection, made on the first request passed on and again
    /// after one breaks.
    redis: Connector,
    conn: Mutex<Option<RedisConn>>,
    client: Client<HttpConnector, Body>,
    metrics: PerLabel<Forwarded, IntCounter>,
}

impl Replicas {
    pub fn new(
        (me, count, group): (MemberName, PartitionCount, &str),
        local: watch::Receiver<LocalPartitions>,
        redis: Connector,
        metrics: PerLabel<Forwarded, IntCounter>,
    ) -> Arc<Self> {
        let mut connector = HttpConnector::new();
        connector.set_connect_timeout(Some(CONNECT_TIMEOUT));
        connector.set_nodelay(true);
        Arc::new(Self {
            me,
            count,
            // Only the key is used: the lease time does not matter to a reader.
            leases: Leases::new(group, Duration::from_secs(1)),
            addresses: Membership::addresses_key(group),
            local,
            redis,
            conn: Mutex::new(None),
            client: Client::builder(TokioExecutor::new()).build(connector),
            metrics,
        })
    }

    /// This replica's name, for [`SERVED_BY`].
    pub fn me(&self) -> &MemberName {
        &self.me
    }

    /// `partitions.count`.
    pub(super) fn partitions(&self) -> PartitionCount {
        self.count
    }

    /// Where the query for `customer_id` in `request` goes; passes it on when another
    /// replica serves its partition.
    pub async fn route(&self, customer_id: &str, uri: &Uri, headers: &HeaderMap) -> Route {
        let p = self.count.of(customer_id);
        let local = self.local.borrow().clone();
        if local.serving.contains(&p) {
            return Route::Local;
        }
        if local.moving.contains(&p) {
            return Route::Answered(self.moving_here(p));
        }
        if let Some(by) = headers.get(&FORWARDED_BY) {
            self.count(Forwarded::LoopRefused);
            let by = String::from_utf8_lossy(by.as_bytes()).into_owned();
            return Route::Answered(retry_soon(&format!(
                "partition {p} is not served by replica {}, to which replica {by} passed this \
                 request on: ownership of the partition is moving; try again shortly",
                self.me
            )));
        }
        let owner = match self.owner(p).await {
            Ok(owner) => owner,
            Err(e) => {
                self.count(Forwarded::OwnerUnknown);
                return Route::Answered(retry_soon(&format!(
                    "cannot look up the owner of partition {p} in Redis ({e}); try again shortly"
                )));
            }
        };
        let Some(owner) = owner else {
            self.count(Forwarded::OwnerUnknown);
            return Route::Answered(retry_soon(&format!(
                "partition {p} has no owner right now: it is being handed over between \
                 replicas; try again shortly"
            )));
        };
        if owner.member == self.me.as_str() {
            // Held here since the partitions were published: it is being started.
            return Route::Answered(self.moving_here(p));
        }
        let Some(url) = owner.url else {
            self.count(Forwarded::OwnerUnknown);
            return Route::Answered(retry_soon(&format!(
                "partition {p} is owned by replica {}, which has published no URL to reach it \
                 by (is it a churnd without partitions.advertise_url?); try again shortly",
                owner.member
            )));
        };
        match self.pass_on(&url, uri, headers).await {
            Ok(response) => {
                self.count(Forwarded::Answered);
                Route::Answered(response)
            }
            Err(e) => {
                self.count(Forwarded::OwnerUnreachable);
                tracing::warn!(partition = p, owner = %owner.member, %url, error = %e, "the owner of a partition did not answer a request passed on to it");
                Route::Answered(super::error(
                    StatusCode::BAD_GATEWAY,
                    &format!(
                        "partition {p} is owned by replica {} at {url}, which did not answer: {e}",
                        owner.member
                    ),
                ))
            }
        }
    }

    fn count(&self, outcome: Forwarded) {
        self.metrics.get(outcome).inc();
    }

    fn moving_here(&self, p: u16) -> Response {
        retry_soon(&format!(
            "partition {p} is being restored or handed over by replica {}; try again shortly",
            self.me
        ))
    }

    /// The holder of `partition`'s lease and its URL; `None` when nobody holds it.
    async fn owner(&self, partition: u16) -> Result<Option<Owner>, String> {
        let mut owners = self.lookup(&[partition]).await?;
        Ok(owners.pop().flatten())
    }

    /// Every partition's lease holder and its URL, partition `p`'s at index `p`.
    pub(super) async fn owners(&self) -> Result<Vec<Option<Owner>>, String> {
        let every: Vec<u16> = (0..self.count.get()).collect();
        self.lookup(&every).await
    }

    /// The holders of `partitions`' leases and their URLs, in one round trip.
    async fn lookup(&self, partitions: &[u16]) -> Result<Vec<Option<Owner>>, String> {
        let mut conn = {
            let mut kept = self.conn.lock().await;
            match kept.as_ref() {
                Some(c) => c.clone(),
                None => {
                    let c = self.redis.connect_once().await?;
                    kept.insert(c).clone()
                }
            }
        };
        let leases: Vec<String> = partitions.iter().map(|&p| self.leases.key(p)).collect();
        let result = lookup(&mut conn, &leases, &self.addresses).await;
        result.map_err(|e| {
            if self.redis.failed(&e) {
                if let Ok(mut kept) = self.conn.try_lock() {
                    *kept = None;
                }
            }
            self.redis.describe(&e)
        })
    }

    /// Sends the request to `base` (the owner's URL) and collects its answer.
    pub(super) async fn pass_on(
        &self,
        base: &str,
        uri: &Uri,
        headers: &HeaderMap,
    ) -> Result<Response, String> {
        let path = uri.path_and_query().map_or("/", |p| p.as_str());
        let target = format!("{}{path}", base.trim_end_matches('/'));
        let mut request = Request::get(&target)
            .header(&FORWARDED_BY, self.me.as_str())
            .body(Body::empty())
            .map_err(|e| format!("{target} is not a URL: {e}"))?;
        for name in [header::AUTHORIZATION, header::ACCEPT] {
            if let Some(value) = headers.get(&name) {
                request.headers_mut().insert(name, value.clone());
            }
        }
        let answer = async {
            let response = self.client.request(request).await.map_err(describe)?;
            let (parts, body) = response.into_parts();
            let body = axum::body::to_bytes(Body::new(body), MAX_ANSWER)
                .await
                .map_err(|e| format!("its answer broke off: {e}"))?;
            Ok::<_, String>((parts, body))
        };
        let (parts, body) = tokio::time::timeout(FORWARD_TIMEOUT, answer)
            .await
            .map_err(|_| format!("no answer within {FORWARD_TIMEOUT:?}"))??;
        let mut response = Response::new(Body::from(body));
        *response.status_mut() = parts.status;
        for name in [
            header::CONTENT_TYPE,
            header::RETRY_AFTER,
            header::WWW_AUTHENTICATE,
            SERVED_BY,
        ] {
            if let Some(value) = parts.headers.get(&name) {
                response.headers_mut().insert(name, value.clone());
            }
        }
        Ok(response)
    }
}

/// The client's error with its cause (hyper-util's own says only "client error (Connect)").
fn describe(e: hyper_util::client::legacy::Error) -> String {
    let mut text = e.to_string();
    let mut source = std::error::Error::source(&e);
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

/// One round trip: the leases' holders and every member's URL.
async fn lookup(
    conn: &mut RedisConn,
    leases: &[String],
    addresses: &str,
) -> Result<Vec<Option<Owner>>, RedisError> {
    let mut pipe = redis::pipe();
    for lease in leases {
        pipe.cmd("GET").arg(lease);
    }
    pipe.cmd("HGETALL").arg(addresses);
    let mut replies: Vec<redis::Value> = pipe.query_async(conn).await?;
    let urls: std::collections::HashMap<String, String> =
        redis::from_redis_value(replies.pop().unwrap_or(redis::Value::Nil))?;
    replies
        .into_iter()
        .map(|reply| {
            let holder: Option<String> = redis::from_redis_value(reply)?;
            Ok(holder.map(|token| {
                let member = holder_member(&token).to_string();
                Owner {
                    url: urls.get(&member).cloned(),
                    member,
                }
            }))
        })
        .collect()
}

/// The member of a lease's value, `<member>#<run>:<epoch>`.
fn holder_member(token: &str) -> &str {
    token.rsplit_once('#').map_or(token, |(member, _)| member)
}

/// 503 with `Retry-After`: the partition is moving, and will be served in a moment.
pub(super) fn retry_soon(message: &str) -> Response {
    let mut response = super::error(StatusCode::SERVICE_UNAVAILABLE, message);
    response
        .headers_mut()
        .insert(header::RETRY_AFTER, HeaderValue::from_static(RETRY_AFTER));
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_member_is_read_from_the_lease() {
        assert_eq!(holder_member("churnd-1#3:17"), "churnd-1");
        assert_eq!(holder_member("a#b#2:1"), "a#b");
        assert_eq!(holder_member("odd"), "odd");
    }

    #[test]
    fn outcomes_are_the_documented_label_values() {
        assert_eq!(
            Forwarded::ALL.map(Forwarded::as_str),
            [
                "answered",
                "owner_unknown",
                "owner_unreachable",
                "loop_refused"
            ]
        );
    }
}
