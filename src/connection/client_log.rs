//! The redis crate's own log lines, at most one per line of its source every [`QUIET`].
//!
//! While every node of a cluster is down, the crate's cluster client retries its recovery
//! without pausing and logs every try: measured with three local nodes shut down under a
//! running churnd, about 300 lines in the first second, then 7–15 a second for as long as
//! the outage lasted. churnd's own lines already tell the story at the pace of its back-off
//! ("cannot connect to Redis; retrying", with the role, the attempt and the error); the
//! crate's add which node failed and why. One line per place in the crate's source every
//! ten seconds keeps that detail and spares the log pipeline.
//!
//! The crate logs through `log`; tracing-log hands each record to the filters with its
//! target, file and line, which is what a place is told apart by.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use tracing::{Level, Metadata};

/// How long the same line of the redis crate stays quiet after it was logged.
pub const QUIET: Duration = Duration::from_secs(10);

/// Where in the crate a line comes from.
type Place = (String, Option<String>, Option<u32>, Level);

/// Decides, per place in the redis crate, whether a line may be logged now.
#[derive(Debug)]
pub struct Throttle {
    quiet: Duration,
    last: Mutex<HashMap<Place, Instant>>,
}

impl Throttle {
    pub fn new(quiet: Duration) -> Self {
        Self {
            quiet,
            last: Mutex::new(HashMap::new()),
        }
    }

    /// Whether an event with this metadata may be logged at `now`: always, unless it comes
    /// from the redis crate and the same place logged less than the quiet time ago.
    pub fn allow(&self, meta: &Metadata<'_>, now: Instant) -> bool {
        let target = meta.target();
        if !(target == "redis" || target.starts_with("redis::")) || meta.is_span() {
            return true;
        }
        let place = (
            target.to_string(),
            meta.file().map(str::to_string),
            meta.line(),
            *meta.level(),
        );
        let mut last = self.last.lock().unwrap_or_else(|e| e.into_inner());
        match last.get(&place) {
            Some(at) if now.saturating_duration_since(*at) < self.quiet => false,
            _ => {
                last.insert(place, now);
                true
            }
        }
    }
}

/// A per-layer filter that lets the redis crate's lines through as [`Throttle`] allows.
pub fn filter() -> tracing_subscriber::filter::FilterFn<impl Fn(&Metadata<'_>) -> bool> {
    let throttle = Throttle::new(QUIET);
    tracing_subscriber::filter::filter_fn(move |meta| throttle.allow(meta, Instant::now()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use tracing::callsite::Identifier;
    use tracing::field::FieldSet;
    use tracing::metadata::Kind;

    struct Site;
    impl tracing::Callsite for Site {
        fn set_interest(&self, _: tracing::subscriber::Interest) {}
        fn metadata(&self) -> &Metadata<'_> {
            unreachable!("not registered")
        }
    }
    static SITE: Site = Site;

    fn meta(target: &'static str, line: u32, kind: Kind) -> Metadata<'static> {
        Metadata::new(
            "event",
            target,
            Level::WARN,
            Some("src/cluster_handling/async_connection/mod.rs"),
            Some(line),
            Some(target),
            FieldSet::new(&["message"], Identifier(&SITE)),
            kind,
        )
    }

    #[test]
    fn a_line_of_the_redis_crate_is_quiet_for_the_quiet_time_after_it_was_logged() {
        let throttle = Throttle::new(Duration::from_secs(10));
        let t0 = Instant::now();
        let line = meta(
            "redis::cluster_handling::async_connection",
            1748,
            Kind::EVENT,
        );
        assert!(throttle.allow(&line, t0));
        for ms in [0, 1, 500, 9_999] {
            assert!(
                !throttle.allow(&line, t0 + Duration::from_millis(ms)),
                "{ms}"
            );
        }
        assert!(throttle.allow(&line, t0 + Duration::from_secs(10)));
        assert!(!throttle.allow(&line, t0 + Duration::from_secs(11)));
    }

    #[test]
    fn other_lines_of_the_crate_and_other_crates_are_not_held_back() {
        let throttle = Throttle::new(Duration::from_secs(10));
        let t0 = Instant::now();
        let one = meta(
            "redis::cluster_handling::async_connection",
            1748,
            Kind::EVENT,
        );
        let other = meta(
            "redis::cluster_handling::async_connection",
            1476,
            Kind::EVENT,
        );
        assert!(throttle.allow(&one, t0));
        assert!(throttle.allow(&other, t0), "another place in the crate");
        for target in ["churnd::connection", "redisson", "tokio"] {
            for _ in 0..3 {
                assert!(
                    throttle.allow(&meta(target, 1748, Kind::EVENT), t0),
                    "{target}"
                );
            }
        }
        let span = meta(
            "redis::cluster_handling::async_connection",
            1748,
            Kind::SPAN,
        );
        assert!(throttle.allow(&span, t0), "spans are not lines");
    }
}
