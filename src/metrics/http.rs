//! The HTTP server: connections and refusals.

use prometheus::{IntCounter, IntGauge};

use super::labels::PerLabel;
use super::Registrar;
use crate::http::{Close, Forwarded};

#[derive(Clone)]
pub struct HttpMetrics {
    pub unauthorized: IntCounter,
    pub connections: IntGauge,
    pub connections_max: IntGauge,
    pub connections_closed: PerLabel<Close, IntCounter>,
    pub connections_waited: IntCounter,
    pub accept_errors: IntCounter,
    /// Customer queries for a partition another replica owns (`partitions.ownership =
    /// leases`), by what came of passing them on.
    pub forwarded: PerLabel<Forwarded, IntCounter>,
}

impl HttpMetrics {
    pub(super) fn register(r: &mut Registrar) -> Self {
        Self {
            unauthorized: r.counter(
                "churnd_http_unauthorized_total",
                "Requests to the customer endpoints refused for a missing or wrong bearer token.",
            ),
            connections: r.gauge("churnd_http_connections", "HTTP connections open."),
            connections_max: r.gauge(
                "churnd_http_connections_max",
                "The most HTTP connections served at once (http.max_connections).",
            ),
            connections_closed: PerLabel::new(&r.counter_vec(
                "churnd_http_connections_closed_total",
                "HTTP connections churnd closed itself, by reason: header_timeout (no complete request head within http.header_timeout_ms), idle_timeout (no next request within http.idle_timeout_ms), request_timeout (response not handed over within http.request_timeout_ms), evicted (it waited for a request when a new connection needed its place at http.max_connections).",
                &["reason"],
            )),
            connections_waited: r.counter(
                "churnd_http_connections_waited_total",
                "New HTTP connections that had to wait for a place: all http.max_connections were in the middle of a request.",
            ),
            accept_errors: r.counter(
                "churnd_http_accept_errors_total",
                "Failures to accept an HTTP connection (such as too many open files); the listener pauses briefly after each.",
            ),
            forwarded: PerLabel::new(&r.counter_vec(
                "churnd_http_forwarded_requests_total",
                "Customer queries for a partition another replica owns (partitions.ownership = leases), by outcome: answered (passed on to the owner, whose answer was returned), owner_unknown (no replica holds the partition's lease or the owner published no URL: 503), owner_unreachable (the owner did not answer: 502), loop_refused (a request already passed on by another replica, for a partition this one does not serve: 503).",
                &["outcome"],
            )),
        }
    }
}
