//! The HTTP API: `/metrics`, `/healthz`, `/readyz`, `/v1/customers/{id}`, `/v1/summary`,
//! `/v1/lift`.
//!
//! Health and metrics never wait on the engine, so they answer even when it is saturated;
//! customer queries go to the engine over a channel and are answered between batches; the
//! lift report is the one the lift task last published.
//!
//! Under `partitions.ownership = leases` a customer query for a partition another replica
//! owns is passed on to it ([`forward`]).
//!
//! With `http.customer_token` set, the `/v1/` endpoints (per-customer data) require
//! `Authorization: Bearer <token>`; `/metrics`, `/healthz` and `/readyz` stay open so probes
//! and scrapers need no secret.
//!
//! [`serve`] accepts and serves the connections, within `http.max_connections` and the
//! `http.*_timeout_ms` timeouts.

mod connection;
pub use connection::Close;
mod fleet;
mod forward;
pub use forward::{Forwarded, LocalPartitions, FORWARDED_BY, SERVED_BY};
pub(crate) use forward::{Replicas, Route};
pub(crate) mod serve;

use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Path, Request, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode, Uri};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde_json::json;
use tokio::sync::{mpsc, oneshot};

use crate::config::Secret;
use crate::engine::{CustomerView, Summary};
use crate::health::Health;
use crate::metrics::Metrics;

/// How long a customer query may wait for the engine.
const QUERY_TIMEOUT: Duration = Duration::from_secs(5);

/// A question for the engine, answered between batches.
pub(crate) enum Query {
    Customer(String, oneshot::Sender<Option<CustomerView>>),
    Summary(oneshot::Sender<Summary>),
}

#[derive(Clone)]
pub(crate) struct AppState {
    pub metrics: Metrics,
    pub health: Arc<Health>,
    pub queries: mpsc::Sender<Query>,
    /// The bearer token the customer endpoints require; `None` leaves them open.
    pub customer_token: Option<Arc<Secret>>,
    /// The lift report as the lift task last published it; `None` when `lift.enabled` is
    /// off.
    pub lift: Option<crate::daemon::LiftReport>,
    /// Under `partitions.ownership = leases`: the other replicas, to pass queries for the
    /// partitions they own on to; `None` when this process owns every partition.
    pub replicas: Option<Arc<Replicas>>,
}

pub(crate) fn router(state: AppState) -> Router {
    let mut customers = Router::new()
        .route("/v1/customers/{id}", get(customer))
        .route("/v1/summary", get(summary))
        .route("/v1/lift", get(lift));
    if state.customer_token.is_some() {
        // route_layer: only matched routes are guarded, so an unknown path stays a 404.
        customers = customers.route_layer(middleware::from_fn_with_state(
            state.clone(),
            require_bearer_token,
        ));
    }
    Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .merge(customers)
        .with_state(state)
}

/// Lets the request through only with `Authorization: Bearer <customer_token>`; otherwise
/// answers 401 with a JSON error and a `WWW-Authenticate` challenge (RFC 6750). The token
/// sent is never logged.
async fn require_bearer_token(
    State(state): State<AppState>,
    request: Request,
    next: Next,
) -> Response {
    let Some(expected) = &state.customer_token else {
        return next.run(request).await;
    };
    let (challenge, message) = match bearer_token(request.headers()) {
        Some(given) if token_matches(given, expected.expose()) => return next.run(request).await,
        Some(_) => (
            r#"Bearer realm="churnd", error="invalid_token""#,
            "the bearer token is not valid",
        ),
        None => (
            r#"Bearer realm="churnd""#,
            "this endpoint requires an Authorization: Bearer token",
        ),
    };
    state.metrics.http.unauthorized.inc();
    // Neither the token sent nor the path (it holds a customer ID, chosen by the caller).
    tracing::debug!("refused a customer-endpoint request without a valid bearer token");
    let mut response = error(StatusCode::UNAUTHORIZED, message);
    response.headers_mut().insert(
        header::WWW_AUTHENTICATE,
        HeaderValue::from_static(challenge),
    );
    response
}

/// The token of an `Authorization: Bearer <token>` header (the scheme is case-insensitive).
fn bearer_token(headers: &HeaderMap) -> Option<&[u8]> {
    let value = headers.get(header::AUTHORIZATION)?.as_bytes();
    let space = value.iter().position(|&b| b == b' ')?;
    let (scheme, token) = value.split_at(space);
    if !scheme.eq_ignore_ascii_case(b"bearer") {
        return None;
    }
    let token = token.trim_ascii();
    (!token.is_empty()).then_some(token)
}

/// Compares in time independent of where the bytes differ, so response times do not give
/// the token away byte by byte. A different length is answered at once: the length is not
/// the secret.
fn token_matches(given: &[u8], expected: &str) -> bool {
    use subtle::ConstantTimeEq;
    given.ct_eq(expected.as_bytes()).into()
}

async fn metrics(State(state): State<AppState>) -> impl IntoResponse {
    state.health.refresh();
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        state.metrics.render(),
    )
}

async fn readyz(State(state): State<AppState>) -> Response {
    let reasons = state.health.not_ready();
    if reasons.is_empty() {
        (StatusCode::OK, Json(json!({ "ready": true }))).into_response()
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({ "ready": false, "reasons": reasons })),
        )
            .into_response()
    }
}

fn error(status: StatusCode, message: &str) -> Response {
    (status, Json(json!({ "error": message }))).into_response()
}

/// 503 with `Retry-After: 1`: what is asked for is being built (at start) and will be there
/// in a moment.
fn retry_soon(message: &str) -> Response {
    let mut response = error(StatusCode::SERVICE_UNAVAILABLE, message);
    response
        .headers_mut()
        .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
    response
}

/// Sends a query to the engine and waits for the answer.
async fn ask<T>(
    state: &AppState,
    query: impl FnOnce(oneshot::Sender<T>) -> Query,
) -> Result<T, Response> {
    if state.health.is_loading() {
        // No engine yet: answer at once rather than queue until the query times out.
        return Err(retry_soon(
            "customer state is loading from the snapshot; try again shortly",
        ));
    }
    let (tx, rx) = oneshot::channel();
    let unavailable = || {
        error(
            StatusCode::SERVICE_UNAVAILABLE,
            "the engine is not answering; try again",
        )
    };
    tokio::time::timeout(QUERY_TIMEOUT, state.queries.send(query(tx)))
        .await
        .map_err(|_| unavailable())?
        .map_err(|_| unavailable())?;
    tokio::time::timeout(QUERY_TIMEOUT, rx)
        .await
        .map_err(|_| unavailable())?
        .map_err(|_| unavailable())
}

async fn customer(
    State(state): State<AppState>,
    Path(id): Path<String>,
    // The whole path as asked (the router is not nested), to pass on as it came.
    uri: Uri,
    headers: HeaderMap,
) -> Response {
    if let Some(replicas) = &state.replicas {
        if let Route::Answered(response) = replicas.route(&id, &uri, &headers).await {
            return response;
        }
    }
    let mut response = match ask(&state, |tx| Query::Customer(id, tx)).await {
        Ok(Some(view)) => Json(view).into_response(),
        Ok(None) => error(StatusCode::NOT_FOUND, "no such customer"),
        Err(response) => response,
    };
    if let Some(replicas) = &state.replicas {
        if let Ok(me) = HeaderValue::from_str(replicas.me().as_str()) {
            response.headers_mut().insert(SERVED_BY, me);
        }
    }
    response
}

/// The totals of the customers kept here; under leases, of the whole deployment (each
/// replica asked for its own, [`fleet`]) unless another replica is asking.
async fn summary(State(state): State<AppState>, headers: HeaderMap) -> Response {
    if let Some(replicas) = &state.replicas {
        if !headers.contains_key(&FORWARDED_BY) {
            let local = || -> fleet::LocalSummary {
                let state = state.clone();
                Box::pin(async move { ask(&state, Query::Summary).await })
            };
            return fleet::summary(replicas, local, &headers).await;
        }
    }
    match ask(&state, Query::Summary).await {
        Ok(summary) => Json(summary).into_response(),
        Err(response) => response,
    }
}

/// The lift report, as `churnd report lift --format json` prints it.
async fn lift(State(state): State<AppState>) -> Response {
    let Some(published) = &state.lift else {
        return error(
            StatusCode::NOT_FOUND,
            "the lift report is off (lift.enabled = false)",
        );
    };
    let report = published.borrow().clone();
    match report {
        Some(report) => Json(&*report).into_response(),
        None => retry_soon("the outcome stream is still being read; try again shortly"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(authorization: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(header::AUTHORIZATION, authorization.parse().unwrap());
        h
    }

    #[test]
    fn the_bearer_token_is_read_from_the_authorization_header() {
        assert_eq!(bearer_token(&headers("Bearer abc")), Some(&b"abc"[..]));
        assert_eq!(bearer_token(&headers("bearer  abc ")), Some(&b"abc"[..]));
        assert_eq!(bearer_token(&headers("Basic YWJjOmRlZg==")), None);
        assert_eq!(bearer_token(&headers("Bearer ")), None);
        assert_eq!(bearer_token(&headers("Bearer")), None);
        assert_eq!(bearer_token(&HeaderMap::new()), None);
    }

    #[test]
    fn tokens_match_only_exactly() {
        assert!(token_matches(b"s3cret-token", "s3cret-token"));
        assert!(!token_matches(b"s3cret-tokem", "s3cret-token"));
        assert!(!token_matches(b"s3cret-token-and-more", "s3cret-token"));
        assert!(!token_matches(b"", "s3cret-token"));
    }
}
