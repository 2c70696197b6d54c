//! Lockstep: the simulation and churnd advance together, one simulated day at a time, so that
//! the customers' answers to churnd's tasks come back into the events churnd reads next.
//!
//! For a closed loop under churnd's event-time clock (`clock.mode = event`): the run covers
//! `history_days` days that end at the last UTC midnight before it starts (event times stay
//! in the past, as the input checks require), and for each day in turn it
//!
//! 1. writes the day's events, each with its own time in `ts`;
//! 2. waits until churnd has consumed them: for every stream written that day, the entries
//!    up to the last ID written are applied and the tasks and outcome records they caused
//!    are written, so everything the day caused is in Redis. With state kept (positions
//!    committed with snapshots, the default) churnd moves the group `<group>:written` to the
//!    last entry whose effects are written ([`crate::source::commit::written_group`]), and
//!    its `last-delivered-id` (`XINFO GROUPS`) must reach the last ID written; per entry
//!    acknowledged (`source.acknowledge = "per_entry"`, or `state.dir` empty) that group does
//!    not exist, and the group's own `last-delivered-id` must reach it with nothing pending
//!    (an entry is acknowledged only once its effects are written). The wait is
//!    bounded (`day_timeout`) and names the stream and where the group stands when it runs out;
//! 3. reads the tasks written so far and hands each acted-on one to its customer at the end of
//!    the day: an action that works on the customer's hidden persona brings a purchase in the
//!    following days' events.
//!
//! Under the event clock churnd's time is then the simulation's: conversions happen, and
//! conversion windows close, on the simulated days on which they would in reality. Nothing
//! is paced by the wall clock (the run goes as fast as churnd keeps up) and nothing is written
//! malformed. A lost Redis connection ends the run with the error: a benchmark repeats the run
//! rather than resume it.

use std::time::{Duration, Instant};

use crate::connection::RedisConn;
use redis::Value;
use tokio_util::sync::CancellationToken;

use super::respond::TaskReader;
use super::{push_event, SimulateError, SimulateOptions, SimulateReport, DAY_MS};
use crate::connection::Connector;
use crate::event::EntryId;
use crate::source::commit::written_group;
use crate::source::lag::{group_info, GroupInfo};

/// Events written per pipeline.
const CHUNK: usize = 2_000;
/// How often the consumer group is looked at while waiting.
const POLL: Duration = Duration::from_millis(2);
/// Progress is logged every this many simulated days.
const PROGRESS_DAYS: u32 = 30;

/// How the simulation waits for churnd.
#[derive(Debug, Clone)]
pub struct Lockstep {
    /// churnd's consumer group on the input streams (`source.group`).
    pub group: String,
    /// The longest wait for churnd to consume one day's events.
    pub day_timeout: Duration,
}

/// The simulated days: `count` whole UTC days, the last one ending at or before `now_ms`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Days {
    pub start_ms: u64,
    pub count: u32,
}

impl Days {
    pub fn ending_by(now_ms: u64, count: u32) -> Self {
        let last_midnight = now_ms / DAY_MS * DAY_MS;
        Self {
            start_ms: last_midnight.saturating_sub(u64::from(count) * DAY_MS),
            count,
        }
    }

    /// The end (exclusive) of day `day` (0-based): its events have times below it.
    pub fn end_of(&self, day: u32) -> u64 {
        self.start_ms + u64::from(day + 1) * DAY_MS
    }
}

/// Where the group stands on a stream that has not been consumed yet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Behind {
    /// The stream has no group of that name (churnd has not started on it).
    NoGroup,
    /// Entries up to `written` were written; the group has been delivered up to `delivered`
    /// and has `pending` entries not acknowledged; `effects`: with positions committed with
    /// snapshots, where its written group stands (the last entry whose effects are written).
    Consuming {
        written: EntryId,
        delivered: Option<EntryId>,
        pending: i64,
        effects: Option<Option<EntryId>>,
    },
}

/// Whether the group has consumed everything up to `written` (the last ID written to the
/// stream, `None` when nothing was), from the group's row (`info`) and its written group's
/// (`effects`) in `XINFO GROUPS`: with a written group, that group has reached it; without
/// (per entry acknowledged), the group was delivered that far with nothing pending.
pub(crate) fn behind(
    written: Option<EntryId>,
    info: Option<GroupInfo>,
    effects: Option<GroupInfo>,
) -> Option<Behind> {
    let written = written?;
    let Some(info) = info else {
        return Some(Behind::NoGroup);
    };
    let delivered = info.last_delivered;
    let done = match effects {
        Some(effects) => effects.last_delivered >= Some(written),
        None => delivered >= Some(written) && info.pending == 0,
    };
    (!done).then_some(Behind::Consuming {
        written,
        delivered,
        pending: info.pending,
        effects: effects.map(|e| e.last_delivered),
    })
}

impl std::fmt::Display for Behind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::NoGroup => write!(f, "the stream has no such consumer group yet"),
            Self::Consuming {
                written,
                delivered,
                pending,
                effects,
            } => {
                let upto =
                    |id: &Option<EntryId>| id.map_or("nothing".to_string(), |d| d.to_string());
                write!(
                    f,
                    "written up to {written}, delivered up to {}, {pending} pending",
                    upto(delivered)
                )?;
                match effects {
                    Some(effects) => write!(f, ", effects written up to {}", upto(effects)),
                    None => Ok(()),
                }
            }
        }
    }
}

/// The day's events have not been consumed in time.
#[derive(Debug, thiserror::Error)]
#[error(
    "churnd did not consume simulated day {day}'s events within {timeout:?}: on stream \
     {stream}, group {group}: {behind}. Is churnd running on this Redis with source.group = \
     {group} and clock.mode = event?"
)]
pub struct NotConsumed {
    pub day: u32,
    pub timeout: Duration,
    pub stream: String,
    pub group: String,
    behind: String,
}

/// Writes `pipe` and returns the IDs Redis gave its XADDs, in order.
async fn write_ids(
    pipe: &redis::Pipeline,
    conn: &mut RedisConn,
) -> Result<Vec<EntryId>, SimulateError> {
    let ids: Vec<String> = pipe.query_async(conn).await?;
    Ok(ids
        .iter()
        .filter_map(|id| EntryId::parse(id.as_bytes()))
        .collect())
}

/// Waits until `group` has consumed every stream up to its entry in `written`; `false` if
/// shutdown came first.
async fn wait_consumed(
    conn: &mut RedisConn,
    streams: &[String],
    written: &[Option<EntryId>],
    lockstep: &Lockstep,
    day: u32,
    shutdown: &CancellationToken,
) -> Result<bool, SimulateError> {
    let deadline = Instant::now() + lockstep.day_timeout;
    for (stream, &last) in streams.iter().zip(written) {
        loop {
            let reply: Result<Value, _> = redis::cmd("XINFO")
                .arg("GROUPS")
                .arg(stream)
                .query_async(conn)
                .await;
            let (info, effects) = match reply {
                Ok(reply) => (
                    group_info(&reply, &lockstep.group),
                    group_info(&reply, &written_group(&lockstep.group)),
                ),
                // The stream does not exist yet: nothing was written to it.
                Err(e)
                    if e.kind()
                        == redis::ErrorKind::Server(redis::ServerErrorKind::ResponseError) =>
                {
                    (None, None)
                }
                Err(e) => return Err(e.into()),
            };
            let Some(behind) = behind(last, info, effects) else {
                break;
            };
            if Instant::now() >= deadline {
                return Err(SimulateError::NotConsumed(Box::new(NotConsumed {
                    day,
                    timeout: lockstep.day_timeout,
                    stream: stream.clone(),
                    group: lockstep.group.clone(),
                    behind: behind.to_string(),
                })));
            }
            tokio::select! {
                _ = tokio::time::sleep(POLL) => {}
                _ = shutdown.cancelled() => return Ok(false),
            }
        }
    }
    Ok(true)
}

/// The lockstep run (see the module's doc): `options.history_days` days, ending at the last
/// UTC midnight before `now_ms`.
pub(crate) async fn run(
    options: &SimulateOptions,
    lockstep: &Lockstep,
    mut connector: Connector,
    now_ms: u64,
    shutdown: CancellationToken,
) -> Result<SimulateReport, SimulateError> {
    let days = Days::ending_by(now_ms, options.history_days);
    let mut population = super::population(options, days.start_ms)?;
    let mut report = SimulateReport::default();
    let Some(mut conn) = connector.connect(&shutdown).await else {
        return Ok(report);
    };
    let streams: Vec<String> = (0..options.partitions.get())
        .map(|p| options.partitions.stream(&options.stream, p))
        .collect();
    let mut reader = TaskReader::new(options.respond_to.clone(), false, &mut conn)
        .await
        .map_err(SimulateError::ReadTasks)?;
    let prefix = options.id_prefix();
    tracing::info!(
        stream = %options.stream,
        customers = options.customers,
        days = days.count,
        seed = options.seed,
        group = %lockstep.group,
        "simulating customers in lockstep with churnd"
    );
    for day in 0..days.count {
        let end_ms = days.end_of(day);
        // Per stream, the last ID written today.
        let mut written: Vec<Option<EntryId>> = vec![None; streams.len()];
        while population.peek_ms() < end_ms {
            let mut pipe = redis::pipe();
            let mut partitions = Vec::with_capacity(CHUNK);
            let mut batch = SimulateReport::default();
            while partitions.len() < CHUNK && population.peek_ms() < end_ms {
                let event = population.next_event();
                push_event(&mut pipe, options, &event, event.ts_ms, None);
                partitions.push(usize::from(
                    options.partitions.of(&options.customer_id(event.customer)),
                ));
                batch.count(&event.activity);
                batch.history += 1;
            }
            let ids = write_ids(&pipe, &mut conn).await?;
            for (&p, id) in partitions.iter().zip(ids) {
                written[p] = written[p].max(Some(id));
            }
            report.add(&batch);
        }
        if !wait_consumed(&mut conn, &streams, &written, lockstep, day, &shutdown).await? {
            break;
        }
        loop {
            let tasks = reader
                .read(&mut conn)
                .await
                .map_err(SimulateError::ReadTasks)?;
            if tasks.is_empty() {
                break;
            }
            report.answer(&tasks, &prefix, &mut population, end_ms);
        }
        if (day + 1) % PROGRESS_DAYS == 0 {
            tracing::info!(
                day = day + 1,
                of = days.count,
                written = report.written(),
                tasks_read = report.tasks_read,
                tasks_answered = report.tasks_answered,
                "lockstep progress"
            );
        }
    }
    report.customers_arrived = population.arrived();
    report.customers_active = population.active();
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(ms: u64, seq: u64) -> EntryId {
        EntryId { ms, seq }
    }

    fn info(delivered: Option<EntryId>, pending: i64) -> Option<GroupInfo> {
        Some(GroupInfo {
            lag: None,
            pending,
            last_delivered: delivered,
            entries_read: None,
        })
    }

    #[test]
    fn days_are_whole_utc_days_ending_by_now() {
        let now = 20_000 * DAY_MS + 5 * 3_600_000;
        let days = Days::ending_by(now, 10);
        assert_eq!(days.start_ms, 19_990 * DAY_MS);
        assert_eq!(days.end_of(0), 19_991 * DAY_MS);
        assert_eq!(days.end_of(9), 20_000 * DAY_MS);
        assert!(days.end_of(9) <= now);
        // Exactly at midnight: the day that just ended is the last.
        assert_eq!(
            Days::ending_by(20_000 * DAY_MS, 1).end_of(0),
            20_000 * DAY_MS
        );
    }

    #[test]
    fn per_entry_a_stream_is_consumed_once_delivered_that_far_with_nothing_pending() {
        let written = Some(id(50, 3));
        assert_eq!(behind(written, info(Some(id(50, 3)), 0), None), None);
        assert_eq!(behind(written, info(Some(id(60, 0)), 0), None), None);
        assert_eq!(
            behind(written, info(Some(id(50, 3)), 2), None),
            Some(Behind::Consuming {
                written: id(50, 3),
                delivered: Some(id(50, 3)),
                pending: 2,
                effects: None,
            }),
            "delivered but not yet acknowledged: tasks may still be unwritten"
        );
        assert!(behind(written, info(Some(id(50, 2)), 0), None).is_some());
        assert!(behind(written, info(None, 0), None).is_some());
        assert_eq!(behind(written, None, None), Some(Behind::NoGroup));
    }

    #[test]
    fn with_snapshots_a_stream_is_consumed_once_its_effects_are_written_that_far() {
        let written = Some(id(50, 3));
        let read = info(Some(id(50, 3)), 0);
        assert_eq!(
            behind(written, read, info(Some(id(40, 0)), 0)),
            Some(Behind::Consuming {
                written: id(50, 3),
                delivered: Some(id(50, 3)),
                pending: 0,
                effects: Some(Some(id(40, 0))),
            }),
            "read (NOACK: nothing pending) but its tasks not yet written"
        );
        assert_eq!(behind(written, read, info(Some(id(50, 3)), 0)), None);
        assert_eq!(behind(written, read, info(Some(id(70, 0)), 0)), None);
    }

    #[test]
    fn a_stream_not_written_is_not_waited_for() {
        assert_eq!(behind(None, None, None), None);
        assert_eq!(behind(None, info(None, 5), None), None);
    }

    #[test]
    fn where_the_group_stands_is_told_in_words() {
        let text = behind(Some(id(7, 1)), info(None, 0), None)
            .unwrap()
            .to_string();
        assert_eq!(
            text,
            "written up to 7-1, delivered up to nothing, 0 pending"
        );
        let text = behind(
            Some(id(7, 1)),
            info(Some(id(7, 1)), 0),
            info(Some(id(5, 0)), 0),
        )
        .unwrap()
        .to_string();
        assert_eq!(
            text,
            "written up to 7-1, delivered up to 7-1, 0 pending, effects written up to 5-0"
        );
    }
}
