//! `GET /v1/summary` for the whole deployment under `partitions.ownership = leases`, from
//! whichever replica is asked.
//!
//! Each replica keeps only its own partitions' customers, so its own totals are a share of
//! the picture a marketer or an SRE asks for. The replica asked looks up every partition's
//! owner (the lease holders, as [`super::forward`] does for one customer), asks each owner
//! for its own totals ([`FORWARDED_BY`] set: answer locally) and adds them up. Each answer
//! names the partitions it counted, so a partition counted by two replicas in the middle of
//! a hand-over is seen: the round is asked again once, then refused with a 503. A partition
//! nobody counted (unowned for a moment, restoring, or its owner did not answer) leaves the
//! answer incomplete rather than failing it: `complete` is false and `missing` says which
//! and why.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use axum::http::{HeaderMap, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::{Deserialize, Serialize};
use tokio::task::JoinSet;

use super::forward::{retry_soon, Replicas};
use crate::engine::Summary;

/// The largest replica answer read (a summary is well under a KiB per region).
const MAX_ANSWER: usize = 1 << 20;
/// How long to wait before asking again after two replicas both counted a partition.
const OVERLAP_RETRY: Duration = Duration::from_millis(200);

/// The counts a summary has, which add up over replicas.
#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq)]
pub(crate) struct Totals {
    pub now: String,
    pub customers: u64,
    pub by_stage: BTreeMap<String, i64>,
    pub by_segment: BTreeMap<String, i64>,
    pub by_churn_probability: BTreeMap<String, i64>,
    pub by_region: BTreeMap<String, i64>,
}

impl Totals {
    fn add(&mut self, other: Totals) {
        // RFC 3339 times of one format order as text does: the furthest clock.
        if other.now > self.now {
            self.now = other.now;
        }
        self.customers += other.customers;
        for (total, part) in [
            (&mut self.by_stage, other.by_stage),
            (&mut self.by_segment, other.by_segment),
            (&mut self.by_churn_probability, other.by_churn_probability),
            (&mut self.by_region, other.by_region),
        ] {
            for (k, n) in part {
                *total.entry(k).or_default() += n;
            }
        }
    }
}

/// One replica's own totals, as it answers `/v1/summary` when asked by another.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
pub(crate) struct Part {
    #[serde(flatten)]
    pub totals: Totals,
    pub thresholds: serde_json::Value,
    #[serde(default)]
    pub partitions: Vec<u16>,
}

impl Part {
    fn of(summary: &Summary) -> Self {
        // Through JSON: exactly what another replica would have sent.
        serde_json::from_value(serde_json::to_value(summary).expect("a summary serialises"))
            .expect("a summary reads back")
    }
}

/// The deployment's totals.
#[derive(Debug, Serialize, PartialEq)]
pub(crate) struct FleetSummary {
    /// Added up; `now` is the furthest clock among the replicas.
    #[serde(flatten)]
    pub totals: Totals,
    /// The segment thresholds of the lowest partition counted (under `segments.mode =
    /// population` each partition draws its own).
    pub thresholds: serde_json::Value,
    /// Every partition's customers are counted.
    pub complete: bool,
    /// `partitions.count`.
    pub partitions: u16,
    /// Per replica that answered, the partitions it counted.
    pub replicas: BTreeMap<String, Vec<u16>>,
    /// The partitions not counted, with why.
    pub missing: BTreeMap<u16, String>,
}

/// Two replicas both counted `0`'s customers (a hand-over between their answers).
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Overlap(pub u16);

/// Adds up the `answers` of the replicas (by name) over `count` partitions; `unanswered`
/// says why partitions were not asked for or not answered, and partitions neither counted
/// nor in it are taken to be moving between replicas.
pub(crate) fn combine(
    count: u16,
    answers: Vec<(String, Part)>,
    unanswered: BTreeMap<u16, String>,
) -> Result<FleetSummary, Overlap> {
    let mut counted = BTreeSet::new();
    for (_, part) in &answers {
        for &p in &part.partitions {
            if !counted.insert(p) {
                return Err(Overlap(p));
            }
        }
    }
    let lowest = answers
        .iter()
        .filter_map(|(_, part)| part.partitions.iter().min().map(|&p| (p, part)))
        .min_by_key(|(p, _)| *p)
        .map(|(_, part)| part.thresholds.clone());
    let mut total = FleetSummary {
        totals: Totals::default(),
        thresholds: lowest.unwrap_or(serde_json::Value::Null),
        complete: false,
        partitions: count,
        replicas: BTreeMap::new(),
        missing: BTreeMap::new(),
    };
    for (name, part) in answers {
        total.totals.add(part.totals);
        total
            .replicas
            .entry(name)
            .or_default()
            .extend(part.partitions);
    }
    total.missing = (0..count)
        .filter(|p| !counted.contains(p))
        .map(|p| {
            let why = unanswered.get(&p).cloned().unwrap_or_else(|| {
                "its owner is restoring it or handing it over; try again shortly".into()
            });
            (p, why)
        })
        .collect();
    total.complete = total.missing.is_empty();
    Ok(total)
}

/// The deployment's summary, asked of every owner; `local` is this replica's own.
pub(crate) async fn summary(
    replicas: &Arc<Replicas>,
    local: impl Fn() -> LocalSummary,
    headers: &HeaderMap,
) -> Response {
    for attempt in 0..2 {
        let (answers, unanswered) = match gather(replicas, &local, headers).await {
            Ok(gathered) => gathered,
            Err(response) => return response,
        };
        match combine(replicas.partitions().get(), answers, unanswered) {
            Ok(total) => return Json(total).into_response(),
            Err(Overlap(p)) if attempt == 0 => {
                tracing::debug!(
                    partition = p,
                    "two replicas counted one partition; asking again"
                );
                tokio::time::sleep(OVERLAP_RETRY).await;
            }
            Err(Overlap(p)) => {
                return retry_soon(&format!(
                    "partition {p} is moving between replicas, which both counted it; try again shortly"
                ))
            }
        }
    }
    unreachable!("the second attempt returns")
}

/// This replica's own summary, or the answer to give instead.
pub(crate) type LocalSummary =
    std::pin::Pin<Box<dyn std::future::Future<Output = Result<Summary, Response>> + Send>>;

type Gathered = (Vec<(String, Part)>, BTreeMap<u16, String>);

/// Asks every partition's owner (this replica itself without a round trip) for its totals.
async fn gather(
    replicas: &Arc<Replicas>,
    local: &impl Fn() -> LocalSummary,
    headers: &HeaderMap,
) -> Result<Gathered, Response> {
    let owners = replicas.owners().await.map_err(|e| {
        retry_soon(&format!(
            "cannot look up the partitions' owners in Redis ({e}); try again shortly"
        ))
    })?;
    let mut unanswered = BTreeMap::new();
    let mut by_owner: BTreeMap<String, (Option<String>, Vec<u16>)> = BTreeMap::new();
    for (p, owner) in (0..).zip(owners) {
        match owner {
            Some(o) => by_owner
                .entry(o.member)
                .or_insert((o.url, Vec::new()))
                .1
                .push(p),
            None => {
                unanswered.insert(p, "no replica holds it: it is being handed over".into());
            }
        }
    }
    // This replica's own, even when it holds no lease (a restart, before its first round):
    // what its engines count is counted once whoever holds the lease.
    let me = replicas.me().as_str().to_string();
    by_owner.entry(me.clone()).or_insert((None, Vec::new()));
    let mut asked = JoinSet::new();
    for (member, (url, held)) in by_owner {
        if member == me {
            let own = local();
            asked.spawn(async move {
                let own = own.await.map(|s| Part::of(&s)).map_err(describe_local);
                (member, held, own)
            });
            continue;
        }
        let replicas = replicas.clone();
        let headers = headers.clone();
        asked.spawn(async move {
            let answer = match url {
                Some(url) => ask(&replicas, &url, &headers).await,
                None => Err(format!(
                    "its owner, replica {member}, has published no URL to reach it by"
                )),
            };
            (member, held, answer)
        });
    }
    let mut answers = Vec::new();
    while let Some(done) = asked.join_next().await {
        let (member, held, answer) = done.expect("a summary request does not panic");
        match answer {
            Ok(part) => answers.push((member, part)),
            Err(why) => {
                for p in held {
                    unanswered.insert(p, why.clone());
                }
            }
        }
    }
    Ok((answers, unanswered))
}

/// One replica's own totals.
async fn ask(replicas: &Replicas, url: &str, headers: &HeaderMap) -> Result<Part, String> {
    let uri = Uri::from_static("/v1/summary");
    let response = replicas.pass_on(url, &uri, headers).await?;
    let status = response.status();
    let body = axum::body::to_bytes(response.into_body(), MAX_ANSWER)
        .await
        .map_err(|e| format!("its answer from {url} broke off: {e}"))?;
    if status != StatusCode::OK {
        return Err(format!(
            "its owner at {url} answered {status}: {}",
            String::from_utf8_lossy(&body)
        ));
    }
    serde_json::from_slice(&body)
        .map_err(|e| format!("its owner at {url} answered a summary not understood: {e}"))
}

fn describe_local(response: Response) -> String {
    format!(
        "this replica's engines did not answer ({})",
        response.status()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn part(customers: u64, partitions: &[u16], now: &str) -> Part {
        Part {
            totals: Totals {
                now: now.into(),
                customers,
                by_stage: [("active".into(), customers as i64)].into(),
                by_segment: [("important_value".into(), 1)].into(),
                by_churn_probability: [("0.0-0.1".into(), customers as i64)].into(),
                by_region: [("none".into(), customers as i64)].into(),
            },
            thresholds: serde_json::json!({ "partition": partitions.first() }),
            partitions: partitions.to_vec(),
        }
    }

    #[test]
    fn the_replicas_totals_add_up_and_the_lowest_partition_gives_the_thresholds() {
        let total = combine(
            4,
            vec![
                ("b".into(), part(30, &[1, 3], "1997-03-02T00:00:00Z")),
                ("a".into(), part(20, &[0, 2], "1997-03-01T00:00:00Z")),
            ],
            BTreeMap::new(),
        )
        .unwrap();
        assert!(total.complete && total.missing.is_empty());
        assert_eq!(total.totals.customers, 50);
        assert_eq!(total.totals.by_stage["active"], 50);
        assert_eq!(total.totals.by_segment["important_value"], 2);
        assert_eq!(total.totals.now, "1997-03-02T00:00:00Z");
        assert_eq!(total.thresholds, serde_json::json!({ "partition": 0 }));
        assert_eq!(total.replicas["a"], vec![0, 2]);
        assert_eq!(total.partitions, 4);
    }

    #[test]
    fn a_partition_nobody_counted_makes_the_answer_incomplete_with_the_reason() {
        let total = combine(
            3,
            vec![("a".into(), part(20, &[0], "1997-03-01T00:00:00Z"))],
            [(2, "its owner at http://b did not answer".to_string())].into(),
        )
        .unwrap();
        assert!(!total.complete);
        assert_eq!(total.missing.len(), 2);
        assert!(total.missing[&1].contains("handing it over"));
        assert!(total.missing[&2].contains("did not answer"));
    }

    #[test]
    fn the_answer_is_flat_json_with_a_summarys_fields() {
        let total = combine(
            1,
            vec![("a".into(), part(3, &[0], "1997-03-01T00:00:00Z"))],
            BTreeMap::new(),
        )
        .unwrap();
        let json = serde_json::to_value(&total).unwrap();
        for field in [
            "now",
            "customers",
            "by_stage",
            "by_region",
            "thresholds",
            "complete",
        ] {
            assert!(json.get(field).is_some(), "{field} in {json}");
        }
        let back: Part =
            serde_json::from_value(serde_json::to_value(part(3, &[0], "x")).unwrap()).unwrap();
        assert_eq!(back, part(3, &[0], "x"));
    }

    #[test]
    fn a_partition_counted_twice_is_refused() {
        let answers = vec![
            ("a".into(), part(20, &[0, 1], "1997-03-01T00:00:00Z")),
            ("b".into(), part(30, &[1], "1997-03-01T00:00:00Z")),
        ];
        assert_eq!(combine(2, answers, BTreeMap::new()), Err(Overlap(1)));
    }
}
