//! The services beside the engines: the HTTP API, the lag monitor, the model watcher and the
//! lift report's reader. They run alike whether this process owns every partition or holds
//! some by lease; starting and stopping them in one place keeps the two start paths from
//! drifting apart.
//!
//! They start in two steps, because HTTP comes first (probes get answers while a snapshot
//! loads) and the others only once the engines are about to run: [`serve`], then
//! [`Serving::start`].

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::{lift, model_watch, DaemonError, QUERY_QUEUE};
use crate::config::{redact_url, Interval, Secret, Settings};
use crate::connection::Connector;
use crate::decide::uplift::UpliftBook;
use crate::health::Health;
use crate::http::serve::Limits;
use crate::http::{self, AppState, LocalPartitions, Query, Replicas};
use crate::lift::report::Report;
use crate::metrics::{Metrics, RedisRole};
use crate::model::Model;
use crate::sink::{self, SinkSettings};
use crate::source::lag;

/// What the services feed the engines, for whoever runs them.
pub(super) struct Feeds {
    /// Customer queries from HTTP.
    pub queries: mpsc::Receiver<Query>,
    /// The model to score with, swapped on a reload.
    pub models: watch::Receiver<Arc<Model>>,
    /// Outcomes per arm from the lift report's reader (`winback.policy = learned`).
    pub uplift: watch::Receiver<Arc<UpliftBook>>,
}

/// HTTP serving, the other services not started yet.
pub(super) struct Serving {
    http: Http,
    /// The model watcher's: where it swaps in a reloaded model, and the fingerprint of the
    /// bytes the serving one was loaded from.
    model: (watch::Sender<Arc<Model>>, u64),
    /// The lift report's reader's: the report goes to `/v1/lift`, the book to the engines.
    lift: (
        watch::Sender<Option<Arc<Report>>>,
        watch::Sender<Arc<UpliftBook>>,
    ),
    /// For the line that says churnd runs.
    token_required: bool,
}

/// How this process holds partitions, for the line that says churnd runs.
pub(super) enum Role<'a> {
    /// Every partition, reading these streams.
    All { streams: &'a [String] },
    /// Those whose leases it holds; other replicas reach its HTTP API at `advertise`.
    Replica { advertise: &'a str },
}

/// Every service running: stopped in order by [`Services::stop`].
pub(super) struct Services {
    http: Http,
    lag: JoinHandle<()>,
    model: JoinHandle<()>,
    /// `None` with `lift.enabled` off.
    lift: Option<JoinHandle<()>>,
}

/// The HTTP server's task and what stops it.
struct Http {
    addr: SocketAddr,
    stop: CancellationToken,
    task: JoinHandle<()>,
}

/// Starts serving HTTP on `listener`, with `replicas` to pass queries on to under
/// `partitions.ownership = leases`, and `model` (with the fingerprint of its bytes) to serve
/// until the model watcher swaps it.
pub(super) fn serve(
    listener: TcpListener,
    (settings, metrics): (&Settings, &Metrics),
    (health, customer_token): (&Arc<Health>, Option<Secret>),
    replicas: Option<Arc<Replicas>>,
    (model, fingerprint): (Model, u64),
) -> Result<(Serving, Feeds), DaemonError> {
    let (query_tx, queries) = mpsc::channel(QUERY_QUEUE);
    let (report_tx, report_rx) = watch::channel(None);
    let (model_tx, models) = watch::channel(Arc::new(model));
    let (uplift_tx, uplift) = watch::channel(Arc::default());
    let token_required = customer_token.is_some();
    let state = AppState {
        metrics: metrics.clone(),
        health: health.clone(),
        queries: query_tx,
        customer_token: customer_token.map(Arc::new),
        lift: settings.lift.enabled.then_some(report_rx),
        replicas,
    };
    let addr = listener.local_addr().map_err(DaemonError::Http)?;
    let stop = CancellationToken::new();
    let task = tokio::spawn(http::serve::serve(
        listener,
        http::router(state),
        Limits::from(&settings.http),
        metrics.http.clone(),
        stop.clone(),
    ));
    let serving = Serving {
        http: Http { addr, stop, task },
        model: (model_tx, fingerprint),
        lift: (report_tx, uplift_tx),
        token_required,
    };
    let feeds = Feeds {
        queries,
        models,
        uplift,
    };
    Ok((serving, feeds))
}

impl Serving {
    /// The address HTTP is served on.
    pub fn addr(&self) -> SocketAddr {
        self.http.addr
    }

    /// Starts the lag monitor (of the partitions `held`), the model watcher and the lift
    /// report's reader, all until `shutdown`, then logs that churnd runs.
    pub fn start(
        self,
        (settings, metrics): (&Settings, &Metrics),
        connector: &impl Fn(RedisRole, Duration) -> Connector,
        held: watch::Receiver<LocalPartitions>,
        role: Role<'_>,
        shutdown: &CancellationToken,
    ) -> Services {
        let response_timeout = settings.redis.response_timeout.get();
        let lag = tokio::spawn(lag::monitor(
            settings.partitioned_source(),
            sink::backlog::Backlog::new(
                SinkSettings::from(settings).output_caps(),
                metrics.output.clone(),
            ),
            connector(RedisRole::Monitor, response_timeout),
            (
                metrics.source.clone(),
                lag::PartitionLag {
                    count: settings.partitions.count,
                    gauge: metrics.ownership.partition_lag.clone(),
                    held,
                },
            ),
            shutdown.clone(),
        ));
        let (model_tx, fingerprint) = self.model;
        let model = tokio::spawn(model_watch::run(
            settings.model.path.clone(),
            settings.model.watch_interval.map(Interval::get),
            fingerprint,
            model_tx,
            metrics.model.clone(),
            shutdown.clone(),
        ));
        let lift = lift::spawn(
            settings,
            connector(RedisRole::Lift, response_timeout + lift::BLOCK),
            metrics.lift.clone(),
            self.lift,
            shutdown.clone(),
        );
        let (streams, advertise, message) = match role {
            Role::All { streams } => (Some(streams), None, "churnd running"),
            Role::Replica { advertise } => (
                None,
                Some(advertise),
                "churnd running as a replica that owns partitions by lease",
            ),
        };
        tracing::info!(
            http = %self.http.addr,
            customer_token = if self.token_required { "required" } else { "off" },
            redis = %redact_url(&settings.redis.url),
            tls = settings.redis.uses_tls(),
            streams = streams.map(tracing::field::debug),
            group = %settings.source.group,
            consumer = %settings.source.consumer,
            clock = ?settings.clock.mode,
            advertise = advertise.map(tracing::field::display),
            "{message}"
        );
        Services {
            http: self.http,
            lag,
            model,
            lift,
        }
    }

    /// For a start that ends before the other services start: HTTP stops.
    pub async fn stop(self) {
        self.http.stop().await;
    }
}

impl Services {
    /// Once the engines are done: the tasks end (`shutdown` is cancelled if it is not yet,
    /// as when a replica stops on an error), then HTTP, which answers until the last.
    pub async fn stop(self, shutdown: &CancellationToken) {
        shutdown.cancel();
        let _ = self.lag.await;
        let _ = self.model.await;
        if let Some(task) = self.lift {
            let _ = task.await;
        }
        self.http.stop().await;
    }

    /// For a start that fails once they run: HTTP stops taking connections without waiting
    /// for those open, and the other tasks end with `shutdown`.
    pub fn abandon(self) {
        self.http.stop.cancel();
    }
}

impl Http {
    /// Stops taking connections and waits for those open to close.
    async fn stop(self) {
        self.stop.cancel();
        let _ = self.task.await;
    }
}
