//! The open tasks: every task written whose outcome is not yet known, by customer, and the
//! moments their conversion windows close.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::sync::Arc;

use super::records::{Cancel, CancelReason, Converted, OutcomeRecord};
use super::settings::TaskLife;
use crate::classify::Segment;
use crate::decide::{Group, Task, TaskKind};
use crate::time::UnixSeconds;

/// A task written and waiting for its outcome.
#[derive(Debug, Clone, PartialEq)]
pub struct OpenTask {
    pub task_id: Box<str>,
    pub kind: TaskKind,
    pub group: Group,
    pub segment: Option<Segment>,
    pub action: Arc<str>,
    pub raised_at: UnixSeconds,
    pub closes_at: UnixSeconds,
    /// Its cancel has gone out (a purchase dated before the task cancels it without
    /// converting it).
    pub cancelled: bool,
}

/// Every open task, by customer ID: apart from the customer table, so that an eviction
/// loses none.
#[derive(Debug, Default, Clone)]
pub struct OpenTasks {
    by_customer: HashMap<Box<str>, Vec<OpenTask>>,
    /// When windows close, and whose; an entry whose task has gone meanwhile (converted) is
    /// passed over.
    closes: BinaryHeap<Reverse<(UnixSeconds, Box<str>)>>,
    len: usize,
    /// Changes made, for the snapshot's state version.
    changes: u64,
    /// The actions in use, each held once.
    actions: Vec<Arc<str>>,
}

impl OpenTasks {
    /// Tasks open.
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Changes made since the table was created.
    pub fn changes(&self) -> u64 {
        self.changes
    }

    /// Opens `task`, just written, whose life is `life`; a task open already (raised again
    /// by a replay) stays as it is.
    pub fn open(&mut self, task: &Task, life: &TaskLife) {
        self.insert(
            &task.customer_id,
            OpenTask {
                task_id: task.task_id.as_str().into(),
                kind: task.kind(),
                group: task.group,
                segment: task.segment,
                action: task.action.clone(),
                raised_at: task.as_of,
                closes_at: life.closes_at(task.as_of),
                cancelled: false,
            },
        );
    }

    /// Adds an open task of `customer_id` (from [`Self::open`] or a snapshot), unless one
    /// with its ID is open already.
    pub fn insert(&mut self, customer_id: &str, mut task: OpenTask) {
        let tasks = self.by_customer.entry(customer_id.into()).or_default();
        if tasks.iter().any(|t| t.task_id == task.task_id) {
            return;
        }
        task.action = match self.actions.iter().find(|a| **a == task.action) {
            Some(a) => a.clone(),
            None => {
                self.actions.push(task.action.clone());
                task.action
            }
        };
        self.closes
            .push(Reverse((task.closes_at, customer_id.into())));
        tasks.push(task);
        self.len += 1;
        self.changes += 1;
    }

    /// A purchase of `amount` by `customer_id` at `time`. Windows closed by then close
    /// unconverted; every other open task of theirs is cancelled (once), and converted if
    /// the purchase is at or after it was raised.
    pub fn on_purchase(
        &mut self,
        customer_id: &str,
        time: UnixSeconds,
        amount: f64,
        (cancels, outcomes): (&mut Vec<Cancel>, &mut Vec<OutcomeRecord>),
    ) {
        self.close_customer(customer_id, time, outcomes);
        let Some(tasks) = self.by_customer.get_mut(customer_id) else {
            return;
        };
        let before = tasks.len();
        tasks.retain_mut(|t| {
            if !t.cancelled {
                t.cancelled = true;
                cancels.push(Cancel {
                    task_id: t.task_id.to_string(),
                    customer_id: customer_id.to_string(),
                    kind: t.kind,
                    action: t.action.clone(),
                    group: t.group,
                    reason: CancelReason::Purchase,
                    cancelled_at: time,
                });
            }
            if time < t.raised_at {
                return true;
            }
            outcomes.push(outcome(
                customer_id,
                t,
                Some(Converted {
                    revenue: amount,
                    at: time,
                }),
            ));
            false
        });
        let closed = before - tasks.len();
        if tasks.is_empty() {
            self.by_customer.remove(customer_id);
        }
        self.len -= closed;
        self.changes += 1;
    }

    /// Closes, unconverted, every window closed by `now`.
    pub fn close_due(&mut self, now: UnixSeconds, outcomes: &mut Vec<OutcomeRecord>) {
        while let Some(Reverse((at, _))) = self.closes.peek() {
            if *at > now {
                break;
            }
            let Some(Reverse((_, customer))) = self.closes.pop() else {
                break;
            };
            self.close_customer(&customer, now, outcomes);
        }
    }

    /// Closes, unconverted, `customer_id`'s windows closed by `now`.
    fn close_customer(
        &mut self,
        customer_id: &str,
        now: UnixSeconds,
        outcomes: &mut Vec<OutcomeRecord>,
    ) {
        let Some(tasks) = self.by_customer.get_mut(customer_id) else {
            return;
        };
        let before = tasks.len();
        tasks.retain(|t| {
            if t.closes_at > now {
                return true;
            }
            outcomes.push(outcome(customer_id, t, None));
            false
        });
        let closed = before - tasks.len();
        if closed == 0 {
            return;
        }
        if tasks.is_empty() {
            self.by_customer.remove(customer_id);
        }
        self.len -= closed;
        self.changes += 1;
    }

    /// Every open task with its customer, in a stable order (customer ID, then as opened).
    pub fn iter(&self) -> impl Iterator<Item = (&str, &OpenTask)> {
        let mut customers: Vec<&Box<str>> = self.by_customer.keys().collect();
        customers.sort_unstable();
        customers
            .into_iter()
            .flat_map(move |c| self.by_customer[c].iter().map(move |t| (c.as_ref(), t)))
    }

    /// The open tasks of `customer_id`.
    pub fn of(&self, customer_id: &str) -> &[OpenTask] {
        self.by_customer.get(customer_id).map_or(&[], Vec::as_slice)
    }
}

fn outcome(customer_id: &str, t: &OpenTask, converted: Option<Converted>) -> OutcomeRecord {
    OutcomeRecord {
        task_id: t.task_id.to_string(),
        customer_id: customer_id.to_string(),
        kind: t.kind,
        action: t.action.clone(),
        segment: t.segment,
        group: t.group,
        raised_at: t.raised_at,
        converted,
        closed_at: converted.map_or(t.closes_at, |c| c.at),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::time::DAY;

    const T0: u32 = 852_076_800;

    fn open_task(id: &str, raised_at: UnixSeconds) -> OpenTask {
        OpenTask {
            task_id: id.into(),
            kind: TaskKind::Winback,
            group: Group::Treatment,
            segment: Some(Segment::ImportantValue),
            action: "discount_10".into(),
            raised_at,
            closes_at: raised_at + 30 * DAY,
            cancelled: false,
        }
    }

    type Out = (Vec<Cancel>, Vec<OutcomeRecord>);

    fn buy(t: &mut OpenTasks, customer: &str, time: UnixSeconds) -> Out {
        let (mut cancels, mut outcomes) = (Vec::new(), Vec::new());
        t.on_purchase(customer, time, 25.5, (&mut cancels, &mut outcomes));
        (cancels, outcomes)
    }

    #[test]
    fn a_purchase_in_the_window_cancels_and_converts_once() {
        let mut t = OpenTasks::default();
        t.insert("a", open_task("t1", T0));
        t.insert("a", open_task("t1", T0 + DAY)); // raised again by a replay
        t.insert("b", open_task("t2", T0));
        assert_eq!(t.len(), 2);
        let (cancels, outcomes) = buy(&mut t, "a", T0 + 2 * DAY);
        assert_eq!(cancels.len(), 1);
        assert_eq!(cancels[0].task_id, "t1");
        assert_eq!(cancels[0].cancelled_at, T0 + 2 * DAY);
        assert_eq!(outcomes.len(), 1);
        assert_eq!(
            outcomes[0].converted,
            Some(Converted {
                revenue: 25.5,
                at: T0 + 2 * DAY
            })
        );
        assert_eq!(outcomes[0].raised_at, T0, "the first opening counts");
        assert_eq!(t.len(), 1);
        assert_eq!(buy(&mut t, "a", T0 + 3 * DAY), (vec![], vec![]));
    }

    #[test]
    fn a_window_closes_unconverted_once_even_if_the_purchase_comes_late() {
        let mut t = OpenTasks::default();
        t.insert("a", open_task("t1", T0));
        t.insert("a", open_task("t2", T0 + 20 * DAY));
        let mut outcomes = Vec::new();
        t.close_due(T0 + 30 * DAY - 1, &mut outcomes);
        assert!(outcomes.is_empty());
        // A purchase after t1's window (not yet swept) closes t1 first, converts t2.
        let (cancels, outcomes) = buy(&mut t, "a", T0 + 31 * DAY);
        assert_eq!(cancels.len(), 1);
        assert_eq!(cancels[0].task_id, "t2");
        let by_id: Vec<(&str, bool, UnixSeconds)> = outcomes
            .iter()
            .map(|o| (o.task_id.as_str(), o.converted.is_some(), o.closed_at))
            .collect();
        assert_eq!(
            by_id,
            [("t1", false, T0 + 30 * DAY), ("t2", true, T0 + 31 * DAY)]
        );
        assert!(t.is_empty());
        let mut none = Vec::new();
        t.close_due(T0 + 400 * DAY, &mut none);
        assert!(none.is_empty(), "the heap's stale entries close nothing");
    }

    #[test]
    fn a_purchase_dated_before_the_task_cancels_it_but_does_not_convert_it() {
        let mut t = OpenTasks::default();
        t.insert("a", open_task("t1", T0));
        let (cancels, outcomes) = buy(&mut t, "a", T0 - DAY);
        assert_eq!((cancels.len(), outcomes.len()), (1, 0));
        let (cancels, outcomes) = buy(&mut t, "a", T0 + DAY);
        assert_eq!((cancels.len(), outcomes.len()), (0, 1), "cancelled once");
        assert!(outcomes[0].converted.is_some());
    }

    #[test]
    fn iteration_is_in_a_stable_order_and_actions_are_shared() {
        let mut t = OpenTasks::default();
        t.insert("b", open_task("t2", T0));
        t.insert("a", open_task("t1", T0));
        t.insert("a", open_task("t3", T0));
        let order: Vec<(&str, &str)> = t.iter().map(|(c, o)| (c, &*o.task_id)).collect();
        assert_eq!(order, [("a", "t1"), ("a", "t3"), ("b", "t2")]);
        assert!(Arc::ptr_eq(&t.of("a")[0].action, &t.of("b")[0].action));
    }
}
