//! Budgets: how many tasks of each action a day affords, and which candidates get them.
//! Pure: the engine owns the [`Budgets`] and hands them to the playbook at each decision;
//! snapshots keep their state. Win-back's actions (`[winback.budgets]`) and the care kinds'
//! (`[tasks.budgets]`) are paced alike, each action on its own.
//!
//! Each budgeted action has a spend per day and a cost per task, so a
//! day affords `floor(per_day / cost)` tasks, counted by churnd's clock (midnight UTC of
//! event time under `clock.mode = event`). Candidates come one at a time, in real time, and
//! the day's best are not known until the day is over; so each action keeps a running
//! picture of the priorities its candidates had over the last days (a histogram of
//! log-priorities, decayed with a [`HALF_LIFE_DAYS`] half-life) and how many candidates a day
//! brings. A candidate is admitted when its priority reaches the quantile of that picture
//! that the day's remaining tasks afford among the candidates still expected today: with
//! `r` tasks left and `n` candidates still to come, the top `r / n` (within the bar's own
//! bucket, which knows no order, by a draw: [`Pacer::passes`]). Whoever is held back stays a
//! candidate and is looked at again the next day (the playbook asks for the check).
//!
//! An action's first day has no count of candidates per day yet: until its first day closes,
//! the candidates still to come today are estimated from the rate seen so far (candidates
//! since the first one, over at least [`WARM_UP_SECS`]), carried to midnight, and the
//! picture is that of today's candidates so far. So the first day is paced too, instead of
//! giving its budget to whoever comes first.
//!
//! Only tasks written spend: a task admitted and then not written (raised while catching up
//! on a backlog, or already expired) gives its slot back ([`Budgets::settle`]), and its
//! candidate is looked at again.
//!
//! Candidates of both groups (treatment and control) pass the same bar and take from the same
//! budget: the group is drawn from the customer ID after admission, so the held-out
//! customers are chosen exactly as those acted on are, and the two groups stay comparable.

use std::collections::BTreeMap;
use std::sync::Arc;

use serde::Serialize;
use xxhash_rust::xxh3::xxh3_64_with_seed;

use crate::time::{UnixSeconds, DAY};

mod picture;

use picture::{bucket, priority_at};
pub use picture::{Picture, BUCKETS};

/// Days after which a candidate's weight in the picture of priorities has halved.
pub const HALF_LIFE_DAYS: f64 = 7.0;
/// Weight of the last day in the running count of candidates a day brings.
const DAILY_WEIGHT: f64 = 0.3;
/// On an action's first day, the rate of candidates is taken over at least this long, so
/// that the first few do not make it look like a flood.
pub const WARM_UP_SECS: u32 = 3_600;

/// Whose actions a budget is for: the section of the settings that sets it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BudgetScope {
    /// `[winback.budgets]`.
    Winback,
    /// `[tasks.budgets]`: the care kinds' actions.
    Care,
}

/// `[winback.budgets.<action>]`: what the action may spend per day and what a task costs,
/// in the same currency (the data's or any other: only their ratio counts for volume).
/// Both are required; `config::winback` checks them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct ActionBudget {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub per_day: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cost: Option<f64>,
}

impl ActionBudget {
    pub fn new(per_day: f64, cost: f64) -> Self {
        Self {
            per_day: Some(per_day),
            cost: Some(cost),
        }
    }

    /// Tasks a day affords; a budget the checks refused (which never reaches here) affords
    /// none.
    pub fn tasks_per_day(&self) -> u32 {
        match (self.per_day, self.cost) {
            // A hair of slack so that 1.0 / 0.1 counts as 10, not 9.999….
            (Some(per_day), Some(cost)) if cost > 0.0 && per_day >= 0.0 => {
                (per_day / cost * (1.0 + 1e-9))
                    .floor()
                    .min(f64::from(u32::MAX)) as u32
            }
            _ => 0,
        }
    }

    /// Partition `partition`'s share of this budget among `count` partitions, each pacing
    /// its own customers (`crate::engine::partitioned`): of the `T` tasks a day affords,
    /// each partition gets `T / count` and the first `T mod count` one more, so the shares
    /// add up to exactly `T`. `per_day` is split to match, the part that affords no whole
    /// task going to the last partition: the shares' `per_day` add up to the budget's.
    pub fn share(&self, partition: u16, count: u16) -> Self {
        let (Some(per_day), Some(cost)) = (self.per_day, self.cost) else {
            return *self;
        };
        if count <= 1 {
            return *self;
        }
        let tasks = self.tasks_per_day();
        let share = share_of(tasks, partition, count);
        let mut share_per_day = f64::from(share) * cost;
        if partition + 1 == count {
            share_per_day += (per_day - f64::from(tasks) * cost).max(0.0);
        }
        Self::new(share_per_day, cost)
    }
}

/// `[winback.budget]`: one spend per day that every win-back action draws on by its `cost`
/// (`[winback.budgets.<action>]`, whose `per_day` then caps the action within it). Unset
/// (the default): each action is paced on its own budget, as before there was a pool.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct PooledBudget {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub spend_per_day: Option<f64>,
}

impl PooledBudget {
    /// Each of `count` partitions' share: the spend split evenly (costs are not whole
    /// tasks here, so nothing is left over to hand out).
    pub fn share(&self, count: u16) -> Self {
        Self {
            spend_per_day: self.spend_per_day.map(|s| s / f64::from(count.max(1))),
        }
    }
}

/// Partition `partition`'s share of `total` among `count`: `total / count`, one more for the
/// first `total mod count` partitions; the shares add up to `total`.
pub fn share_of(total: u32, partition: u16, count: u16) -> u32 {
    let count = u32::from(count.max(1));
    let extra = u32::from(u32::from(partition) < total % count);
    total / count + extra
}

/// What became of a candidate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admission {
    Admitted,
    /// Not today: the day's budget is spent, or the candidate's priority is below what the
    /// rest of the budget affords.
    HeldBack,
}

/// A budget's pacing over the days: what a snapshot keeps. Each budgeted action's
/// ([`PacerState`]) and the pooled budget's ([`PoolState`]) are alike but for what they count
/// in: `A`, the amount a candidate brings (an action's: one candidate, `u32`; the pool's: what
/// the action it would get costs, `f64`), and `T`, the day's admissions (an action's tasks,
/// `u32`; none for the pool, `()`, whose day's spend is its actions' tasks).
#[derive(Debug, Clone, PartialEq)]
pub struct Pacing<A, T> {
    /// The day (days since the epoch) the counts below are of; 0: none yet.
    pub day: u32,
    /// What was admitted that day.
    pub admitted: T,
    /// The amount the candidates looked at that day brought.
    pub seen: A,
    /// The amount a day brings, a running average over the days before.
    pub expected: f64,
    /// Days that went into `expected`.
    pub days: u32,
    /// Decayed amounts of candidates by bucket of log-priority (the pool's: of value per
    /// cost).
    pub picture: Picture,
    /// When the first candidate came (0: none yet, or unknown in a snapshot before format
    /// 6): the first day's rate of candidates is counted from it.
    pub first_at: UnixSeconds,
}

/// One action's pacing: its amounts are candidates, its admissions tasks.
pub type PacerState = Pacing<u32, u32>;

/// The pooled budget's pacing: its amounts are spend rather than counts (a candidate weighs
/// what the action it would get costs), so that the bar is the level of value per cost the
/// rest of the day's spend affords. It counts no admissions: what the day spent is its
/// actions' tasks.
pub type PoolState = Pacing<f64, ()>;

impl<A: Default, T: Default> Default for Pacing<A, T> {
    fn default() -> Self {
        Self {
            day: 0,
            admitted: T::default(),
            seen: A::default(),
            expected: 0.0,
            days: 0,
            picture: Picture::default(),
            first_at: 0,
        }
    }
}

impl<A: Copy + Default + Into<f64>, T: Default> Pacing<A, T> {
    /// Moves the counts on to `day`: the days in between close (each with the amount it
    /// saw, none for days skipped) and the picture of priorities decays.
    fn roll(&mut self, day: u32) {
        if day <= self.day {
            return;
        }
        if self.day != 0 {
            close_days(
                (&mut self.expected, &mut self.days),
                self.seen.into(),
                day - self.day,
                &mut self.picture,
            );
        }
        self.day = day;
        self.admitted = T::default();
        self.seen = A::default();
    }

    /// Moves on to the day at `now` for a candidate coming then; the first one's time is
    /// kept.
    fn arrive(&mut self, now: UnixSeconds) {
        self.roll(now / DAY);
        if self.first_at == 0 {
            self.first_at = now;
        }
    }

    /// The amount still expected today at `now`, `mass` (the candidate being decided) at
    /// least, when `before` came today before it: the running amount per day less what
    /// came; on the first day (none closed yet), the rate since the first candidate
    /// carried to midnight.
    fn still_coming(&self, now: UnixSeconds, before: f64, mass: f64) -> f64 {
        if self.days > 0 {
            return (self.expected - before).max(mass);
        }
        let since = now.saturating_sub(self.first_at.min(now)).max(WARM_UP_SECS);
        let rate = (before + mass) / f64::from(since);
        let left_today = f64::from(DAY - now % DAY);
        // The one being decided is among those the rate expects.
        (rate * left_today).max(mass)
    }
}

impl PacerState {
    /// The candidates still expected today at `now`, the one being decided (counted in
    /// `seen`) included; at least that one.
    fn coming(&self, now: UnixSeconds) -> f64 {
        let before = (f64::from(self.seen) - 1.0).max(0.0);
        self.still_coming(now, before, 1.0)
    }
}

/// Closes the day that ends and the empty days skipped after it (`elapsed` days in all):
/// the running count per day takes the closing day's `closing`, then a 0 for each day
/// skipped (a bounded few: beyond a month the running average has forgotten everything
/// anyway), and the picture of priorities decays.
fn close_days(
    (expected, days): (&mut f64, &mut u32),
    mut closing: f64,
    elapsed: u32,
    picture: &mut Picture,
) {
    for _ in 0..elapsed.min(31) {
        *expected = if *days == 0 {
            closing
        } else {
            DAILY_WEIGHT * closing + (1.0 - DAILY_WEIGHT) * *expected
        };
        *days = days.saturating_add(1);
        closing = 0.0;
    }
    let decay = 0.5f64.powf(f64::from(elapsed) / HALF_LIFE_DAYS);
    picture.decay(decay);
}

/// The `n`th point of the golden-ratio sequence on [0, 1): any run of consecutive points
/// spreads evenly, so that a share `s` of a run of candidates passes `draw ≥ 1 − s` to within
/// a candidate or two.
fn golden_draw(n: u32) -> f64 {
    (f64::from(n) * 0.618_033_988_749_894_9).fract()
}

/// A pooled candidate's own draw for the day, uniform on [0, 1), from its task's key: the
/// same on a replay, afresh each day for one held back. The pool weighs candidates by what
/// they would spend, so it has no count of the day's candidates to run [`golden_draw`] on.
pub(crate) fn candidate_draw(task_key: u128, now: UnixSeconds) -> f64 {
    let h = xxh3_64_with_seed(&task_key.to_le_bytes(), u64::from(now / DAY));
    (h >> 11) as f64 / (1u64 << 53) as f64
}

/// Whether a priority passes a bar at `position` on the picture's scale (infinite: none
/// does): above or below the bar's bucket the priority decides; within it, where the
/// picture knows no order, the share of the bucket above the bar passes, by `draw`.
fn passes_at(priority: f64, position: f64, draw: f64) -> bool {
    if position.is_infinite() {
        return false;
    }
    let (mine, theirs) = (bucket(priority) as f64, position.floor());
    mine > theirs || (mine == theirs && draw >= position - theirs)
}

/// One budgeted action's pacing.
#[derive(Debug, Clone)]
pub struct Pacer {
    scope: BudgetScope,
    action: Arc<str>,
    budget: ActionBudget,
    tasks_per_day: u32,
    state: PacerState,
    /// Candidates held back since the last [`Budgets::take_report`].
    held_back: u64,
}

impl Pacer {
    fn new(scope: BudgetScope, action: &str, budget: ActionBudget) -> Self {
        Self {
            scope,
            action: action.into(),
            budget,
            tasks_per_day: budget.tasks_per_day(),
            state: PacerState::default(),
            held_back: 0,
        }
    }

    /// The priority a candidate needs now: the quantile the rest of the day's budget
    /// affords among the candidates still expected; infinite once the day's budget is
    /// spent, 0 while the budget covers every candidate expected.
    fn bar(&self, now: UnixSeconds) -> f64 {
        priority_at(self.bar_position(now))
    }

    /// [`Self::bar`] as a position on the picture's scale ([`Picture::position`]): infinite
    /// once the day's budget is spent, 0 while it covers every candidate expected.
    fn bar_position(&self, now: UnixSeconds) -> f64 {
        let left = self.tasks_per_day.saturating_sub(self.state.admitted);
        if left == 0 {
            return f64::INFINITY;
        }
        let coming = self.state.coming(now);
        if coming <= f64::from(left) {
            return 0.0;
        }
        self.state.picture.position(1.0 - f64::from(left) / coming)
    }

    /// Whether a candidate of `priority` passes the bar now. Above or below the bar's bucket
    /// the priority decides. Within it, the picture knows no order (a bucket spans 9 % of
    /// priority), and often there is none: candidates of equal priority (a prospect's is 0,
    /// a flat value gives all the same) fall in one bucket, and comparing priorities there
    /// would hold them all back until the day's last few hours and then admit whoever comes
    /// last. So within the bar's bucket a candidate passes with the chance the bar leaves
    /// (the share of the bucket above it), drawn from the day's count of candidates along a
    /// low-discrepancy sequence: even over the day, and the same on a replay.
    fn passes(&self, priority: f64, now: UnixSeconds) -> bool {
        passes_at(
            priority,
            self.bar_position(now),
            golden_draw(self.state.seen),
        )
    }

    /// The bar [`Self::admit`] would set the next candidate at `now`, without counting them.
    fn next_bar(&mut self, now: UnixSeconds) -> f64 {
        self.state.roll(now / DAY);
        let (seen, first_at) = (self.state.seen, self.state.first_at);
        if first_at == 0 {
            self.state.first_at = now;
        }
        self.state.seen = seen.saturating_add(1);
        let bar = self.bar(now);
        (self.state.seen, self.state.first_at) = (seen, first_at);
        bar
    }

    /// Decides about a candidate of `priority` at `now`, taking a task from the day's budget
    /// if admitted.
    pub fn admit(&mut self, priority: f64, now: UnixSeconds) -> Admission {
        self.state.arrive(now);
        self.state.seen = self.state.seen.saturating_add(1);
        let priority = if priority.is_nan() { 0.0 } else { priority };
        self.state.picture.add_to(bucket(priority), 1.0);
        if self.passes(priority, now) {
            self.state.admitted += 1;
            Admission::Admitted
        } else {
            self.held_back += 1;
            Admission::HeldBack
        }
    }

    /// Whether the day at `now` still has a task of this action left: its budget as a cap
    /// within the pooled budget.
    fn has_room(&self, now: UnixSeconds) -> bool {
        let admitted = if self.state.day == now / DAY {
            self.state.admitted
        } else {
            0
        };
        admitted < self.tasks_per_day
    }

    /// Takes a task of the day at `now` for a candidate of `priority` the pooled budget
    /// admitted (the caller checked [`Self::has_room`]): the action's own pacing is the
    /// pool's, its budget only a cap.
    fn take(&mut self, priority: f64, now: UnixSeconds) {
        self.state.arrive(now);
        self.state.seen = self.state.seen.saturating_add(1);
        let priority = if priority.is_nan() { 0.0 } else { priority };
        self.state.picture.add_to(bucket(priority), 1.0);
        self.state.admitted += 1;
    }

    /// Undoes the admission of a candidate of `priority` at `at` whose task was not written:
    /// the task goes back to the day's budget and the candidate, who will come again, out of
    /// the counts. Nothing to undo once the day is over.
    fn refund(&mut self, priority: f64, at: UnixSeconds) {
        if self.state.day != at / DAY || self.state.admitted == 0 {
            return;
        }
        self.state.admitted -= 1;
        self.state.seen = self.state.seen.saturating_sub(1);
        let priority = if priority.is_nan() { 0.0 } else { priority };
        self.state.picture.take_from(bucket(priority), 1.0);
    }
}

/// One action a pooled candidate may get, as the pooled budget sees it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct Offer {
    /// The action's budget (its cap) in [`Budgets`]; `None`: not budgeted (the checks
    /// require a budget of every action under a pool, so never in a running daemon).
    pub slot: Option<usize>,
    /// Expected incremental value: value at stake × chance, the candidate's priority.
    pub value: f64,
    /// What a task of the action costs.
    pub cost: f64,
    /// What the pool ranks by: value per cost (for `random`, the random draw itself).
    pub key: f64,
}

impl PoolState {
    /// The spend still expected today at `now`, `mass` (the candidate being decided, not yet
    /// in `seen`) at least.
    fn coming(&self, now: UnixSeconds, mass: f64) -> f64 {
        self.still_coming(now, self.seen, mass)
    }

    /// The value per cost a candidate needs at `now` with `left` of the day's spend left:
    /// the quantile of the picture that `left` affords among the spend still expected.
    fn bar(&self, now: UnixSeconds, left: f64, mass: f64) -> f64 {
        priority_at(self.bar_position(now, left, mass))
    }

    /// [`Self::bar`] as a position on the picture's scale: infinite once nothing is left, 0
    /// while what is left covers the spend expected.
    fn bar_position(&self, now: UnixSeconds, left: f64, mass: f64) -> f64 {
        if left <= 0.0 {
            return f64::INFINITY;
        }
        let coming = self.coming(now, mass);
        if coming <= left {
            return 0.0;
        }
        self.picture.position(1.0 - left / coming)
    }
}

/// `[winback.budget]`: one spend a day for every win-back action.
///
/// **How a candidate is ranked and given an action.** Each of the candidate's actions `j`
/// has an expected incremental value `v_j` (value at stake × chance) and a cost `c_j`. The
/// day's problem is a knapsack with a choice per customer: pick at most one action per
/// candidate to make Σ v the most for Σ c within the day's spend. Its Lagrangian solution
/// prices spend at a rate λ (value per unit of money): a candidate is worth a task when
/// some action has `v_j / c_j ≥ λ`, and then gets the action with the most `v_j − λ·c_j`.
/// Here λ is the pacer's bar: the level of value per cost that the rest of the day's spend
/// affords among the candidates still expected (a running picture of their value per cost,
/// each weighted by what they would spend). Two simpler rules were rejected:
///
/// - *value per cost for the action too* (what per-action budgets did): the cheapest action
///   with any effect wins every candidate (a reminder at a fiftieth of a call's price, with a
///   tenth of its lift, beats the call per unit of cost), so the important customers get
///   reminders and the call's effect is never bought even when the money is there;
/// - *net value `v − c` at face value*: `v` is not in money (the chance is the churn
///   probability or a multiple of it, not an absolute uplift), and with a budget that binds
///   money is worth more than its face: the trade-off needs the price λ, not 1.
///
/// With λ high (money scarce) cheap actions win the choice; with λ low (spend to spare),
/// the action that does the most. Each action's own budget, if set, caps it within the
/// pool: a candidate whose best action is capped gets the next best that is not.
#[derive(Debug, Clone)]
struct Pool {
    spend_per_day: f64,
    state: PoolState,
}

/// A pooled admission not settled yet: what it added to the picture.
#[derive(Debug, Clone, PartialEq)]
struct PoolPending {
    /// (bucket, spend) of its [`demand_steps`].
    steps: Vec<(usize, f64)>,
    mass: f64,
    at: UnixSeconds,
}

/// A candidate's demand for spend as a function of the price of money λ (value per unit of
/// cost): at λ = 0 it would take its most valuable action (of those `allowed`); as λ rises
/// it moves to a cheaper action once that one's `value − λ·cost` is the higher, and it
/// drops out at its last action's value per cost (`key`). Returned as the steps down:
/// (price, the spend it stops demanding there); they add up to its spend at price 0. So a
/// picture made of these steps reads, above any price, what the candidates would spend at
/// it, whatever the price was when they came.
fn demand_steps(offers: &[Offer], allowed: impl Fn(usize) -> bool) -> Vec<(f64, f64)> {
    let value = |o: &Offer| if o.value.is_nan() { 0.0 } else { o.value };
    let key = |o: &Offer| if o.key.is_nan() { 0.0 } else { o.key.max(0.0) };
    let allowed: Vec<usize> = (0..offers.len()).filter(|&i| allowed(i)).collect();
    // The most valuable; of equals, the cheaper.
    let mut current = allowed.iter().copied().reduce(|a, b| {
        let (x, y) = (&offers[a], &offers[b]);
        if value(y) > value(x) || (value(y) == value(x) && y.cost < x.cost) {
            b
        } else {
            a
        }
    });
    let mut steps = Vec::new();
    let mut price = 0.0f64;
    while let Some(c) = current {
        let o = &offers[c];
        let out = key(o).max(price);
        // The cheaper action that overtakes it first, before it drops out.
        let next = allowed
            .iter()
            .copied()
            .filter(|&j| offers[j].cost < o.cost)
            .map(|j| {
                let at = (value(o) - value(&offers[j])) / (o.cost - offers[j].cost);
                (j, at.max(price))
            })
            .filter(|&(_, at)| at < out)
            .reduce(|a, b| if b.1 < a.1 { b } else { a });
        match next {
            Some((j, at)) => {
                steps.push((at, o.cost - offers[j].cost));
                price = at;
                current = Some(j);
            }
            None => {
                steps.push((out, o.cost));
                current = None;
            }
        }
    }
    steps
}

/// An admission not settled yet: its task may still be dropped before it is written.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Pending {
    slot: usize,
    priority: f64,
    at: UnixSeconds,
}

/// How an action's budget stands, for the metrics.
#[derive(Debug, Clone, PartialEq)]
pub struct BudgetReport {
    pub scope: BudgetScope,
    pub action: Arc<str>,
    pub per_day: f64,
    /// Spent on the clock's current day (both groups).
    pub spent_today: f64,
    /// The priority a candidate needs now (infinite: the day's budget is spent).
    pub bar: f64,
    /// Candidates held back since the last report.
    pub held_back: u64,
}

/// How the pooled budget stands (`[winback.budget]`), for the metrics.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PoolReport {
    pub spend_per_day: f64,
    /// What win-back's actions spent on the clock's current day (both groups).
    pub spent_today: f64,
    /// The value per cost a candidate needs now: the price of money the rest of the day's
    /// spend sets (0: money to spare; infinite: the day's spend is gone).
    pub bar: f64,
}

/// Every budgeted action's pacing: win-back's actions in the order of their names (the
/// order of [`ActionBudget`] settings, which [`Budgets::slot`] indexes), then the care
/// kinds' ([`Budgets::care_slot`]).
#[derive(Debug, Clone, Default)]
pub struct Budgets {
    pacers: Vec<Pacer>,
    /// Win-back's pacers: the first this many.
    winback: usize,
    /// Admissions of the decision under way, until [`Self::settle`].
    pending: Vec<Pending>,
    /// `[winback.budget]`: win-back's actions draw on one spend; `None`: each on its own.
    pool: Option<Pool>,
    /// The pooled admission of the decision under way, until [`Self::settle`].
    pool_pending: Option<PoolPending>,
}

impl Budgets {
    /// Win-back's budgets alone.
    pub fn new(settings: &BTreeMap<String, ActionBudget>) -> Self {
        Self::with_care(settings, &BTreeMap::new())
    }

    /// Win-back's budgets (`[winback.budgets]`) and the care kinds' (`[tasks.budgets]`).
    pub fn with_care(
        winback: &BTreeMap<String, ActionBudget>,
        care: &BTreeMap<String, ActionBudget>,
    ) -> Self {
        let pacers = |scope, settings: &BTreeMap<String, ActionBudget>| {
            settings
                .iter()
                .map(move |(action, budget)| Pacer::new(scope, action, *budget))
                .collect::<Vec<_>>()
        };
        let mut all = pacers(BudgetScope::Winback, winback);
        all.extend(pacers(BudgetScope::Care, care));
        Self {
            pacers: all,
            winback: winback.len(),
            pending: Vec::new(),
            pool: None,
            pool_pending: None,
        }
    }

    /// These budgets with win-back's pooled spend (`[winback.budget]`), if set: then
    /// win-back candidates are decided by [`Self::admit_pooled`], each action's budget a cap.
    pub fn with_pool(mut self, pooled: PooledBudget) -> Self {
        self.pool = pooled.spend_per_day.map(|spend_per_day| Pool {
            spend_per_day,
            state: PoolState::default(),
        });
        self
    }

    /// Whether win-back's actions draw on a pooled spend.
    pub fn is_pooled(&self) -> bool {
        self.pool.is_some()
    }

    /// What win-back's actions have spent on the day at `now`.
    fn winback_spent(&self, now: UnixSeconds) -> f64 {
        let today = now / DAY;
        self.pacers[..self.winback]
            .iter()
            .filter(|p| p.state.day == today)
            .map(|p| f64::from(p.state.admitted) * p.budget.cost.unwrap_or(0.0))
            .sum()
    }

    /// Decides about a win-back candidate who may get any of several actions, each on its own
    /// budget (no pool), given at the priority each action's budget sees (`offers`: the
    /// action's slot, `None` for one not budgeted, and the priority): the index of the offer
    /// whose task it gets, or `None` (held back: a candidate again tomorrow).
    ///
    /// The actions are tried in the order of how far the priority clears each action's bar,
    /// the first whose budget admits is the task's. Each action's money is its own, so what
    /// one of its tasks is worth is its bar (the priority of whoever else would get it); a
    /// candidate is worth most where their priority beats that price by most. This is the
    /// assignment with one task per candidate and so many tasks per action, solved by a
    /// price per action. Ranking by value per cost instead, as under a pool, would ignore
    /// that each budget has its own price: the cheapest action would be tried first
    /// everywhere, and a reminder would take the customers a call was bought for. Equal
    /// margins keep the order of `offers`. Admissions stay pending until [`Self::settle`].
    pub(crate) fn admit_one_of(
        &mut self,
        offers: &[(Option<usize>, f64)],
        now: UnixSeconds,
    ) -> Option<usize> {
        if let [(slot, priority)] = *offers {
            return slot
                .is_none_or(|slot| self.admit(slot, priority, now) == Admission::Admitted)
                .then_some(0);
        }
        let mut order: Vec<(usize, f64)> = offers
            .iter()
            .enumerate()
            .map(|(i, &(slot, priority))| {
                let bar = slot
                    .and_then(|slot| self.pacers.get_mut(slot))
                    .map_or(0.0, |p| p.next_bar(now));
                (i, priority - bar)
            })
            .collect();
        // Stable: equal margins (every bar 0, or ∞) keep the targeting's order.
        order.sort_by(|a, b| b.1.total_cmp(&a.1));
        order
            .into_iter()
            .map(|(i, _)| i)
            .find(|&i| match offers[i] {
                (Some(slot), priority) => self.admit(slot, priority, now) == Admission::Admitted,
                (None, _) => true,
            })
    }

    /// Decides about a win-back candidate under the pooled budget, given the actions it may
    /// get (`offers`, best first by the targeting's order, which breaks ties): the index of
    /// the offer whose task it gets, or `None` (held back: a candidate again tomorrow). See
    /// [`Pool`] for the rule. The spend stays pending until [`Self::settle`]. Without a pool
    /// (never: the caller asks [`Self::is_pooled`]) nobody is admitted.
    pub(crate) fn admit_pooled(
        &mut self,
        offers: &[Offer],
        draw: f64,
        now: UnixSeconds,
    ) -> Option<usize> {
        let left = self.pool.as_ref()?.spend_per_day - self.winback_spent(now);
        let room: Vec<bool> = offers
            .iter()
            .map(|o| {
                o.slot
                    .and_then(|slot| self.pacers.get(slot))
                    .is_none_or(|p| p.has_room(now))
            })
            .collect();
        let net = |o: &Offer, lambda: f64| {
            let v = if o.value.is_nan() { 0.0 } else { o.value };
            v - lambda * o.cost
        };
        // The best offer among `allowed` at the price `lambda`; the first of equals.
        let best = |lambda: f64, allowed: &dyn Fn(usize, &Offer) -> bool| {
            offers
                .iter()
                .enumerate()
                .filter(|(i, o)| allowed(*i, o))
                .fold(None::<(usize, f64)>, |best, (i, o)| {
                    let n = net(o, lambda);
                    match best {
                        Some((_, b)) if b >= n => best,
                        _ => Some((i, n)),
                    }
                })
                .map(|(i, _)| i)
        };
        let pool = self.pool.as_mut()?;
        pool.state.arrive(now);
        // What the candidate would spend at each price of money: it enters the picture so.
        let steps = demand_steps(offers, |i| room[i]);
        let mass: f64 = steps.iter().map(|(_, drop)| drop).sum();
        let position = pool.state.bar_position(now, left, mass);
        let lambda = priority_at(position);
        let key = |o: &Offer| if o.key.is_nan() { 0.0 } else { o.key };
        let chosen = best(lambda, &|i, o| {
            room[i] && passes_at(key(o), position, draw) && o.cost <= left * (1.0 + 1e-9)
        });
        let steps: Vec<(usize, f64)> = steps
            .into_iter()
            .map(|(price, drop)| (bucket(price), drop))
            .collect();
        pool.state.seen += mass;
        for &(b, drop) in &steps {
            pool.state.picture.add_to(b, drop);
        }
        // The action it would have got at no price, for the count of who was held back.
        let held_as = best(0.0, &|i, _| room[i]).or_else(|| best(0.0, &|_, _| true));
        let Some(i) = chosen else {
            // Counted against the action it would have got.
            if let Some(p) = held_as
                .and_then(|i| offers[i].slot)
                .and_then(|slot| self.pacers.get_mut(slot))
            {
                p.held_back += 1;
            }
            return None;
        };
        self.pool_pending = Some(PoolPending {
            steps,
            mass,
            at: now,
        });
        if let Some(slot) = offers[i].slot.filter(|&slot| slot < self.pacers.len()) {
            self.pacers[slot].take(offers[i].value, now);
            self.pending.push(Pending {
                slot,
                priority: offers[i].value,
                at: now,
            });
        }
        Some(i)
    }

    /// The slot of win-back `action`'s budget; `None`: the action is not budgeted (no limit).
    pub fn slot(settings: &BTreeMap<String, ActionBudget>, action: &str) -> Option<usize> {
        settings.keys().position(|a| a == action)
    }

    /// The slot of care `action`'s budget, after win-back's; `None`: not budgeted.
    pub fn care_slot(
        winback: &BTreeMap<String, ActionBudget>,
        care: &BTreeMap<String, ActionBudget>,
        action: &str,
    ) -> Option<usize> {
        Self::slot(care, action).map(|i| winback.len() + i)
    }

    /// Decides about a candidate of the action in `slot`; a slot these budgets do not have
    /// (never: both come from the same settings) admits. An admission stays pending until
    /// [`Self::settle`] says whether its task went out.
    pub fn admit(&mut self, slot: usize, priority: f64, now: UnixSeconds) -> Admission {
        let Some(pacer) = self.pacers.get_mut(slot) else {
            return Admission::Admitted;
        };
        let admission = pacer.admit(priority, now);
        if admission == Admission::Admitted {
            self.pending.push(Pending {
                slot,
                priority,
                at: now,
            });
        }
        admission
    }

    /// Ends a decision: the admissions of win-back (when `winback_dropped`) and of care
    /// (when `care_dropped`) whose tasks were not written give their slots back; the
    /// others are spent. (A decision raises at most one task of each.)
    pub fn settle(&mut self, winback_dropped: bool, care_dropped: bool) {
        if let (Some(p), Some(pool)) = (self.pool_pending.take(), self.pool.as_mut()) {
            if winback_dropped && pool.state.day == p.at / DAY {
                pool.state.seen = (pool.state.seen - p.mass).max(0.0);
                for (b, drop) in p.steps {
                    pool.state.picture.take_from(b, drop);
                }
            }
        }
        for p in std::mem::take(&mut self.pending) {
            let dropped = if p.slot < self.winback {
                winback_dropped
            } else {
                care_dropped
            };
            if dropped {
                self.pacers[p.slot].refund(p.priority, p.at);
            }
        }
    }

    /// How the pooled budget stands at `now`; `None` without one. A day not yet begun by a
    /// candidate is read as begun: yesterday's picture with the whole spend left.
    pub fn pool_report(&self, now: UnixSeconds) -> Option<PoolReport> {
        let pool = self.pool.as_ref()?;
        let spent_today = self.winback_spent(now);
        let mut state = pool.state.clone();
        state.roll(now / DAY);
        Some(PoolReport {
            spend_per_day: pool.spend_per_day,
            spent_today,
            bar: state.bar(now, pool.spend_per_day - spent_today, 0.0),
        })
    }

    /// Each win-back action's pacing state, by action, for a snapshot.
    pub fn states(&self) -> Vec<(String, PacerState)> {
        self.states_of(BudgetScope::Winback)
    }

    /// The pooled budget's pacing state, for a snapshot; `None` without a pool.
    pub fn pool_state(&self) -> Option<PoolState> {
        self.pool.as_ref().map(|pool| pool.state.clone())
    }

    /// Each care action's pacing state, by action, for a snapshot.
    pub fn care_states(&self) -> Vec<(String, PacerState)> {
        self.states_of(BudgetScope::Care)
    }

    fn states_of(&self, scope: BudgetScope) -> Vec<(String, PacerState)> {
        self.pacers
            .iter()
            .filter(|p| p.scope == scope)
            .map(|p| (p.action.to_string(), p.state.clone()))
            .collect()
    }

    /// Continues from a snapshot's pacing states (win-back's, then the care kinds'): those
    /// of actions still budgeted (a changed budget applies from now on; an action no longer
    /// budgeted is forgotten).
    pub fn restore(&mut self, winback: Vec<(String, PacerState)>, care: Vec<(String, PacerState)>) {
        for (scope, states) in [(BudgetScope::Winback, winback), (BudgetScope::Care, care)] {
            for (action, state) in states {
                if let Some(p) = self
                    .pacers
                    .iter_mut()
                    .find(|p| p.scope == scope && *p.action == *action)
                {
                    p.state = state;
                }
            }
        }
    }

    /// Continues the pooled budget's pacing from a snapshot's. Without a pool now it is
    /// forgotten; a pool set since a snapshot without one starts afresh.
    pub fn restore_pool(&mut self, state: Option<PoolState>) {
        if let (Some(pool), Some(state)) = (self.pool.as_mut(), state) {
            pool.state = state;
        }
    }

    /// How each budget stands at `now`, in slot order; counts of candidates held back
    /// restart from 0.
    pub fn take_report(&mut self, now: UnixSeconds) -> Vec<BudgetReport> {
        let today = now / DAY;
        let pooled = self.pool.is_some();
        self.pacers
            .iter_mut()
            .map(|p| {
                let current = p.state.day == today;
                let admitted = if current { p.state.admitted } else { 0 };
                BudgetReport {
                    scope: p.scope,
                    action: p.action.clone(),
                    per_day: p.budget.per_day.unwrap_or(0.0),
                    spent_today: f64::from(admitted) * p.budget.cost.unwrap_or(0.0),
                    bar: if pooled && p.scope == BudgetScope::Winback {
                        // A cap within the pool: nothing to pass but room.
                        if p.has_room(now) {
                            0.0
                        } else {
                            f64::INFINITY
                        }
                    } else if current || p.tasks_per_day == 0 {
                        p.bar(now)
                    } else {
                        // A new day not yet begun by a candidate: its bar is yesterday's
                        // picture with the whole budget left.
                        let mut fresh = p.clone();
                        fresh.state.roll(today);
                        fresh.bar(now)
                    },
                    held_back: std::mem::take(&mut p.held_back),
                }
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const T0: u32 = 852_076_800; // 1997-01-01, midnight

    /// A deterministic stream of uniform numbers in [0, 1).
    struct Lcg(u64);

    impl Lcg {
        fn next(&mut self) -> f64 {
            self.0 = self
                .0
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1_442_695_040_888_963_407);
            (self.0 >> 11) as f64 / (1u64 << 53) as f64
        }

        /// Log-normal, median 50: priorities look like that (a long right tail).
        fn priority(&mut self) -> f64 {
            let (u, v) = (self.next().max(1e-12), self.next());
            let normal = (-2.0 * u.ln()).sqrt() * (std::f64::consts::TAU * v).cos();
            50.0 * (normal).exp()
        }
    }

    fn pacer(per_day: f64, cost: f64) -> Pacer {
        Pacer::new(
            BudgetScope::Winback,
            "coupon",
            ActionBudget::new(per_day, cost),
        )
    }

    #[test]
    fn partition_shares_add_up_to_the_budget() {
        for (per_day, cost, count) in [
            (100.0, 10.0, 3),
            (99.0, 10.0, 4),
            (5.0, 1.0, 16),
            (1.0, 0.1, 3),
        ] {
            let budget = ActionBudget::new(per_day, cost);
            let shares: Vec<ActionBudget> = (0..count).map(|p| budget.share(p, count)).collect();
            let tasks: Vec<u32> = shares.iter().map(ActionBudget::tasks_per_day).collect();
            assert_eq!(
                tasks.iter().sum::<u32>(),
                budget.tasks_per_day(),
                "{per_day}/{cost} over {count}: {tasks:?}"
            );
            let (low, high) = (tasks.iter().min().unwrap(), tasks.iter().max().unwrap());
            assert!(high - low <= 1, "{tasks:?}");
            let spend: f64 = shares.iter().filter_map(|s| s.per_day).sum();
            assert!((spend - per_day).abs() < 1e-9, "{spend} vs {per_day}");
        }
        // 10 tasks over 4: 3, 3, 2, 2.
        let ten = ActionBudget::new(100.0, 10.0);
        assert_eq!(
            (0..4)
                .map(|p| ten.share(p, 4).tasks_per_day())
                .collect::<Vec<_>>(),
            [3, 3, 2, 2]
        );
        assert_eq!(ten.share(0, 1), ten);
        assert_eq!(share_of(7, 2, 3), 2);
        assert_eq!((0..3).map(|p| share_of(7, p, 3)).sum::<u32>(), 7);
    }

    #[test]
    fn a_budget_affords_its_whole_tasks() {
        assert_eq!(ActionBudget::new(100.0, 10.0).tasks_per_day(), 10);
        assert_eq!(ActionBudget::new(1.0, 0.1).tasks_per_day(), 10);
        assert_eq!(ActionBudget::new(99.0, 10.0).tasks_per_day(), 9);
        assert_eq!(ActionBudget::new(0.0, 10.0).tasks_per_day(), 0);
        assert_eq!(ActionBudget::default().tasks_per_day(), 0);
    }

    /// 1,000 candidates a day in random order, budget for 50: the spend never passes the
    /// budget, nearly all of it is spent, and once the picture has formed the tasks go
    /// mostly to the day's top 5 %.
    #[test]
    fn spend_stays_within_the_budget_and_picks_come_from_the_top() {
        let mut p = pacer(500.0, 10.0);
        let mut rng = Lcg(7);
        let (mut picked_total, mut from_top, mut later_days) = (0, 0, 0);
        for d in 0..30u32 {
            let priorities: Vec<f64> = (0..1_000).map(|_| rng.priority()).collect();
            let mut sorted = priorities.clone();
            sorted.sort_by(f64::total_cmp);
            let top_cut = sorted[1_000 - 100]; // the day's top 10 %
            let mut picked = 0;
            for (i, &priority) in priorities.iter().enumerate() {
                let now = T0 + d * DAY + i as u32 * 60;
                if p.admit(priority, now) == Admission::Admitted {
                    picked += 1;
                    if d >= 3 {
                        picked_total += 1;
                        from_top += usize::from(priority >= top_cut);
                    }
                }
            }
            assert!(picked <= 50, "day {d}: {picked} tasks for a budget of 50");
            if d >= 3 {
                later_days += 1;
                assert!(picked >= 35, "day {d}: only {picked} of 50 spent");
            }
        }
        let share = from_top as f64 / picked_total as f64;
        assert!(
            share >= 0.8,
            "{from_top} of {picked_total} from the top 10 %"
        );
        assert!(later_days > 0);
    }

    #[test]
    fn every_candidate_is_admitted_while_the_budget_covers_them_all() {
        let mut p = pacer(100.0, 1.0);
        let mut rng = Lcg(1);
        for d in 0..5u32 {
            for i in 0..50u32 {
                let now = T0 + d * DAY + i;
                let admitted = p.admit(rng.priority(), now);
                // The first day cannot know that the burst is all there is.
                if d > 0 {
                    assert_eq!(admitted, Admission::Admitted, "day {d}");
                }
            }
        }
    }

    #[test]
    fn a_spent_day_holds_everyone_back_until_the_next() {
        let mut p = pacer(30.0, 10.0);
        // Late on the first day: few more candidates expected before midnight.
        let t = T0 + DAY - 100;
        for i in 0..3 {
            // Rising: a tie would sit inside the bar's own bucket.
            let priority = f64::from(1 << i);
            assert_eq!(p.admit(priority, t + i), Admission::Admitted, "first come");
        }
        assert_eq!(p.admit(1e9, t + 10), Admission::HeldBack);
        assert_eq!(p.bar(t + 10), f64::INFINITY);
        assert_eq!(p.admit(1e9, t + DAY), Admission::Admitted, "a new day");
        let mut none = pacer(0.0, 10.0);
        assert_eq!(none.admit(1e9, T0), Admission::HeldBack, "no budget");
    }

    /// Candidates of equal priority (prospects, all 0; a flat value) share the bar's bucket:
    /// the day's tasks go to a share of them spread over the day, not to the last comers.
    #[test]
    fn equal_priorities_are_admitted_evenly_over_the_day() {
        for priority in [0.0, 5.0, 100.0] {
            let mut p = pacer(10.0, 1.0);
            for day in 0..6 {
                let admitted: Vec<u32> = (0..100)
                    .filter(|i| {
                        let t = T0 + day * DAY + i * (DAY / 100);
                        p.admit(priority, t) == Admission::Admitted
                    })
                    .collect();
                assert!(
                    (9..=11).contains(&admitted.len()),
                    "priority {priority}, day {day}: {admitted:?}"
                );
                if day > 0 {
                    let morning = admitted.iter().filter(|&&i| i < 50).count();
                    assert!(
                        (3..=7).contains(&morning),
                        "priority {priority}, day {day}: {admitted:?}"
                    );
                }
            }
        }
    }

    #[test]
    fn the_picture_decays_and_skipped_days_count_as_empty() {
        let mut s = PacerState::default();
        s.roll(100);
        s.seen = 200;
        s.picture.add_to(bucket(10.0), 200.0);
        s.roll(101);
        assert_eq!((s.expected, s.days, s.seen), (200.0, 1, 0));
        s.seen = 100;
        s.roll(108); // the day, then six empty ones
        assert!((s.expected - 200.0 * 0.7f64.powi(6) * 0.7 - 30.0 * 0.7f64.powi(6)).abs() < 1e-9);
        let left = s.picture.total();
        assert!(
            (left - 200.0 * 0.5f64.powf(8.0 / 7.0)).abs() < 1e-9,
            "{left}"
        );
    }

    #[test]
    fn states_restore_by_action_and_reports_count_the_held_back() {
        let settings = BTreeMap::from([
            ("coupon".to_string(), ActionBudget::new(20.0, 10.0)),
            ("personal_call".to_string(), ActionBudget::new(50.0, 25.0)),
        ]);
        assert_eq!(Budgets::slot(&settings, "personal_call"), Some(1));
        assert_eq!(Budgets::slot(&settings, "email_reminder"), None);
        let mut b = Budgets::new(&settings);
        // Late in the first day: few candidates expected before midnight.
        let t = T0 + DAY - 100;
        for i in 0..3 {
            b.admit(0, 5.0, t + i);
        }
        let report = b.take_report(t + 5);
        assert_eq!(report[0].spent_today, 20.0);
        assert_eq!(report[0].held_back, 1);
        assert_eq!(report[1].spent_today, 0.0);
        assert_eq!(b.take_report(t + 5)[0].held_back, 0, "counted once");
        assert_eq!(b.take_report(t + DAY)[0].spent_today, 0.0, "a new day");
        let mut restored = Budgets::new(&settings);
        let mut states = b.states();
        states.push(("gone".into(), PacerState::default()));
        restored.restore(states, Vec::new());
        assert_eq!(restored.states(), b.states());
        assert_eq!(restored.admit(0, 5.0, t + 6), Admission::HeldBack);
    }

    /// A task admitted, then not written, gives its slot back: the day's budget buys as
    /// many written tasks as before, and the candidate is not counted twice.
    #[test]
    fn a_task_not_written_gives_its_slot_back() {
        let winback = BTreeMap::from([("coupon".to_string(), ActionBudget::new(20.0, 10.0))]);
        let care = BTreeMap::from([("welcome_call".to_string(), ActionBudget::new(10.0, 10.0))]);
        let mut b = Budgets::with_care(&winback, &care);
        assert_eq!(Budgets::care_slot(&winback, &care, "welcome_call"), Some(1));
        assert_eq!(Budgets::care_slot(&winback, &care, "coupon"), None);
        let t = T0 + DAY - 100;
        // Both admitted; the win-back task is dropped (caught up on a backlog), the care
        // task written.
        assert_eq!(b.admit(0, 5.0, t), Admission::Admitted);
        assert_eq!(b.admit(1, 5.0, t), Admission::Admitted);
        b.settle(true, false);
        let states = b.states();
        assert_eq!((states[0].1.admitted, states[0].1.seen), (0, 0));
        assert_eq!(states[0].1.picture.total(), 0.0);
        assert_eq!(
            b.care_states()[0].1.admitted,
            1,
            "the care task was written"
        );
        // The day still affords both win-back tasks; the care action's one is spent.
        for i in 1..=2 {
            assert_eq!(b.admit(0, 5.0, t + i), Admission::Admitted);
            b.settle(false, false);
        }
        assert_eq!(b.admit(0, 5.0, t + 3), Admission::HeldBack);
        assert_eq!(b.admit(1, 5.0, t + 3), Admission::HeldBack);
        b.settle(true, true);
        let report = b.take_report(t + 4);
        assert_eq!(report[0].spent_today, 20.0);
        assert_eq!(
            (report[1].scope, report[1].spent_today),
            (BudgetScope::Care, 10.0)
        );
        // A refund for a day already over changes nothing.
        b.admit(0, 5.0, t + DAY);
        let before = b.states();
        b.pending[0].at = t;
        b.settle(true, true);
        assert_eq!(b.states(), before);
    }

    /// The first day of an action (no day closed yet) is paced on the rate of candidates
    /// seen so far: 1,000 candidates through the day, budget for 50: the tasks go mostly
    /// to the day's top candidates instead of to the first 50 who come, and most of the
    /// budget is still spent.
    #[test]
    fn the_first_day_is_paced_on_the_rate_seen_so_far() {
        let mut rng = Lcg(11);
        let priorities: Vec<f64> = (0..1_000).map(|_| rng.priority()).collect();
        let mut sorted = priorities.clone();
        sorted.sort_by(f64::total_cmp);
        let top_cut = sorted[1_000 - 100];
        let mut p = pacer(500.0, 10.0);
        let (mut picked, mut from_top) = (0, 0);
        for (i, &priority) in priorities.iter().enumerate() {
            // Spread evenly over the day (one every 86.4 s).
            let now = T0 + (i as u32 * DAY) / 1_000;
            if p.admit(priority, now) == Admission::Admitted {
                picked += 1;
                from_top += usize::from(priority >= top_cut);
            }
        }
        assert!((30..=50).contains(&picked), "{picked} of 50 spent");
        assert!(
            from_top * 2 >= picked,
            "{from_top} of {picked} from the day's top 10 %"
        );
        // A sparse action is not starved: one candidate an hour, budget for 50.
        let mut sparse = pacer(500.0, 10.0);
        for h in 0..24 {
            assert_eq!(
                sparse.admit(rng.priority(), T0 + h * 3_600),
                Admission::Admitted
            );
        }
    }

    /// A call (cost 10) and an email (cost 0.2) for each of `per_day` candidates a day,
    /// spread over the day; the call's expected incremental value is `call × u`, the
    /// email's `email × u`, u from 0.5 to 1.5 (the customer's value). One pooled budget of
    /// `spend` a day, caps `caps` (per_day of the call, of the email). Per day from the
    /// fourth on: (spend, calls, emails, value bought).
    fn pooled_days(
        spend: f64,
        (call, email): (f64, f64),
        caps: (f64, f64),
        per_day: u32,
    ) -> Vec<(f64, u32, u32, f64)> {
        let settings = BTreeMap::from([
            ("email".to_string(), ActionBudget::new(caps.1, 0.2)),
            ("call".to_string(), ActionBudget::new(caps.0, 10.0)),
        ]);
        let mut b = Budgets::new(&settings).with_pool(PooledBudget {
            spend_per_day: Some(spend),
        });
        assert!(b.is_pooled());
        let (call_slot, email_slot) = (
            Budgets::slot(&settings, "call"),
            Budgets::slot(&settings, "email"),
        );
        let mut rng = Lcg(3);
        let mut days = Vec::new();
        for d in 0..20u32 {
            let mut day = (0.0, 0, 0, 0.0);
            for i in 0..per_day {
                let u = 0.5 + rng.next();
                let offer = |slot, value: f64, cost: f64| Offer {
                    slot,
                    value,
                    cost,
                    key: value / cost,
                };
                let offers = [
                    offer(email_slot, email * u, 0.2),
                    offer(call_slot, call * u, 10.0),
                ];
                let now = T0 + d * DAY + i * (DAY / per_day);
                if let Some(i) = b.admit_pooled(&offers, candidate_draw(u128::from(i), now), now) {
                    day.0 += offers[i].cost;
                    day.3 += offers[i].value;
                    if i == 0 {
                        day.2 += 1;
                    } else {
                        day.1 += 1;
                    }
                }
                b.settle(false, false);
            }
            assert!(day.0 <= spend + 1e-6, "day {d}: {day:?} over {spend}");
            if d >= 3 {
                days.push(day);
            }
        }
        days
    }

    /// The email has five times the call's value per cost but a tenth of its effect: when
    /// the pool affords calls for the best tenth of the candidates, most of the money goes
    /// to calls for the most valuable and the rest to emails for the others (the best mix:
    /// about 205 of value a day, where ranking actions by value per cost would give
    /// everyone an email, about 100, and calls alone about 145); when it affords only a call
    /// a day, to emails.
    #[test]
    fn a_pooled_budget_buys_the_action_that_pays_not_the_cheapest() {
        let loose = pooled_days(100.0, (10.0, 1.0), (1e12, 1e12), 100);
        for &(spent, calls, emails, value) in &loose {
            assert!(spent >= 70.0, "{loose:?}");
            // The optimum: calls for the best tenth or so, emails for the rest.
            assert!(
                calls >= 6 && f64::from(calls) * 10.0 >= 0.7 * spent,
                "{loose:?}"
            );
            assert!(emails >= 50, "{loose:?}");
            // All emails: 100 candidates × 1.0 on average; the best ten calls: about 145.
            assert!(value > 170.0, "{loose:?}");
        }
        let tight = pooled_days(10.0, (10.0, 1.0), (1e12, 1e12), 100);
        for &(spent, calls, emails, _) in &tight {
            assert!(spent >= 7.0, "{tight:?}");
            assert!(emails >= 30 && calls <= 1, "{tight:?}");
        }
    }

    /// Each action on its own budget, ten tasks a day each, a hundred candidates a day, each
    /// worth ten times as much to call as to email (an email costs a fiftieth of a call).
    /// Per day from the fourth on: (calls, emails, value bought, the mean candidate worth of
    /// those called and of those emailed); `by_margin`: [`Budgets::admit_one_of`], else
    /// the email tried first, as ranking by value per cost would.
    fn separate_days(by_margin: bool) -> Vec<(u32, u32, f64, f64, f64)> {
        let settings = BTreeMap::from([
            ("email".to_string(), ActionBudget::new(2.0, 0.2)),
            ("call".to_string(), ActionBudget::new(100.0, 10.0)),
        ]);
        let mut b = Budgets::new(&settings);
        let (email, call) = (
            Budgets::slot(&settings, "email"),
            Budgets::slot(&settings, "call"),
        );
        let mut rng = Lcg(11);
        let mut days = Vec::new();
        for d in 0..20u32 {
            let (mut called, mut emailed) = (Vec::new(), Vec::new());
            for i in 0..100 {
                let worth = rng.priority();
                let offers = [(email, worth), (call, 10.0 * worth)];
                let now = T0 + d * DAY + i * (DAY / 100);
                let got = if by_margin {
                    b.admit_one_of(&offers, now)
                } else {
                    (0..2).find(|&i| {
                        b.admit(offers[i].0.unwrap(), offers[i].1, now) == Admission::Admitted
                    })
                };
                match got {
                    Some(0) => emailed.push(worth),
                    Some(_) => called.push(worth),
                    None => {}
                }
                b.settle(false, false);
            }
            let sum = |xs: &[f64]| xs.iter().sum::<f64>();
            let mean = |xs: &[f64]| sum(xs) / xs.len().max(1) as f64;
            if d >= 3 {
                days.push((
                    called.len() as u32,
                    emailed.len() as u32,
                    10.0 * sum(&called) + sum(&emailed),
                    mean(&called),
                    mean(&emailed),
                ));
            }
        }
        days
    }

    #[test]
    fn separate_budgets_give_each_action_to_whom_it_is_worth_most() {
        let margin = separate_days(true);
        let per_cost = separate_days(false);
        let total = |days: &[(u32, u32, f64, f64, f64)]| days.iter().map(|d| d.2).sum::<f64>();
        for &(calls, emails, _, call_worth, email_worth) in &margin {
            assert!(calls <= 10 && emails <= 10, "{margin:?}");
            assert!(calls >= 7 && emails >= 7, "both budgets spent: {margin:?}");
            // The calls went to the most valuable, the emails to the next.
            assert!(call_worth > email_worth, "{margin:?}");
        }
        for &(.., call_worth, email_worth) in &per_cost {
            assert!(
                call_worth < email_worth,
                "the email took the best: {per_cost:?}"
            );
        }
        assert!(
            total(&margin) > 1.2 * total(&per_cost),
            "{} against {}",
            total(&margin),
            total(&per_cost)
        );
    }

    /// An action's own budget caps it within the pool: two calls a day at most, the rest of
    /// the spend goes to emails.
    #[test]
    fn an_action_s_budget_caps_it_within_the_pool() {
        let capped = pooled_days(100.0, (10.0, 1.0), (20.0, 1e12), 100);
        for &(spent, calls, emails, _) in &capped {
            assert!(calls <= 2, "{capped:?}");
            assert!(emails >= 20, "{capped:?}");
            assert!(spent <= 100.0, "{capped:?}");
        }
    }

    /// The pool, like an action's pacer, admits candidates of equal value per cost over the
    /// whole day, not all from its last hours: 100 a day, spend for 10.
    #[test]
    fn the_pool_admits_equal_candidates_evenly_over_the_day() {
        let settings = BTreeMap::from([("call".to_string(), ActionBudget::new(1e12, 1.0))]);
        for value in [0.0, 5.0, 100.0] {
            let mut b = Budgets::new(&settings).with_pool(PooledBudget {
                spend_per_day: Some(10.0),
            });
            let offer = Offer {
                slot: Some(0),
                value,
                cost: 1.0,
                key: value,
            };
            for day in 0..6u32 {
                let admitted: Vec<u32> = (0..100u32)
                    .filter(|&i| {
                        let t = T0 + day * DAY + i * (DAY / 100);
                        let draw = candidate_draw(u128::from(i) << 70 | u128::from(day), t);
                        let admitted = b.admit_pooled(&[offer], draw, t).is_some();
                        b.settle(false, false);
                        admitted
                    })
                    .collect();
                assert!(
                    (8..=10).contains(&admitted.len()),
                    "value {value}, day {day}: {admitted:?}"
                );
                if day > 0 {
                    let morning = admitted.iter().filter(|&&i| i < 50).count();
                    assert!(
                        (2..=8).contains(&morning),
                        "value {value}, day {day}: {admitted:?}"
                    );
                }
            }
        }
    }

    /// A pooled admission not written gives its spend back; the pool's pacing survives a
    /// snapshot, and settings without a pool forget it.
    #[test]
    fn the_pool_refunds_and_restores() {
        let settings = BTreeMap::from([("call".to_string(), ActionBudget::new(1e12, 10.0))]);
        let pooled = PooledBudget {
            spend_per_day: Some(20.0),
        };
        let mut b = Budgets::new(&settings).with_pool(pooled);
        let offer = Offer {
            slot: Some(0),
            value: 50.0,
            cost: 10.0,
            key: 5.0,
        };
        let t = T0 + DAY - 100;
        assert_eq!(b.admit_pooled(&[offer], 0.5, t), Some(0));
        b.settle(true, false);
        assert_eq!(b.winback_spent(t), 0.0, "given back");
        for i in 1..=2 {
            assert_eq!(b.admit_pooled(&[offer], 0.5, t + i), Some(0));
            b.settle(false, false);
        }
        assert_eq!(b.winback_spent(t), 20.0);
        assert_eq!(
            b.admit_pooled(&[offer], 0.5, t + 3),
            None,
            "the day is spent"
        );
        assert_eq!(b.take_report(t + 3)[0].held_back, 1);
        let report = b.pool_report(t + 3).unwrap();
        assert_eq!((report.spend_per_day, report.spent_today), (20.0, 20.0));
        assert_eq!(report.bar, f64::INFINITY, "nothing left to spend");
        let tomorrow = b.pool_report(t + 200).unwrap();
        assert_eq!(tomorrow.spent_today, 0.0);
        assert!(tomorrow.bar.is_finite(), "a new day's spend: {tomorrow:?}");
        assert_eq!(Budgets::new(&settings).pool_report(t), None);
        let (states, pool_state) = (b.states(), b.pool_state());
        assert_eq!(states.len(), 1, "the pool is not among the actions");
        assert!(pool_state.as_ref().is_some_and(|s| s.seen > 0.0));
        let mut restored = Budgets::new(&settings).with_pool(pooled);
        restored.restore(states.clone(), Vec::new());
        restored.restore_pool(pool_state.clone());
        assert_eq!(restored.states(), states);
        assert_eq!(restored.pool_state(), pool_state);
        assert_eq!(restored.pool_report(t + 3), b.pool_report(t + 3));
        let mut unpooled = Budgets::new(&settings);
        unpooled.restore(states, Vec::new());
        unpooled.restore_pool(pool_state);
        assert_eq!((unpooled.states().len(), unpooled.pool_state()), (1, None));
        // Partitions split the spend evenly.
        assert_eq!(pooled.share(4).spend_per_day, Some(5.0));
        assert_eq!(PooledBudget::default().share(4), PooledBudget::default());
    }

    /// A call (value 10, cost 10) and an email (value 1, cost 0.2): with money free the call;
    /// from a price of 9/9.8 the email, net of its cost, is worth more; above 5 (its value
    /// per cost) neither. A capped call leaves the email alone.
    #[test]
    fn demand_steps_down_from_the_most_valuable_action_to_the_cheapest() {
        let offer = |value: f64, cost: f64| Offer {
            slot: None,
            value,
            cost,
            key: value / cost,
        };
        let offers = [offer(1.0, 0.2), offer(10.0, 10.0)];
        let steps = demand_steps(&offers, |_| true);
        assert_eq!(steps.len(), 2, "{steps:?}");
        assert!((steps[0].0 - 9.0 / 9.8).abs() < 1e-12 && (steps[0].1 - 9.8).abs() < 1e-12);
        assert!((steps[1].0 - 5.0).abs() < 1e-12 && (steps[1].1 - 0.2).abs() < 1e-12);
        assert_eq!(demand_steps(&offers, |i| i == 0), [(5.0, 0.2)]);
        assert!(demand_steps(&offers, |_| false).is_empty());
        // An email worth more per cost and in all: the call is never wanted.
        let dominated = [offer(20.0, 0.2), offer(10.0, 10.0)];
        assert_eq!(demand_steps(&dominated, |_| true), [(100.0, 0.2)]);
    }
}
