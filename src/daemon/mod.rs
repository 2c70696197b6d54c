//! The running daemon: wires source → engine → sink with bounded channels, plus the HTTP
//! server, the lag monitor and the model watcher, and shuts them down in order.
//!
//! Shutdown: stop reading, let the engine finish the batches already read, let the sink write
//! and acknowledge them (within `shutdown.drain_timeout_ms`), then stop serving HTTP.

mod engine_task;
mod model_watch;

use std::future::IntoFuture;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;

use crate::config::Settings;
use crate::connection::Connector;
use crate::engine::{Engine, EngineSettings};
use crate::health::{Health, Part};
use crate::http::{self, AppState};
use crate::metrics::Metrics;
use crate::model::{Model, ModelError};
use crate::sink::{self, Sink, SinkSettings};
use crate::source::{self, lag, Source};

/// Effects buffered between engine and sink.
const EFFECT_QUEUE: usize = 2;
/// Engine queries buffered from HTTP.
const QUERY_QUEUE: usize = 64;

#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    #[error(transparent)]
    Model(#[from] ModelError),
    #[error("invalid Redis settings: {0}")]
    Redis(#[from] redis::RedisError),
    #[error("cannot serve HTTP: {0}")]
    Http(std::io::Error),
}

/// Binds the configured HTTP address.
pub async fn bind(settings: &Settings) -> std::io::Result<TcpListener> {
    let addr: SocketAddr = settings
        .http
        .addr
        .parse()
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?;
    TcpListener::bind(addr).await
}

/// Runs until `shutdown` is cancelled, then drains. Fails at start on a bad model file.
pub async fn run(
    settings: Settings,
    listener: TcpListener,
    shutdown: CancellationToken,
) -> Result<(), DaemonError> {
    let metrics = Metrics::new();
    let health = Arc::new(Health::new(metrics.clone()));
    let model = Model::load(&settings.model.path)?;
    tracing::info!(version = model.version(), path = %settings.model.path.display(), "model loaded");
    health.set(Part::Model, true);
    let client = settings.redis_client()?;
    let connector = |role, response_timeout| {
        Connector::new(
            client.clone(),
            &settings.redis,
            response_timeout,
            role,
            metrics.clone(),
        )
    };
    let response_timeout = Duration::from_millis(settings.redis.response_timeout_ms);

    let (batch_tx, batch_rx) = mpsc::channel(settings.source.queue_batches);
    let (effect_tx, effect_rx) = mpsc::channel(EFFECT_QUEUE);
    let (query_tx, query_rx) = mpsc::channel(QUERY_QUEUE);
    let (model_tx, model_rx) = watch::channel(Arc::new(model));

    let source = Source::new(
        settings.source.clone(),
        connector(
            "source",
            source::read_timeout(&settings.source, settings.redis.response_timeout_ms),
        ),
        health.clone(),
        batch_tx,
    );
    let engine = Engine::new(
        EngineSettings::from(&settings),
        model_rx.borrow().clone(),
        metrics.clone(),
    );
    let sink = Sink::new(
        SinkSettings::from(&settings),
        connector("sink", response_timeout),
        health.clone(),
        metrics.clone(),
        effect_rx,
    );
    let abort = CancellationToken::new();
    let source_task = tokio::spawn(source.run(shutdown.clone()));
    let engine_task = tokio::spawn(engine_task::run(
        engine,
        batch_rx,
        effect_tx,
        query_rx,
        model_rx,
        Duration::from_millis(settings.clock.tick_ms),
    ));
    let sink_task = tokio::spawn(sink.run(abort.clone()));
    let lag_task = tokio::spawn(lag::monitor(
        settings.source.clone(),
        connector("monitor", response_timeout),
        metrics.clone(),
        shutdown.clone(),
    ));
    let model_task = tokio::spawn(model_watch::run(
        settings.model.path.clone(),
        Duration::from_millis(settings.model.watch_interval_ms),
        model_tx,
        metrics.clone(),
        shutdown.clone(),
    ));
    let http_stop = CancellationToken::new();
    let app = http::router(AppState {
        metrics: metrics.clone(),
        health: health.clone(),
        queries: query_tx,
    });
    let http_addr = listener.local_addr().map_err(DaemonError::Http)?;
    let http_task = tokio::spawn(
        axum::serve(listener, app)
            .with_graceful_shutdown(http_stop.clone().cancelled_owned())
            .into_future(),
    );
    tracing::info!(
        http = %http_addr,
        streams = ?settings.source.streams,
        group = %settings.source.group,
        consumer = %settings.source.consumer,
        clock = ?settings.clock.mode,
        "churnd running"
    );

    shutdown.cancelled().await;
    tracing::info!("shutdown requested: finishing the batches in flight");
    let drain = async {
        let _ = source_task.await;
        let _ = engine_task.await;
        let _ = sink_task.await;
    };
    tokio::pin!(drain);
    let timeout = sink::drain_timeout(&settings);
    if tokio::time::timeout(timeout, &mut drain).await.is_ok() {
        tracing::info!("drained: every entry read was processed and acknowledged");
    } else {
        tracing::warn!(
            ?timeout,
            "drain timed out; unacknowledged entries will be redelivered on restart"
        );
        abort.cancel();
        let _ = tokio::time::timeout(Duration::from_secs(2), drain).await;
    }
    let _ = lag_task.await;
    let _ = model_task.await;
    http_stop.cancel();
    match http_task.await {
        Ok(Err(e)) => Err(DaemonError::Http(e)),
        _ => Ok(()),
    }
}
