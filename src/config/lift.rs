//! `[lift]`: the lift report the daemon keeps from the outcome stream (`/v1/lift` and the
//! `churnd_lift_*` gauges). The stream is `outcomes.stream`: the one the outcome records
//! are written to.

use serde::Serialize;

use super::read::Fields;
use super::Section;

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct LiftSettings {
    /// Read the outcome stream and serve `/v1/lift` and the gauges.
    pub enabled: bool,
}

impl Default for LiftSettings {
    fn default() -> Self {
        Self { enabled: true }
    }
}

impl Section for LiftSettings {
    fn from_fields(f: &mut Fields<'_>) -> Self {
        let d = Self::default();
        f.removed(
            "stream",
            "the lift report reads outcomes.stream, the stream the outcome records are written to: set that instead",
        );
        Self {
            enabled: f.get("enabled", d.enabled),
        }
    }
}
