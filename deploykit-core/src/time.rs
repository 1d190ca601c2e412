//! Wall-clock time as deploykit records it, and the [`Clock`] that supplies it.

use std::fmt;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

/// A point in time: milliseconds since the Unix epoch, UTC.
///
/// Displayed as RFC 3339 (`2026-01-01T00:00:00.000Z`).
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
#[serde(transparent)]
pub struct Timestamp(u64);

impl Timestamp {
    /// A timestamp `ms` milliseconds after the Unix epoch.
    pub const fn from_millis(ms: u64) -> Self {
        Timestamp(ms)
    }

    /// Milliseconds since the Unix epoch.
    pub const fn as_millis(self) -> u64 {
        self.0
    }

    /// This timestamp moved `d` later (saturating).
    pub fn plus(self, d: Duration) -> Self {
        Timestamp(
            self.0
                .saturating_add(d.as_millis().min(u64::MAX as u128) as u64),
        )
    }

    /// How long after `earlier` this timestamp is; zero if it is not after it.
    pub fn since(self, earlier: Timestamp) -> Duration {
        Duration::from_millis(self.0.saturating_sub(earlier.0))
    }
}

impl fmt::Display for Timestamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let ms = self.0 % 1000;
        let secs = self.0 / 1000;
        let (days, rem) = (secs / 86_400, secs % 86_400);
        let (h, m, s) = (rem / 3600, (rem % 3600) / 60, rem % 60);
        let (y, mo, d) = civil_from_days(days as i64);
        write!(f, "{y:04}-{mo:02}-{d:02}T{h:02}:{m:02}:{s:02}.{ms:03}Z")
    }
}

/// `(year, month, day)` of the day `z` days after 1970-01-01: Howard Hinnant's days-to-civil
/// conversion (proleptic Gregorian calendar).
pub fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

/// Where deploykit reads the current time.
///
/// Production code uses [`SystemClock`]; tests use a clock driven by tokio's paused time (see
/// `deploykit_testing::SimClock`) so that a ten-minute rollout takes milliseconds.
pub trait Clock: Send + Sync + fmt::Debug {
    /// The current time.
    fn now(&self) -> Timestamp;
}

/// The system's wall clock.
#[derive(Clone, Copy, Debug, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> Timestamp {
        let d = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or(Duration::ZERO);
        Timestamp(d.as_millis() as u64)
    }
}

/// An hour.
pub const HOUR: Duration = Duration::from_secs(3600);
/// A day.
pub const DAY: Duration = Duration::from_secs(24 * 3600);

/// `d` in whole milliseconds, or why it cannot be stored as such (never wrapped or rounded).
fn exact_millis(d: &Duration) -> Result<u64, String> {
    if !d.subsec_nanos().is_multiple_of(1_000_000) {
        return Err(format!("{d:?} is not a whole number of milliseconds"));
    }
    u64::try_from(d.as_millis()).map_err(|_| format!("{d:?} is too long to store"))
}

/// Serde helpers that write a [`Duration`] as whole milliseconds; a duration that is not a
/// whole number of milliseconds, or longer than `u64::MAX` of them, is an error (never wrapped:
/// validation refuses such values first, with the field's range).
pub mod duration_ms {
    use serde::{Deserialize, Deserializer, Serializer};
    use std::time::Duration;

    /// Writes the duration as whole milliseconds.
    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u64(super::exact_millis(d).map_err(serde::ser::Error::custom)?)
    }

    /// Reads whole milliseconds.
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        Ok(Duration::from_millis(u64::deserialize(d)?))
    }
}

/// Serde helpers that write an optional [`Duration`] as whole milliseconds (or null).
pub mod option_duration_ms {
    use serde::{Deserialize, Deserializer, Serializer};
    use std::time::Duration;

    /// Writes the duration as whole milliseconds.
    pub fn serialize<S: Serializer>(d: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
        match d {
            Some(d) => {
                s.serialize_some(&super::exact_millis(d).map_err(serde::ser::Error::custom)?)
            }
            None => s.serialize_none(),
        }
    }

    /// Reads whole milliseconds.
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
        Ok(Option::<u64>::deserialize(d)?.map(Duration::from_millis))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn displays_rfc3339() {
        assert_eq!(Timestamp(0).to_string(), "1970-01-01T00:00:00.000Z");
        assert_eq!(
            Timestamp(1_767_225_600_123).to_string(),
            "2026-01-01T00:00:00.123Z"
        );
        assert_eq!(
            Timestamp(951_782_400_000).to_string(),
            "2000-02-29T00:00:00.000Z"
        );
    }

    #[test]
    fn durations_are_stored_exactly_or_refused() {
        #[derive(serde::Serialize, serde::Deserialize, Debug, PartialEq)]
        struct S {
            #[serde(with = "duration_ms")]
            d: Duration,
        }
        let huge = S {
            d: Duration::from_secs(u64::MAX),
        };
        let err = serde_json::to_string(&huge).expect_err("no wrap");
        assert!(err.to_string().contains("too long to store"), "{err}");
        let tiny = S {
            d: Duration::from_nanos(1),
        };
        let err = serde_json::to_string(&tiny).expect_err("no rounding to 0");
        assert!(
            err.to_string().contains("whole number of milliseconds"),
            "{err}"
        );
        let fine = S {
            d: Duration::from_millis(u64::MAX),
        };
        let back: S =
            serde_json::from_str(&serde_json::to_string(&fine).expect("json")).expect("load");
        assert_eq!(back, fine);
    }

    #[test]
    fn arithmetic_saturates() {
        let t = Timestamp(1000);
        assert_eq!(t.plus(Duration::from_secs(1)), Timestamp(2000));
        assert_eq!(Timestamp(500).since(t), Duration::ZERO);
        assert_eq!(t.since(Timestamp(400)), Duration::from_millis(600));
    }
}
