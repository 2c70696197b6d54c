//! Model reloads: on SIGHUP and when the model file changes. A file that fails validation is
//! refused with a logged reason and a counted failure; the previous model keeps serving.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::metrics::{ModelMetrics, ModelReload};
use crate::model::{fingerprint, Model, ModelError};

/// Serves the model in `bytes`, read from `path`, if it is valid; whether it now serves.
fn reload(
    path: &Path,
    bytes: Result<Vec<u8>, std::io::Error>,
    why: &str,
    models: &watch::Sender<Arc<Model>>,
    metrics: &ModelMetrics,
) -> bool {
    let model = bytes
        .map_err(|source| ModelError::Read {
            path: path.to_owned(),
            source,
        })
        .and_then(|bytes| Model::from_slice(&bytes, path));
    match model {
        Ok(model) => {
            tracing::info!(version = model.version(), path = %path.display(), why, "model reloaded");
            metrics.reloaded(ModelReload::Success);
            models.send_replace(Arc::new(model));
            true
        }
        Err(error) => {
            tracing::error!(%error, why, "model reload refused; the previous model keeps serving");
            metrics.reloaded(ModelReload::Failure);
            false
        }
    }
}

/// Watches until shutdown. `interval`: how often the file is checked; `None` turns file
/// watching off (SIGHUP still reloads). `served` is the
/// fingerprint of the bytes the serving model was loaded from ([`Model::load_fingerprinted`]):
/// a file that differs from them is a change, even if it was replaced before this started.
/// Each check reads the file once and, if it changed, loads the model from those same bytes.
///
/// A file that changes back to the bytes being served (seen half-written by a writer that
/// rewrites it in place, then whole) is no new model: swapping it in would still make the
/// engine re-check every customer, moving their checks and so the moments their tasks are
/// raised.
pub async fn run(
    path: PathBuf,
    interval: Option<Duration>,
    served: u64,
    models: watch::Sender<Arc<Model>>,
    metrics: ModelMetrics,
    shutdown: CancellationToken,
) {
    let mut hangup = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) {
        Ok(s) => Some(s),
        Err(e) => {
            tracing::warn!(error = %e, "cannot listen for SIGHUP; model reloads only on file change");
            None
        }
    };
    let watching = interval.is_some();
    let mut ticker = tokio::time::interval(interval.unwrap_or(Duration::from_secs(3600)));
    let mut last = served;
    let mut serving = served;
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            Some(()) = async { match hangup.as_mut() { Some(h) => h.recv().await, None => std::future::pending().await } } => {
                let bytes = std::fs::read(&path);
                if let Ok(bytes) = &bytes {
                    last = fingerprint(bytes);
                }
                if reload(&path, bytes, "SIGHUP", &models, &metrics) {
                    serving = last;
                }
            }
            _ = ticker.tick(), if watching => {
                // A file missing for a moment (replaced by delete and create) is no change.
                let Ok(bytes) = std::fs::read(&path) else { continue };
                let now = fingerprint(&bytes);
                if now == last {
                    continue;
                }
                last = now;
                if now == serving {
                    tracing::info!(path = %path.display(), "model file back to the model being served; nothing to reload");
                } else if reload(&path, Ok(bytes), "file changed", &models, &metrics) {
                    serving = now;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::tests::recency_only_model_file;

    fn write(path: &Path, version: &str) {
        let mut file = recency_only_model_file();
        file.version = version.into();
        std::fs::write(path, serde_json::to_string(&file).unwrap()).unwrap();
    }

    #[tokio::test]
    async fn a_file_replaced_between_the_load_and_the_watch_is_reloaded() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("model.json");
        write(&path, "loaded");
        let (model, served) = Model::load_fingerprinted(&path).unwrap();
        // Replaced before the watcher takes its first look.
        write(&path, "replaced");
        let (tx, mut rx) = watch::channel(Arc::new(model));
        let shutdown = CancellationToken::new();
        let watcher = tokio::spawn(run(
            path,
            Some(Duration::from_millis(10)),
            served,
            tx,
            crate::metrics::Metrics::new().model,
            shutdown.clone(),
        ));
        tokio::time::timeout(Duration::from_secs(30), rx.changed())
            .await
            .expect("the replaced file is loaded")
            .unwrap();
        assert_eq!(rx.borrow().version(), "replaced");
        shutdown.cancel();
        watcher.await.unwrap();
    }

    #[tokio::test]
    async fn a_file_seen_half_written_then_whole_again_is_not_reloaded() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("model.json");
        write(&path, "loaded");
        let whole = std::fs::read(&path).unwrap();
        let (model, served) = Model::load_fingerprinted(&path).unwrap();
        let (tx, mut rx) = watch::channel(Arc::new(model));
        let metrics = crate::metrics::Metrics::new().model;
        let shutdown = CancellationToken::new();
        let watcher = tokio::spawn(run(
            path.clone(),
            Some(Duration::from_millis(10)),
            served,
            tx,
            metrics.clone(),
            shutdown.clone(),
        ));
        // Rewritten in place: truncated (seen, refused), then the same bytes again.
        std::fs::write(&path, b"").unwrap();
        let failures = || metrics.reloads.get(ModelReload::Failure).get();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        while failures() == 0 {
            assert!(
                tokio::time::Instant::now() < deadline,
                "the empty file is seen"
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        std::fs::write(&path, &whole).unwrap();
        // Some checks of the whole file again, then a real change.
        tokio::time::sleep(Duration::from_millis(200)).await;
        write(&path, "replaced");
        tokio::time::timeout(Duration::from_secs(30), rx.changed())
            .await
            .expect("the replaced file is loaded")
            .unwrap();
        assert_eq!(rx.borrow().version(), "replaced");
        assert_eq!(
            metrics.reloads.get(ModelReload::Success).get(),
            1,
            "only the new model was loaded, not the one served again"
        );
        shutdown.cancel();
        watcher.await.unwrap();
    }
}
