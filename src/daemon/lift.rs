//! The lift task: reads the outcome stream from its beginning, then follows it, and keeps
//! the lift report's aggregates (counts and sums per kind × action × segment × group) in
//! memory. Each time it has read something it publishes the report for `/v1/lift` and sets
//! the `churnd_lift_*` gauges, so they are right soon after a restart: the aggregates are
//! rebuilt from the stream, whose length bounds the work. Under `winback.policy = learned` it
//! also publishes the outcomes per arm (an [`UpliftBook`]) for the engine, which swaps it in
//! between batches: the engine never waits on it, and decides deterministically given the
//! book it has.
//!
//! It reads on a connection of its own, with a response timeout longer than its BLOCK (a
//! blocking XREAD on a connection with a shorter one times out, and commands behind it
//! too).

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::connection::{Connector, RedisConn};
use crate::decide::uplift::{LearnSettings, UpliftBook};
use crate::event::EntryId;
use crate::lift::report::{self, Report};
use crate::lift::stream::{self, PAGE};
use crate::lift::{Aggregates, Window};
use crate::metrics::LiftMetrics;

/// How long an XREAD waits for new outcome records.
pub(super) const BLOCK: Duration = Duration::from_secs(2);

/// Skipped records logged at most, each start: the counter counts them all.
const LOGGED_SKIPS: u32 = 20;

/// The report, once the stream has been read to its end (`None` before).
pub(crate) type Published = watch::Receiver<Option<Arc<Report>>>;

/// Where the outcomes per arm go, for learning (`winback.policy = learned`).
pub(super) struct Learning {
    pub settings: LearnSettings,
    pub publish: watch::Sender<Arc<UpliftBook>>,
}

/// Starts the lift report's reader when `lift.enabled`: the report goes to `report`, and
/// under `winback.policy = learned` the lift book to `book`.
pub(super) fn spawn(
    settings: &crate::config::Settings,
    connector: Connector,
    metrics: LiftMetrics,
    (report, book): (
        watch::Sender<Option<Arc<Report>>>,
        watch::Sender<Arc<UpliftBook>>,
    ),
    shutdown: CancellationToken,
) -> Option<tokio::task::JoinHandle<()>> {
    let learned = settings.winback.policy == crate::decide::WinbackPolicy::Learned;
    if learned && !settings.lift.enabled {
        tracing::warn!(
            "winback.policy is learned but lift.enabled is false: no outcomes are read, so win-back priorities keep the stand-in (the churn probability)"
        );
    }
    let learning = learned.then(|| Learning {
        settings: settings.winback.learn,
        publish: book,
    });
    settings.lift.enabled.then(|| {
        tokio::spawn(run(
            settings.outcomes.stream.clone(),
            connector,
            metrics,
            (report, learning),
            shutdown,
        ))
    })
}

/// Reads `stream` until shutdown, publishing the report to `publish` (and the book to
/// `learning`, if given).
pub(super) async fn run(
    stream: String,
    mut connector: Connector,
    metrics: LiftMetrics,
    (publish, learning): (watch::Sender<Option<Arc<Report>>>, Option<Learning>),
    shutdown: CancellationToken,
) {
    let mut aggregates = Aggregates::new(Window::default());
    let mut after = EntryId::default();
    let mut caught_up = false;
    let mut logged = 0u32;
    let mut conn: Option<RedisConn> = None;
    loop {
        let c = match conn.as_mut() {
            Some(c) => c,
            None => match connector.connect(&shutdown).await {
                Some(c) => conn.insert(c),
                None => return,
            },
        };
        // Until caught up, no wait: an empty answer means the end is reached.
        let block = caught_up.then_some(BLOCK.as_millis() as u64);
        let reply = tokio::select! {
            reply = stream::read_after(c, &stream, after, block) => reply,
            _ = shutdown.cancelled() => return,
        };
        let reply = match reply {
            Ok(reply) => {
                connector.succeeded();
                reply
            }
            Err(e) => {
                if connector.failed(&e) {
                    conn = None;
                }
                if !connector.pause(&shutdown).await {
                    return;
                }
                continue;
            }
        };
        let entries = stream::read_entries(&reply);
        let last = stream::add_entries(&entries, &mut aggregates, |id, e| {
            metrics.skipped.get(e.reason()).inc();
            if logged < LOGGED_SKIPS {
                logged += 1;
                tracing::warn!(stream = %stream, entry = %id, error = %e, "outcome record not counted in the lift report");
            }
        });
        metrics.read.inc_by(entries.len() as u64);
        if let Some(last) = last {
            after = last;
        }
        let reached_end = entries.len() < PAGE;
        if reached_end && !caught_up {
            caught_up = true;
            tracing::info!(
                stream = %stream,
                records = aggregates.read,
                used = aggregates.used,
                "lift report built from the outcome stream"
            );
        }
        if caught_up && (!entries.is_empty() || publish.borrow().is_none()) {
            // The book first: once `/v1/lift` shows outcomes, the engine has them too.
            if let Some(l) = &learning {
                l.publish
                    .send_replace(Arc::new(aggregates.uplift_book(l.settings)));
            }
            let report = report::report(&aggregates, &stream);
            metrics.publish(&report);
            publish.send_replace(Some(Arc::new(report)));
        }
    }
}
