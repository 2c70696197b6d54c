//! Types that can only hold valid values: intervals from the `*_ms` keys, whole numbers that
//! must not be zero, an address. The keys and their units stay as they always were (a file
//! says `tick_ms = 1000`); the code gets a [`Duration`] that cannot be zero, and the
//! "must be at least 1" checks are the types' own.

use std::net::SocketAddr;
use std::num::{NonZeroU32, NonZeroU64, NonZeroU8, NonZeroUsize};
use std::time::Duration;

use config::{Value, ValueKind};
use serde::{Serialize, Serializer};

use super::read::{not_a, Read, Reader};

/// A positive interval, set in whole milliseconds by a `*_ms` key: at least 1 ms.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Interval(NonZeroU64);

impl Interval {
    /// `ms` milliseconds. Panics at 0, at compile time in a constant: for values written in
    /// code (defaults, tests); settings read from files use [`Self::try_from_millis`].
    pub const fn from_millis(ms: u64) -> Self {
        match NonZeroU64::new(ms) {
            Some(ms) => Self(ms),
            None => panic!("an interval is at least 1 ms"),
        }
    }

    /// `ms` milliseconds, unless 0.
    pub const fn try_from_millis(ms: u64) -> Option<Self> {
        match NonZeroU64::new(ms) {
            Some(ms) => Some(Self(ms)),
            None => None,
        }
    }

    pub const fn get(self) -> Duration {
        Duration::from_millis(self.0.get())
    }

    pub const fn as_millis(self) -> u64 {
        self.0.get()
    }
}

impl From<Interval> for Duration {
    fn from(interval: Interval) -> Self {
        interval.get()
    }
}

/// As the key is written: whole milliseconds.
impl Serialize for Interval {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u64(self.as_millis())
    }
}

impl Read for Interval {
    fn read(value: Value, key: &str, r: &mut Reader) -> Option<Self> {
        let ms = value.clone().try_deserialize::<u64>().ok();
        let interval = ms.and_then(Self::try_from_millis);
        if interval.is_none() {
            not_a(&value, key, r, "a whole number of milliseconds, at least 1");
        }
        interval
    }
}

/// An interval that 0 turns off (`source.claim_idle_ms`, `model.watch_interval_ms`): read
/// from, and written as, whole milliseconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct OrOff(pub Option<Interval>);

impl Read for OrOff {
    fn read(value: Value, key: &str, r: &mut Reader) -> Option<Self> {
        let ms = value.clone().try_deserialize::<u64>().ok();
        if ms.is_none() {
            not_a(&value, key, r, "a whole number of milliseconds (0: off)");
        }
        ms.map(|ms| Self(Interval::try_from_millis(ms)))
    }
}

/// Serialises an interval that 0 turns off as its key holds it (`serialize_with`).
pub(crate) fn millis_or_off<S: Serializer>(v: &Option<Interval>, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_u64(v.map_or(0, Interval::as_millis))
}

/// A duration that may be zero (`shutdown.drain_timeout_ms`: exit at once), read from whole
/// milliseconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Millis(pub Duration);

impl Read for Millis {
    fn read(value: Value, key: &str, r: &mut Reader) -> Option<Self> {
        u64::read(value, key, r).map(|ms| Self(Duration::from_millis(ms)))
    }
}

/// Serialises a duration as whole milliseconds (`serialize_with`).
pub(crate) fn millis<S: Serializer>(v: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_u64(u64::try_from(v.as_millis()).unwrap_or(u64::MAX))
}

macro_rules! read_non_zero {
    ($($t:ty => $plain:ty, $expected:expr;)*) => {
        $(impl Read for $t {
            fn read(value: Value, key: &str, r: &mut Reader) -> Option<Self> {
                let n = value.clone().try_deserialize::<$plain>().ok();
                let n = n.and_then(<$t>::new);
                if n.is_none() {
                    not_a(&value, key, r, $expected);
                }
                n
            }
        })*
    };
}

read_non_zero! {
    NonZeroU8 => u8, "a whole number from 1 to 255";
    NonZeroU32 => u32, "a whole number from 1 to 4294967295";
    NonZeroU64 => u64, "a whole number, at least 1";
    NonZeroUsize => usize, "a whole number, at least 1";
}

impl Read for SocketAddr {
    fn read(value: Value, key: &str, r: &mut Reader) -> Option<Self> {
        let addr = match &value.kind {
            ValueKind::String(text) => text.trim().parse().ok(),
            _ => None,
        };
        if addr.is_none() {
            not_a(
                &value,
                key,
                r,
                "an IP address and port such as 0.0.0.0:9898 or [::]:9898",
            );
        }
        addr
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn from_env(text: &str) -> Value {
        Value::new(Some(&"the environment".to_string()), text)
    }

    #[test]
    fn zero_is_refused_where_it_means_nothing_and_is_off_where_documented() {
        let mut r = Reader::new(&[]);
        assert_eq!(
            r.read::<Interval>(from_env("250"), "a.tick_ms"),
            Some(Interval::from_millis(250))
        );
        assert_eq!(r.read::<Interval>(from_env("0"), "a.tick_ms"), None);
        assert_eq!(
            r.read::<OrOff>(from_env("0"), "a.watch_ms"),
            Some(OrOff(None))
        );
        assert_eq!(
            r.read::<Millis>(from_env("0"), "a.drain_ms"),
            Some(Millis(Duration::ZERO))
        );
        assert_eq!(r.read::<NonZeroU8>(from_env("0"), "a.n"), None);
        assert_eq!(r.read::<NonZeroU8>(from_env("256"), "a.n"), None);
        assert_eq!(
            r.read::<NonZeroU32>(from_env("7"), "a.n"),
            NonZeroU32::new(7)
        );
        assert_eq!(r.read::<SocketAddr>(from_env("nowhere"), "a.addr"), None);
        let (problems, _, _) = r.finish();
        let shown: Vec<String> = problems.iter().map(ToString::to_string).collect();
        assert_eq!(
            shown,
            [
                "CHURND__A__TICK_MS (environment): a.tick_ms must be a whole number of milliseconds, at least 1 (got \"0\")",
                "CHURND__A__N (environment): a.n must be a whole number from 1 to 255 (got \"0\")",
                "CHURND__A__N (environment): a.n must be a whole number from 1 to 255 (got \"256\")",
                "CHURND__A__ADDR (environment): a.addr must be an IP address and port such as 0.0.0.0:9898 or [::]:9898 (got \"nowhere\")",
            ]
        );
    }

    #[test]
    fn intervals_are_written_as_their_keys_hold_them() {
        #[derive(Serialize)]
        struct S {
            tick_ms: Interval,
            #[serde(serialize_with = "millis_or_off")]
            watch_ms: Option<Interval>,
            #[serde(serialize_with = "millis")]
            drain_ms: Duration,
        }
        let s = S {
            tick_ms: Interval::from_millis(1_000),
            watch_ms: None,
            drain_ms: Duration::from_millis(10),
        };
        assert_eq!(
            toml::to_string(&s).unwrap(),
            "tick_ms = 1000\nwatch_ms = 0\ndrain_ms = 10\n"
        );
    }
}
