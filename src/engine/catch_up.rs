//! Time while catching up on a backlog, under the wall clock.
//!
//! A backlog (a backfill of history, or what piled up while churnd was down) holds purchases
//! not read yet. Judging silence at wall time while reading it would task customers whose
//! later purchase is still waiting in it. So while churnd reads the past, "now" is the event
//! time it has reached, never past the wall clock: silence is judged as a replay under the
//! event clock would judge it. An event read more than [`PAST_AFTER_SECS`] after its own time
//! is the past being read (the entry IDs of a backfill are all recent, so they cannot tell);
//! only those events move the position, so that live events read between them do not carry
//! it to the present. The source says when reading has reached the end: a read that found
//! every stream's end and brought nothing from the past ends the catch-up, and wall time
//! rules again.
//!
//! Nothing a silence check decides while catching up is written (every task raised then is
//! held back or expired), and what a check does keep, the budgets' picture of the candidates
//! a day brings, forgets a day's candidates with a half-life of [`HALF_LIFE_DAYS`]. So checks
//! that fall due more than [`CHECKS_WITHIN_SECS`] before the wall clock wait until then: a
//! year's backfill makes each silent customer's checks of the last eight weeks, not of the
//! whole year. The customers whose checks waited are all checked once those weeks begin, and
//! the budgets learn what a day brings from there.
//!
//! A snapshot says nothing of how much input is left (what piled up while churnd was
//! stopped, or the rest of a backfill), so an engine restored from one judges no silence
//! until its first read says where reading stands: a backlog is being read (the past moves
//! the position) or was all read.

use crate::decide::HALF_LIFE_DAYS;
use crate::time::{UnixSeconds, DAY};

/// An event read more than this long after its time is the past being read. Small: a live
/// event read late by more only holds silence checks back to its time until the source
/// reaches the end, while a large value would let checks run ahead of unread events.
pub(crate) const PAST_AFTER_SECS: u32 = 60;

/// A read at the end whose events from the past are all within this of the wall clock ends
/// catching up too: producers whose `ts` trail the Redis clock by more than
/// [`PAST_AFTER_SECS`] (a delayed pipeline) would otherwise keep churnd catching up, and
/// holding every task back, for as long as traffic never pauses.
pub(crate) const END_WITHIN_SECS: u32 = 3_600;

/// While catching up, silence checks wait until this long before the wall clock: eight of
/// the budgets' half-lives, after which a day's candidates weigh 0.4 % in the picture of
/// priorities (and less in the running count of candidates a day, which keeps 0.7 a day).
pub(crate) const CHECKS_WITHIN_SECS: u32 = 8 * HALF_LIFE_DAYS as u32 * DAY;

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(crate) struct CatchUp {
    /// The latest event time of the past read so far; `None` when not catching up.
    position: Option<UnixSeconds>,
    /// The current batch has brought an event from the past.
    past_in_batch: bool,
    /// Restored, and no batch read since: whether a backlog is being read is not known.
    awaiting_read: bool,
}

impl CatchUp {
    /// Time for an engine restored from a snapshot: unknown until the first read.
    pub fn restored() -> Self {
        Self {
            awaiting_read: true,
            ..Self::default()
        }
    }

    /// Whether silence may be judged: not between a restore and the first read.
    pub fn judges_silence(&self) -> bool {
        !self.awaiting_read
    }

    /// An event of `time` read at `wall`: moves the position if it is from the past.
    pub fn read(&mut self, time: UnixSeconds, wall: UnixSeconds) {
        if time.saturating_add(PAST_AFTER_SECS) < wall {
            self.past_in_batch = true;
            self.position = Some(self.position.map_or(time, |p| p.max(time)));
        }
    }

    /// The batch is applied at `wall`; `at_end`: the read that brought it found every
    /// stream's end. Returns whether catching up ended with it.
    pub fn batch_done(&mut self, at_end: bool, wall: UnixSeconds) -> bool {
        self.awaiting_read = false;
        let past = std::mem::take(&mut self.past_in_batch);
        let near = self
            .position
            .is_some_and(|p| p.saturating_add(END_WITHIN_SECS) >= wall);
        if at_end && (!past || near) && self.position.is_some() {
            self.position = None;
            return true;
        }
        false
    }

    /// "Now" under the wall clock: the wall clock, or while catching up the position
    /// reached, whichever is earlier.
    pub fn now(&self, wall: UnixSeconds) -> UnixSeconds {
        self.position.map_or(wall, |p| p.min(wall))
    }

    /// The earliest a silence check is worth making at `wall`: while catching up,
    /// [`CHECKS_WITHIN_SECS`] before it; `None` (any time) otherwise.
    pub fn checks_from(&self, wall: UnixSeconds) -> Option<UnixSeconds> {
        self.position
            .map(|_| wall.saturating_sub(CHECKS_WITHIN_SECS))
    }

    /// The event time reached while catching up; `None` otherwise.
    pub fn position(&self) -> Option<UnixSeconds> {
        self.position
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const WALL: u32 = 1_800_000_000;
    const DAY: u32 = 86_400;

    #[test]
    fn the_past_holds_now_back_until_a_read_at_the_end_brings_none() {
        let mut c = CatchUp::default();
        c.read(WALL - 10, WALL);
        assert!(!c.batch_done(true, WALL), "a live event starts nothing");
        assert_eq!(c.now(WALL), WALL);

        c.read(WALL - 300 * DAY, WALL);
        c.read(WALL - 5, WALL); // live, read in between
        c.read(WALL - 200 * DAY, WALL);
        assert_eq!(c.now(WALL), WALL - 200 * DAY);
        assert!(!c.batch_done(false, WALL));
        assert!(
            !c.batch_done(false, WALL),
            "a batch without the past, not at the end"
        );
        c.read(WALL - 100 * DAY, WALL);
        assert!(
            !c.batch_done(true, WALL),
            "at the end, but it brought the past"
        );
        assert_eq!(c.position(), Some(WALL - 100 * DAY));
        assert!(c.batch_done(true, WALL), "an empty read at the end");
        assert_eq!(c.now(WALL + 1), WALL + 1);
        assert_eq!(c.position(), None);
    }

    #[test]
    fn a_read_at_the_end_with_the_past_within_the_hour_ends_it() {
        let mut c = CatchUp::default();
        c.read(WALL - 5 * DAY, WALL);
        c.read(WALL - 300, WALL);
        assert!(!c.batch_done(false, WALL), "not at the end");
        c.read(WALL - 300, WALL);
        assert!(c.batch_done(true, WALL), "a delayed producer, at the end");
    }

    #[test]
    fn a_restore_judges_no_silence_until_a_batch_is_read() {
        assert!(CatchUp::default().judges_silence());
        let mut c = CatchUp::restored();
        assert!(!c.judges_silence());
        assert_eq!(c.now(WALL), WALL, "queries still answer at wall time");
        c.read(WALL - 100 * DAY, WALL);
        assert!(!c.batch_done(false, WALL));
        assert!(c.judges_silence(), "the backlog goes on, at the position");
        assert_eq!(c.now(WALL), WALL - 100 * DAY);
        let mut c = CatchUp::restored();
        assert!(!c.batch_done(true, WALL), "was not catching up");
        assert!(c.judges_silence());
        assert_eq!(c.now(WALL), WALL);
    }

    #[test]
    fn checks_wait_for_the_last_weeks_only_while_catching_up() {
        let mut c = CatchUp::default();
        assert_eq!(c.checks_from(WALL), None);
        c.read(WALL - 300 * DAY, WALL);
        assert_eq!(c.checks_from(WALL), Some(WALL - 56 * DAY));
        c.read(WALL - 10 * DAY, WALL);
        assert_eq!(
            c.checks_from(WALL),
            Some(WALL - 56 * DAY),
            "the wall's, not the position's"
        );
        assert!(!c.batch_done(true, WALL), "that read brought the past");
        assert!(c.batch_done(true, WALL), "an empty read at the end");
        assert_eq!(c.checks_from(WALL), None);
    }

    #[test]
    fn now_never_passes_the_wall_clock() {
        let mut c = CatchUp::default();
        c.read(WALL - DAY, WALL);
        assert_eq!(c.now(WALL - 2 * DAY), WALL - 2 * DAY);
    }
}
