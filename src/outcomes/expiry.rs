//! Expiry: every task carries the moment past which it is not worth writing. Under the wall
//! clock, while catching up on a backlog, no task is written: one whose moment has passed is
//! expired, the others are held back, since a purchase still unread may make them pointless;
//! either way the customer is looked at again once the backlog is read.

use super::settings::OutcomeSettings;
use crate::decide::{Task, TaskKind};
use crate::time::UnixSeconds;

/// What [`expire`] dropped, by kind.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Dropped {
    /// Raised after their moment (`expires_at`) had passed.
    pub expired: Vec<TaskKind>,
    /// Still fresh, but raised while catching up.
    pub held_back: Vec<TaskKind>,
}

impl Dropped {
    pub fn is_empty(&self) -> bool {
        self.expired.is_empty() && self.held_back.is_empty()
    }
}

/// Stamps `expires_at` on `tasks[first..]` and, when `wall` is given (the wall clock), drops
/// those expired by then, and every one while `catching_up`.
pub fn expire(
    tasks: &mut Vec<Task>,
    first: usize,
    settings: &OutcomeSettings,
    wall: Option<UnixSeconds>,
    catching_up: bool,
) -> Dropped {
    let mut dropped = Dropped::default();
    let mut i = first;
    while i < tasks.len() {
        let task = &mut tasks[i];
        task.expires_at = settings.of(task.kind()).expires_at(task.as_of);
        let Some(wall) = wall else {
            i += 1;
            continue;
        };
        if task.expires_at <= wall {
            dropped.expired.push(task.kind());
        } else if catching_up {
            dropped.held_back.push(task.kind());
        } else {
            i += 1;
            continue;
        }
        tasks.remove(i);
    }
    dropped
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::decide::Detail;
    use crate::time::DAY;

    const T0: u32 = 852_076_800;

    fn task(kind: TaskKind, as_of: UnixSeconds) -> Task {
        Task {
            task_id: format!("{as_of:032x}"),
            customer_id: "c".into(),
            action: "a".into(),
            lifecycle_stage: crate::classify::LifecycleStage::New,
            segment: None,
            as_of,
            expires_at: 0,
            group: crate::decide::Group::Treatment,
            tags: Vec::new(),
            profile: None,
            detail: match kind {
                TaskKind::Convert => Detail::Convert { visits: 3 },
                _ => Detail::Welcome { first_purchase: 0 },
            },
            value: None,
        }
    }

    #[test]
    fn under_the_wall_clock_stale_tasks_expire_and_none_is_written_while_catching_up() {
        let settings = OutcomeSettings::default(); // welcome and convert: 3 days
        let fresh = task(TaskKind::Welcome, T0 + 10 * DAY);
        let stale = task(TaskKind::Convert, T0);
        let wall = Some(T0 + 11 * DAY);
        let mut tasks = vec![stale.clone(), stale.clone(), fresh.clone()];
        let dropped = expire(&mut tasks, 1, &settings, wall, false);
        assert_eq!(dropped.expired, [TaskKind::Convert]);
        assert!(dropped.held_back.is_empty());
        assert_eq!(tasks.len(), 2);
        assert_eq!(tasks[0].expires_at, 0, "before `first`: untouched");
        assert_eq!(tasks[1].expires_at, T0 + 13 * DAY);

        let mut catching_up = vec![stale.clone(), fresh];
        let dropped = expire(&mut catching_up, 0, &settings, wall, true);
        assert_eq!(dropped.expired, [TaskKind::Convert]);
        assert_eq!(dropped.held_back, [TaskKind::Welcome]);
        assert!(catching_up.is_empty());

        let mut replayed = vec![stale];
        assert!(expire(&mut replayed, 0, &settings, None, true).is_empty());
        assert_eq!(replayed[0].expires_at, T0 + 3 * DAY);
    }
}
