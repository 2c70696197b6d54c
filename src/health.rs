//! Readiness: connected to Redis for reading and writing, with a model loaded and customer
//! state recovered (snapshot loaded, input streams read up to their end once).
//!
//! Each part reports its own state; `/readyz` and the `churnd_ready` gauge read the whole.

use std::sync::atomic::{AtomicBool, Ordering};

use crate::metrics::Metrics;

pub struct Health {
    source: AtomicBool,
    sink: AtomicBool,
    model: AtomicBool,
    state: AtomicBool,
    /// The snapshot is being read: there is no engine to ask yet.
    loading: AtomicBool,
    metrics: Metrics,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Part {
    /// The consumer can read the input streams.
    Source,
    /// The sink can write tasks, dead letters and acknowledgements.
    Sink,
    /// A valid model is loaded.
    Model,
    /// Customer state has caught up with the input streams since start: until then the
    /// API would answer from a partial state.
    State,
}

impl Health {
    pub fn new(metrics: Metrics) -> Self {
        metrics.ready.set(0);
        Self {
            source: AtomicBool::new(false),
            sink: AtomicBool::new(false),
            model: AtomicBool::new(false),
            state: AtomicBool::new(false),
            loading: AtomicBool::new(false),
            metrics,
        }
    }

    /// Marks the snapshot as being read (or done being read).
    pub fn set_loading(&self, loading: bool) {
        self.loading.store(loading, Ordering::Relaxed);
    }

    /// Whether the snapshot is being read: customer queries cannot be answered at all yet.
    pub fn is_loading(&self) -> bool {
        self.loading.load(Ordering::Relaxed)
    }

    fn flag(&self, part: Part) -> &AtomicBool {
        match part {
            Part::Source => &self.source,
            Part::Sink => &self.sink,
            Part::Model => &self.model,
            Part::State => &self.state,
        }
    }

    pub fn set(&self, part: Part, up: bool) {
        self.flag(part).store(up, Ordering::Relaxed);
        self.metrics.ready.set(i64::from(self.is_ready()));
    }

    pub fn is_ready(&self) -> bool {
        self.not_ready().is_empty()
    }

    /// What keeps the daemon from being ready, for people.
    pub fn not_ready(&self) -> Vec<&'static str> {
        let recovering = if self.is_loading() {
            "recovering customer state (loading the snapshot)"
        } else {
            "recovering customer state (replaying the input streams)"
        };
        [
            (Part::Source, "not connected to Redis for reading"),
            (Part::Sink, "not connected to Redis for writing"),
            (Part::Model, "no model loaded"),
            (Part::State, recovering),
        ]
        .into_iter()
        .filter(|(part, _)| !self.flag(*part).load(Ordering::Relaxed))
        .map(|(_, why)| why)
        .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ready_only_when_every_part_is_up() {
        let h = Health::new(Metrics::new());
        assert_eq!(h.not_ready().len(), 4);
        h.set(Part::Source, true);
        h.set(Part::Sink, true);
        h.set(Part::Model, true);
        assert!(!h.is_ready());
        h.set(Part::State, true);
        assert!(h.is_ready());
        h.set(Part::Sink, false);
        assert_eq!(h.not_ready(), vec!["not connected to Redis for writing"]);
    }

    #[test]
    fn says_whether_state_is_loading_or_replaying() {
        let h = Health::new(Metrics::new());
        h.set_loading(true);
        assert!(h.is_loading());
        assert!(h
            .not_ready()
            .contains(&"recovering customer state (loading the snapshot)"));
        h.set_loading(false);
        assert!(h
            .not_ready()
            .contains(&"recovering customer state (replaying the input streams)"));
    }
}
