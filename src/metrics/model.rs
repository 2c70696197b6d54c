//! The model serving, and its reloads.

use prometheus::{IntCounter, IntGauge, IntGaugeVec};

use super::labels::PerLabel;
use super::Registrar;

/// The outcome of a model reload, the `outcome` label of `churnd_model_reloads_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ModelReload {
    Success,
    Failure,
}

impl ModelReload {
    pub const ALL: [Self; 2] = [Self::Success, Self::Failure];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Success => "success",
            Self::Failure => "failure",
        }
    }
}

super::labels::label_enum!(ModelReload);

/// `churnd_model_info`: the version serving. The engine sets it whenever it swaps models;
/// the version is open (whatever the model file says), so it stays a string.
#[derive(Clone)]
pub struct ModelInfo(IntGaugeVec);

impl ModelInfo {
    /// Makes `version` the only series, at 1.
    pub fn set(&self, version: &str) {
        self.0.reset();
        self.0.with_label_values(&[version]).set(1);
    }
}

/// For the model watcher: reload attempts and whether the last one succeeded.
#[derive(Clone)]
pub struct ModelMetrics {
    pub info: ModelInfo,
    pub reloads: PerLabel<ModelReload, IntCounter>,
    pub last_reload_successful: IntGauge,
}

impl ModelMetrics {
    pub(super) fn register(r: &mut Registrar) -> Self {
        let reloads = r.counter_vec(
            "churnd_model_reloads_total",
            "Model reload attempts, by outcome (success, failure).",
            &["outcome"],
        );
        let m = Self {
            info: ModelInfo(r.gauge_vec(
                "churnd_model_info",
                "The model version serving (value 1).",
                &["version"],
            )),
            reloads: PerLabel::new(&reloads),
            last_reload_successful: r.gauge(
                "churnd_model_last_reload_successful",
                "1 when the last model reload succeeded (or none was tried since start), 0 when it failed and the previous model keeps serving.",
            ),
        };
        m.last_reload_successful.set(1);
        m
    }

    /// Counts a reload attempt and records whether the previous model keeps serving.
    pub fn reloaded(&self, outcome: ModelReload) {
        self.reloads.get(outcome).inc();
        self.last_reload_successful
            .set(i64::from(outcome == ModelReload::Success));
    }
}
