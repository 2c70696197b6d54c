//! The HTTP API: `/metrics`, `/healthz`, `/readyz`, `/v1/customers/{id}`, `/v1/summary`.
//!
//! Health and metrics never wait on the engine, so they answer even when it is saturated;
//! customer queries go to the engine over a channel and are answered between batches.

use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Path, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde_json::json;
use tokio::sync::{mpsc, oneshot};

use crate::engine::{CustomerView, Summary};
use crate::health::Health;
use crate::metrics::Metrics;

/// How long a customer query may wait for the engine.
const QUERY_TIMEOUT: Duration = Duration::from_secs(5);

/// A question for the engine, answered between batches.
pub enum Query {
    Customer(String, oneshot::Sender<Option<CustomerView>>),
    Summary(oneshot::Sender<Summary>),
}

#[derive(Clone)]
pub struct AppState {
    pub metrics: Metrics,
    pub health: Arc<Health>,
    pub queries: mpsc::Sender<Query>,
}

pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/v1/customers/{id}", get(customer))
        .route("/v1/summary", get(summary))
        .with_state(state)
}

async fn metrics(State(state): State<AppState>) -> impl IntoResponse {
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

/// Sends a query to the engine and waits for the answer.
async fn ask<T>(
    state: &AppState,
    query: impl FnOnce(oneshot::Sender<T>) -> Query,
) -> Result<T, Response> {
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

async fn customer(State(state): State<AppState>, Path(id): Path<String>) -> Response {
    match ask(&state, |tx| Query::Customer(id, tx)).await {
        Ok(Some(view)) => Json(view).into_response(),
        Ok(None) => error(StatusCode::NOT_FOUND, "no such customer"),
        Err(response) => response,
    }
}

async fn summary(State(state): State<AppState>) -> Response {
    match ask(&state, Query::Summary).await {
        Ok(summary) => Json(summary).into_response(),
        Err(response) => response,
    }
}
