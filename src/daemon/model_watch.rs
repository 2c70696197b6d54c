//! Model reloads: on SIGHUP and when the model file changes. A file that fails validation is
//! refused with a logged reason and a counted failure; the previous model keeps serving.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::metrics::Metrics;
use crate::model::Model;

/// A digest of the file's bytes: a change of content, however quick, however written
/// (in place or by rename), is a change.
pub fn fingerprint(path: &Path) -> Option<u64> {
    std::fs::read(path)
        .ok()
        .map(|bytes| xxhash_rust::xxh3::xxh3_64(&bytes))
}

fn reload(path: &Path, why: &str, models: &watch::Sender<Arc<Model>>, metrics: &Metrics) {
    match Model::load(path) {
        Ok(model) => {
            tracing::info!(version = model.version(), path = %path.display(), why, "model reloaded");
            metrics.model_reloads.with_label_values(&["success"]).inc();
            models.send_replace(Arc::new(model));
        }
        Err(error) => {
            tracing::error!(%error, why, "model reload refused; the previous model keeps serving");
            metrics.model_reloads.with_label_values(&["failure"]).inc();
        }
    }
}

/// Watches until shutdown. `loaded` is the [`fingerprint`] of the file the serving model
/// came from. `interval` of zero turns file watching off.
pub async fn run(
    path: PathBuf,
    loaded: Option<u64>,
    interval: Duration,
    models: watch::Sender<Arc<Model>>,
    metrics: Metrics,
    shutdown: CancellationToken,
) {
    let mut hangup = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) {
        Ok(s) => Some(s),
        Err(e) => {
            tracing::warn!(error = %e, "cannot listen for SIGHUP; model reloads only on file change");
            None
        }
    };
    let watching = !interval.is_zero();
    let mut ticker = tokio::time::interval(if watching {
        interval
    } else {
        Duration::from_secs(3600)
    });
    let mut last = loaded;
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            Some(()) = async { match hangup.as_mut() { Some(h) => h.recv().await, None => std::future::pending().await } } => {
                last = fingerprint(&path);
                reload(&path, "SIGHUP", &models, &metrics);
            }
            _ = ticker.tick(), if watching => {
                let now = fingerprint(&path);
                if now.is_some() && now != last {
                    last = now;
                    reload(&path, "file changed", &models, &metrics);
                }
            }
        }
    }
}
