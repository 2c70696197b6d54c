//! The header's sections after the positions: the budgets' pacing, the open tasks and
//! the uplift book, each a count then its records; the pooled budget's pacing, a presence
//! byte then its record.

use std::io::Read;
use std::sync::Arc;

use super::reader::{malformed, put_str, Reader};
use super::{optional, CodecError, NONE};
use crate::classify::Segment;
use crate::decide::uplift::{Arm, ArmOutcomes};
use crate::decide::{Group, PacerState, Picture, PoolState, TaskKind, BUCKETS};
use crate::outcomes::OpenTask;

/// Version 5's pacing of the budgeted actions (the header's last field): per action its
/// name, day, counts, expected candidates and the histogram's non-zero buckets.
pub(super) fn put_budgets(out: &mut Vec<u8>, budgets: &[(String, PacerState)]) {
    out.extend_from_slice(&(budgets.len() as u32).to_le_bytes());
    for (action, s) in budgets {
        put_str(out, action);
        for n in [s.day, s.admitted, s.seen] {
            out.extend_from_slice(&n.to_le_bytes());
        }
        out.extend_from_slice(&s.expected.to_bits().to_le_bytes());
        out.extend_from_slice(&s.days.to_le_bytes());
        put_weights(out, s.picture.weights());
    }
}

/// A picture of priorities: the count of its non-zero buckets, then each bucket and its
/// weight.
fn put_weights(out: &mut Vec<u8>, weights: &[f64]) {
    let used: Vec<(usize, f64)> = weights
        .iter()
        .copied()
        .enumerate()
        .filter(|&(_, w)| w != 0.0)
        .collect();
    out.extend_from_slice(&(used.len() as u32).to_le_bytes());
    for (bucket, w) in used {
        out.extend_from_slice(&(bucket as u32).to_le_bytes());
        out.extend_from_slice(&w.to_bits().to_le_bytes());
    }
}

/// Reads what [`put_weights`] wrote; `whose` names the budget in an error.
fn read_weights<R: Read>(r: &mut Reader<R>, whose: &str) -> Result<Picture, CodecError> {
    let mut weights = Box::new([0.0; BUCKETS]);
    for _ in 0..r.u32()? {
        let bucket = r.u32()? as usize;
        let w = f64::from_bits(r.u64()?);
        *weights
            .get_mut(bucket)
            .ok_or_else(|| malformed(format!("{whose}: no priority bucket {bucket}")))? = w;
    }
    Ok(Picture::from_weights(weights))
}

/// Version 6: when each budget's first candidate came, win-back's then the care kinds', in
/// the order of their pacing states.
pub(super) fn put_first_candidates(
    out: &mut Vec<u8>,
    winback: &[(String, PacerState)],
    care: &[(String, PacerState)],
) {
    for (_, s) in winback.iter().chain(care) {
        out.extend_from_slice(&s.first_at.to_le_bytes());
    }
}

pub(super) fn read_budgets<R: Read>(
    r: &mut Reader<R>,
) -> Result<Vec<(String, PacerState)>, CodecError> {
    let count = r.u32()?;
    // Each takes at least its fixed bytes: a count beyond that must not drive an allocation.
    if u64::from(count) * 30 > r.remaining() {
        return Err(malformed(format!("{count} budgets do not fit")));
    }
    let mut budgets = Vec::with_capacity(count as usize);
    for _ in 0..count {
        let action = r.str()?.to_string();
        let mut s = PacerState {
            day: r.u32()?,
            admitted: r.u32()?,
            seen: r.u32()?,
            expected: f64::from_bits(r.u64()?),
            days: r.u32()?,
            ..PacerState::default()
        };
        s.picture = read_weights(r, &format!("budget {action:?}"))?;
        budgets.push((action, s));
    }
    Ok(budgets)
}

/// Version 8's pooled budget (`[winback.budget]`): a byte, 1 when a pool is set, then its
/// day, the spend seen that day, the running spend per day, the days closed, the first
/// candidate's time and the histogram's non-zero buckets; 0 without a pool.
pub(super) fn put_pool(out: &mut Vec<u8>, pool: Option<&PoolState>) {
    let Some(s) = pool else {
        out.push(0);
        return;
    };
    out.push(1);
    out.extend_from_slice(&s.day.to_le_bytes());
    out.extend_from_slice(&s.seen.to_bits().to_le_bytes());
    out.extend_from_slice(&s.expected.to_bits().to_le_bytes());
    out.extend_from_slice(&s.days.to_le_bytes());
    out.extend_from_slice(&s.first_at.to_le_bytes());
    put_weights(out, s.picture.weights());
}

pub(super) fn read_pool<R: Read>(r: &mut Reader<R>) -> Result<Option<PoolState>, CodecError> {
    match r.u8()? {
        0 => return Ok(None),
        1 => {}
        other => return Err(malformed(format!("pooled budget: presence byte {other}"))),
    }
    let mut s = PoolState {
        day: r.u32()?,
        seen: f64::from_bits(r.u64()?),
        expected: f64::from_bits(r.u64()?),
        days: r.u32()?,
        first_at: r.u32()?,
        ..PoolState::default()
    };
    s.picture = read_weights(r, "pooled budget")?;
    Ok(Some(s))
}

/// The name under which snapshots before version 8 kept the pooled budget's pacing among
/// win-back's budgets, as if it were an action's (no action can be named so: names come
/// from TOML keys and lists).
pub(super) const FORMAT_7_POOL_NAME: &str = "(pooled budget)";

/// Snapshots before version 8: the pooled budget's pacing taken out of win-back's
/// budgets, where it was kept under [`FORMAT_7_POOL_NAME`] with the spend seen that day's
/// bits split into `admitted` (high half) and `seen` (low half); a spend that does not read
/// as a finite amount, 0 or more, reads as 0. Of two, the last (as a restore took it).
pub(super) fn pool_of_format_7(budgets: &mut Vec<(String, PacerState)>) -> Option<PoolState> {
    let mut pool = None;
    budgets.retain(|(action, s)| {
        if action != FORMAT_7_POOL_NAME {
            return true;
        }
        let seen = f64::from_bits(u64::from(s.admitted) << 32 | u64::from(s.seen));
        pool = Some(PoolState {
            day: s.day,
            admitted: (),
            seen: if seen.is_finite() { seen.max(0.0) } else { 0.0 },
            expected: s.expected,
            days: s.days,
            picture: s.picture.clone(),
            first_at: s.first_at,
        });
        false
    });
    pool
}

/// The open tasks: their count, then each with its customer ID.
pub(super) fn put_open_tasks(out: &mut Vec<u8>, tasks: &[(String, OpenTask)]) {
    out.extend_from_slice(&(tasks.len() as u32).to_le_bytes());
    for (customer, t) in tasks {
        put_str(out, customer);
        put_str(out, &t.task_id);
        let kind = TaskKind::ALL.iter().position(|k| *k == t.kind);
        out.push(kind.unwrap_or_default() as u8);
        out.push(match t.group {
            Group::Treatment => 0,
            Group::Control => 1,
        });
        out.push(t.segment.map_or(NONE, |s| s.index() as u8));
        put_str(out, &t.action);
        out.extend_from_slice(&t.raised_at.to_le_bytes());
        out.extend_from_slice(&t.closes_at.to_le_bytes());
        out.push(u8::from(t.cancelled));
    }
}

pub(super) fn read_open_tasks<R: Read>(
    r: &mut Reader<R>,
) -> Result<Vec<(String, OpenTask)>, CodecError> {
    let count = r.u32()?;
    // Each takes at least 19 bytes: a count beyond that must not drive an allocation.
    if u64::from(count).saturating_mul(19) > r.remaining() {
        return Err(malformed(format!("{count} open tasks do not fit")));
    }
    let mut tasks = Vec::with_capacity(count as usize);
    for _ in 0..count {
        let customer = r.str()?.to_string();
        let task_id: Box<str> = r.str()?.into();
        let what = |field: &str, v: u8| malformed(format!("open task {task_id:?}: {field} {v}"));
        let kind = r.u8()?;
        let kind = *TaskKind::ALL
            .get(usize::from(kind))
            .ok_or_else(|| what("kind", kind))?;
        let group = match r.u8()? {
            0 => Group::Treatment,
            1 => Group::Control,
            other => return Err(what("group", other)),
        };
        let segment =
            optional(r.u8()?, |i| Segment::ALL.get(i).copied()).map_err(|v| what("segment", v))?;
        let action: Arc<str> = r.str()?.into();
        let raised_at = r.u32()?;
        let closes_at = r.u32()?;
        let cancelled = match r.u8()? {
            0 => false,
            1 => true,
            other => return Err(what("cancelled", other)),
        };
        if customer.is_empty() || task_id.is_empty() {
            return Err(malformed(format!("open task {task_id:?} of {customer:?}")));
        }
        tasks.push((
            customer,
            OpenTask {
                task_id,
                kind,
                group,
                segment,
                action,
                raised_at,
                closes_at,
                cancelled,
            },
        ));
    }
    Ok(tasks)
}

/// Version 7's book: per arm its kind, segment and action, then the four counts.
pub(super) fn put_uplift(out: &mut Vec<u8>, arms: &[(Arm, ArmOutcomes)]) {
    out.extend_from_slice(&(arms.len() as u32).to_le_bytes());
    for (arm, o) in arms {
        let kind = TaskKind::ALL.iter().position(|k| *k == arm.kind);
        out.push(kind.unwrap_or_default() as u8);
        out.push(arm.segment.index() as u8);
        put_str(out, &arm.action);
        for n in [
            o.treated,
            o.treated_converted,
            o.control,
            o.control_converted,
        ] {
            out.extend_from_slice(&n.to_le_bytes());
        }
    }
}

pub(super) fn read_uplift<R: Read>(
    r: &mut Reader<R>,
) -> Result<Vec<(Arm, ArmOutcomes)>, CodecError> {
    let count = r.u32()?;
    // Each takes at least 35 bytes: a count beyond that must not drive an allocation.
    if u64::from(count).saturating_mul(35) > r.remaining() {
        return Err(malformed(format!("{count} arms do not fit")));
    }
    let mut arms = Vec::with_capacity(count as usize);
    for _ in 0..count {
        let (kind, segment) = (r.u8()?, r.u8()?);
        let what = |field: &str, v: u8| malformed(format!("arm: {field} {v}"));
        let kind = *TaskKind::ALL
            .get(usize::from(kind))
            .ok_or_else(|| what("kind", kind))?;
        let segment = *Segment::ALL
            .get(usize::from(segment))
            .ok_or_else(|| what("segment", segment))?;
        let action: Arc<str> = r.str()?.into();
        let o = ArmOutcomes {
            treated: r.u64()?,
            treated_converted: r.u64()?,
            control: r.u64()?,
            control_converted: r.u64()?,
        };
        if o.treated_converted > o.treated || o.control_converted > o.control {
            return Err(malformed(format!(
                "arm {action}/{}: more conversions than tasks",
                segment.as_str()
            )));
        }
        arms.push((
            Arm {
                kind,
                action,
                segment,
            },
            o,
        ));
    }
    Ok(arms)
}
