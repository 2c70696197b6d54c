//! `[partitions]`: how many partitions the input streams are split into (see
//! [`crate::partition`]), fixed at install: a snapshot records the count, and a start with
//! another is refused; and who owns them (see [`crate::ownership`]): this process alone
//! (`ownership = all`, the default) or the replicas of the consumer group, each holding the
//! partitions rendezvous hashing gives it by a lease (`ownership = leases`).

use config::Value;
use serde::Serialize;

use super::read::{not_a, read_choices, Choice, Fields, Read, Reader};
use super::units::Interval;
use super::{Problem, Section, Settings, SourceSettings};
use crate::ownership::MemberName;
use crate::partition::{PartitionCount, Partitioning};

/// Who owns the partitions (`partitions.ownership`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Ownership {
    /// This process reads, keeps and writes every partition: one replica per consumer group.
    #[default]
    All,
    /// The replicas of the consumer group (each named by `source.consumer`) divide the
    /// partitions among themselves and hold each by a lease in Redis; a replica that joins,
    /// leaves or dies moves partitions with their snapshots (in the shared `state.dir`, or in
    /// Redis with `state.store = "redis"`).
    Leases,
}

impl Choice for Ownership {
    const ALL: &'static [Self] = &[Self::All, Self::Leases];
    fn name(self) -> &'static str {
        match self {
            Self::All => "all",
            Self::Leases => "leases",
        }
    }
}
read_choices!(Ownership);

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PartitionSettings {
    /// Partitions of every input stream; 1 keeps each stream whole, under its own name.
    pub count: PartitionCount,
    /// Who owns the partitions: this process alone, or replicas holding leases.
    pub ownership: Ownership,
    /// Under `ownership = leases`: how long a replica's lease of a partition (and its entry
    /// among the live members) lasts without renewal. Renewed every third of it; a replica
    /// that dies has its partitions taken over this long after its last renewal.
    #[serde(rename = "lease_ms")]
    pub lease: Interval,
    /// Under `ownership = leases`: the URL where the other replicas reach this one's HTTP
    /// API, published with its heartbeats, to pass on requests for customers of the
    /// partitions it owns. `None`: `http://<host name>:<http.addr's port>`.
    pub advertise_url: Option<String>,
}

impl Default for PartitionSettings {
    fn default() -> Self {
        Self {
            count: PartitionCount::default(),
            ownership: Ownership::default(),
            lease: Interval::from_millis(10_000),
            advertise_url: None,
        }
    }
}

impl Read for PartitionCount {
    fn read(value: Value, key: &str, r: &mut Reader) -> Option<Self> {
        let n = value.clone().try_deserialize::<u16>().ok();
        let n = n.and_then(Self::new);
        if n.is_none() {
            let expected = format!("a whole number from 1 to {}", Self::MAX);
            not_a(&value, key, r, &expected);
        }
        n
    }
}

impl Section for PartitionSettings {
    fn from_fields(f: &mut Fields<'_>) -> Self {
        let d = Self::default();
        Self {
            count: f.get("count", d.count),
            ownership: f.get("ownership", d.ownership),
            lease: f.get("lease_ms", d.lease),
            advertise_url: f.get("advertise_url", d.advertise_url),
        }
    }

    fn problems(&self) -> Vec<Problem> {
        let mut p: Vec<Problem> = self
            .advertise_url
            .as_deref()
            .and_then(advertise_url_problem)
            .map(|why| Problem::new("partitions.advertise_url", why))
            .into_iter()
            .collect();
        if self.ownership == Ownership::Leases && self.lease.as_millis() < 300 {
            p.push(Problem::new(
                "partitions.lease_ms",
                format!(
                    "({}) must be at least 300 under partitions.ownership = leases: a lease is \
                     renewed every third of it, and a round trip to Redis must fit well within that",
                    self.lease.as_millis()
                ),
            ));
        }
        p
    }
}

/// Why `url` cannot be where the other replicas reach this one, if it cannot: it must be
/// an absolute `http://` URL naming a host, with no path beyond `/` (the API's paths are
/// added to it), no query and no user.
fn advertise_url_problem(url: &str) -> Option<String> {
    let given = format!("({url:?})");
    let Ok(uri) = url.parse::<axum::http::Uri>() else {
        return Some(format!(
            "{given} is not a URL; set it to http://<host>:<port>, e.g. \
             http://churnd-0.churnd-headless:9898"
        ));
    };
    let problem = if uri.scheme_str() != Some("http") {
        "must start with http:// (the replicas speak plain HTTP to each other)"
    } else if uri.host().is_none_or(str::is_empty) {
        "must name a host"
    } else if uri.authority().is_some_and(|a| a.as_str().contains('@')) {
        "must not hold a user or password"
    } else if !matches!(uri.path(), "" | "/") || uri.query().is_some() {
        "must not hold a path or query: the API's paths are added to it"
    } else {
        return None;
    };
    Some(format!("{given} {problem}"))
}

/// Problems of `partitions.ownership = leases` with other sections: the partitions' state
/// must be where every replica reads it (a shared directory, or Redis), and the replica
/// needs a valid name.
fn ownership_problems(s: &Settings) -> Vec<Problem> {
    if s.partitions.ownership != Ownership::Leases {
        return Vec::new();
    }
    let mut p = Vec::new();
    if !s.state.keeps_state() {
        p.push(Problem::new(
            "state.dir",
            "is empty (with state.store = dir), but partitions.ownership = leases moves \
             partitions between replicas with their snapshots: set state.dir to a directory \
             every replica shares (a ReadWriteMany volume), or state.store = redis to keep \
             the snapshots in Redis",
        ));
    }
    if !s.source.consumer.is_empty() {
        if let Err(e) = MemberName::new(&s.source.consumer) {
            p.push(Problem::new(
                "source.consumer",
                format!("names this replica under partitions.ownership = leases and {e}"),
            ));
        }
    }
    p
}

/// Problems of `source.streams` under partitions: a stream name holding a brace would put a
/// hash tag of its own before the partition's, and every partition in one slot.
pub(super) fn problems(s: &Settings) -> Vec<Problem> {
    let mut p = ownership_problems(s);
    if !s.partitions.count.is_partitioned() {
        return p;
    }
    p.extend(braces(s));
    p
}

fn braces(s: &Settings) -> Vec<Problem> {
    s.source
        .streams
        .iter()
        .filter(|stream| stream.contains(['{', '}']))
        .map(|stream| {
            Problem::new(
                "source.streams",
                format!(
                    "({stream:?}) must not hold braces with partitions.count > 1: the \
                     partition streams are named {stream}:{{0}} … and the braces are their \
                     Redis Cluster hash tag"
                ),
            )
        })
        .collect()
}

impl Settings {
    /// The streams read: `source.streams`, each split into its partition streams when
    /// `partitions.count` > 1. Positions, acknowledgements and lag are per stream of this
    /// list.
    pub fn input_streams(&self) -> Vec<String> {
        self.partitions.count.streams(&self.source.streams)
    }

    /// `[source]` with [`Self::input_streams`] as its streams: what the source, the lag
    /// monitor and recovery read.
    pub fn partitioned_source(&self) -> SourceSettings {
        SourceSettings {
            streams: self.input_streams(),
            ..self.source.clone()
        }
    }

    /// What the engine needs to dead-letter events in the wrong partition stream.
    pub fn partitioning(&self) -> Partitioning {
        Partitioning {
            count: self.partitions.count,
            bases: self.source.streams.clone(),
            own: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stream_names_with_braces_are_refused_only_under_partitions() {
        let mut s = Settings::default();
        s.source.streams = vec!["{shop}:events".into()];
        assert!(problems(&s).is_empty());
        s.partitions.count = PartitionCount::new(4).unwrap();
        assert_eq!(
            problems(&s)
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>(),
            ["source.streams (\"{shop}:events\") must not hold braces with partitions.count > 1: \
              the partition streams are named {shop}:events:{0} … and the braces are their Redis \
              Cluster hash tag"]
        );
    }

    #[test]
    fn the_advertised_url_is_an_http_address() {
        assert_eq!(
            advertise_url_problem("http://churnd-0.churnd-headless:9898"),
            None
        );
        assert_eq!(advertise_url_problem("http://10.0.0.7:9898/"), None);
        for (url, says) in [
            ("churnd-0:9898", "must start with http://"),
            ("https://a:1", "must start with http://"),
            ("http://a:1/api", "must not hold a path"),
            ("http://u:p@a:1", "must not hold a user"),
            ("not a url", "is not a URL"),
        ] {
            let problem = advertise_url_problem(url).unwrap_or_default();
            assert!(problem.contains(says), "{url}: {problem}");
        }
        let s = PartitionSettings {
            advertise_url: Some("ftp://x".into()),
            ..PartitionSettings::default()
        };
        assert!(s.problems()[0]
            .to_string()
            .starts_with("partitions.advertise_url (\"ftp://x\") must start with http://"));
    }

    #[test]
    fn the_source_reads_every_partition_stream() {
        let mut s = Settings::default();
        assert_eq!(s.partitioned_source(), s.source);
        s.partitions.count = PartitionCount::new(2).unwrap();
        assert_eq!(
            s.partitioned_source().streams,
            ["churn:events:{0}", "churn:events:{1}"]
        );
        assert_eq!(s.partitioning().bases, ["churn:events"]);
    }
}
