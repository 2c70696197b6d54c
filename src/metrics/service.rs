//! The service as a whole: what was built, whether it is ready, how long recovery took.

use prometheus::{Gauge, IntGauge};

use super::{Registrar, REVISION};

#[derive(Clone)]
pub struct ServiceMetrics {
    /// 1 when `/readyz` answers 200; set by [`crate::health::Health`].
    pub ready: IntGauge,
    /// From start to state recovered; set once by the engine task.
    pub recovery_seconds: Gauge,
}

impl ServiceMetrics {
    pub(super) fn register(r: &mut Registrar) -> Self {
        let build = r.gauge_vec(
            "churnd_build_info",
            "The version and source revision churnd was built from (value 1); revision is the git commit, or unknown.",
            &["version", "revision"],
        );
        build
            .with_label_values(&[env!("CARGO_PKG_VERSION"), REVISION])
            .set(1);
        Self {
            ready: r.gauge(
                "churnd_ready",
                "1 when connected to Redis with a model loaded, customer state recovered and snapshots not failing (see /readyz for the reasons when 0).",
            ),
            recovery_seconds: r.float_gauge(
                "churnd_recovery_duration_seconds",
                "From start to state recovered: snapshot loaded and the input streams replayed to their end.",
            ),
        }
    }
}
