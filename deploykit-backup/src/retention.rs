//! The retention ("forget") policy of a backup repository, in the manner of restic's
//! `forget --keep-*`: a pure function from a list of snapshots to a keep/forget decision for
//! each, with the reasons a snapshot is kept.
//!
//! Each `keep_<period>` rule walks the snapshots newest first and keeps the newest snapshot of
//! each of the N most recent periods (buckets) that hold a snapshot; `keep_last` treats every
//! snapshot as its own bucket. A snapshot kept by any rule is kept, and every rule that keeps
//! it is listed as a reason. Buckets are UTC calendar periods; weeks are ISO 8601 weeks, so the
//! week of 2024-12-30 is `2025-W01`.
//!
//! ```
//! use std::collections::BTreeSet;
//!
//! use deploykit_core::Timestamp;
//! use deploykit_backup::{Candidate, RetentionPolicy};
//!
//! const HOUR: u64 = 3_600_000;
//! const DAY: u64 = 24 * HOUR;
//! // 2026-11-27T00:00:00Z
//! let base = 1_795_737_600_000;
//! // Two snapshots a day (00:00 and 12:00) for three days.
//! let snapshots: Vec<Candidate> = (0..6)
//!     .map(|i| Candidate {
//!         id: format!("s{i}"),
//!         time: Timestamp::from_millis(base + i * 12 * HOUR),
//!         tags: BTreeSet::new(),
//!     })
//!     .collect();
//! let policy = RetentionPolicy {
//!     keep_last: Some(1),
//!     keep_daily: Some(2),
//!     ..RetentionPolicy::default()
//! };
//! policy.validate()?;
//! let decisions = policy.apply(&snapshots, Timestamp::from_millis(base + 3 * DAY));
//!
//! // Newest first: s5 (29th 12:00), s4, s3 (28th 12:00), s2, s1, s0.
//! let kept: Vec<&str> = decisions
//!     .iter()
//!     .filter(|d| d.keep)
//!     .map(|d| d.id.as_str())
//!     .collect();
//! assert_eq!(kept, ["s5", "s3"]);
//! assert_eq!(decisions[0].reasons, ["last 1", "daily 2026-11-29"]);
//! assert_eq!(decisions[2].reasons, ["daily 2026-11-28"]);
//! # Ok::<(), deploykit_core::Error>(())
//! ```

use std::collections::BTreeSet;
use std::fmt::Write as _;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use deploykit_core::time::{Timestamp, civil_from_days};
use deploykit_core::{Error, Result};

const MS_PER_HOUR: u64 = 3_600_000;
const MS_PER_DAY: u64 = 24 * MS_PER_HOUR;

/// A snapshot as retention sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Candidate {
    /// The snapshot's id.
    pub id: String,
    /// When the snapshot was taken.
    pub time: Timestamp,
    /// The snapshot's tags.
    pub tags: BTreeSet<String>,
}

/// Which snapshots of a backup repository to keep; everything else may be forgotten.
///
/// Every `keep_*` count keeps the newest snapshot in each of the N most recent periods of that
/// kind that hold a snapshot (`keep_last` keeps the N newest snapshots). A snapshot kept by any
/// rule is kept. A policy without any rule keeps everything (see [`RetentionPolicy::is_empty`]).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RetentionPolicy {
    /// Keep the N newest snapshots.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub keep_last: Option<u32>,
    /// Keep the newest snapshot of each of the N newest hours (UTC) that have one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub keep_hourly: Option<u32>,
    /// Keep the newest snapshot of each of the N newest days (UTC) that have one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub keep_daily: Option<u32>,
    /// Keep the newest snapshot of each of the N newest ISO 8601 weeks that have one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub keep_weekly: Option<u32>,
    /// Keep the newest snapshot of each of the N newest months (UTC) that have one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub keep_monthly: Option<u32>,
    /// Keep the newest snapshot of each of the N newest years (UTC) that have one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub keep_yearly: Option<u32>,
    /// Keep every snapshot newer than this, relative to `now`.
    #[serde(
        default,
        with = "deploykit_core::time::option_duration_ms",
        skip_serializing_if = "Option::is_none"
    )]
    pub keep_within: Option<Duration>,
    /// Snapshots carrying any of these tags are always kept.
    #[serde(default, skip_serializing_if = "BTreeSet::is_empty")]
    pub keep_tags: BTreeSet<String>,
    /// Only snapshots carrying all of these tags are considered; others are left alone (kept,
    /// reason "not selected by tags").
    #[serde(default, skip_serializing_if = "BTreeSet::is_empty")]
    pub only_tags: BTreeSet<String>,
}

/// What retention decided for one snapshot.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Decision {
    /// The snapshot's id.
    pub id: String,
    /// When the snapshot was taken.
    pub time: Timestamp,
    /// Whether the snapshot is kept; `false` means it may be forgotten.
    pub keep: bool,
    /// Why it is kept (e.g. `"last 1"`, `"daily 2026-11-27"`, `"weekly 2026-W48"`,
    /// `"within 7d"`, `"tag important"`); empty when it is not.
    pub reasons: Vec<String>,
}

/// The calendar periods a `keep_<period>` rule buckets snapshots by.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Period {
    Hourly,
    Daily,
    Weekly,
    Monthly,
    Yearly,
}

impl Period {
    /// The bucket `ms` falls in (comparable within one period) and its label.
    fn bucket(self, ms: u64) -> (i64, String) {
        let days = (ms / MS_PER_DAY) as i64;
        match self {
            Period::Hourly => {
                let hours = ms / MS_PER_HOUR;
                let (y, m, d) = civil_from_days(days);
                let h = hours % 24;
                (hours as i64, format!("hourly {y:04}-{m:02}-{d:02} {h:02}h"))
            }
            Period::Daily => {
                let (y, m, d) = civil_from_days(days);
                (days, format!("daily {y:04}-{m:02}-{d:02}"))
            }
            Period::Weekly => {
                let (y, w) = iso_week(days);
                (y * 100 + i64::from(w), format!("weekly {y:04}-W{w:02}"))
            }
            Period::Monthly => {
                let (y, m, _) = civil_from_days(days);
                (y * 12 + i64::from(m), format!("monthly {y:04}-{m:02}"))
            }
            Period::Yearly => {
                let (y, _, _) = civil_from_days(days);
                (y, format!("yearly {y:04}"))
            }
        }
    }
}

/// One `keep_<period>` rule while it walks the snapshots: how many more buckets it keeps and
/// the bucket of the snapshot it last kept.
struct BucketRule {
    period: Period,
    remaining: u32,
    last: Option<i64>,
}

impl RetentionPolicy {
    /// The count rules other than `keep_last`, with their period and field name.
    fn period_rules(&self) -> [(Option<u32>, Period, &'static str); 5] {
        [
            (self.keep_hourly, Period::Hourly, "keep_hourly"),
            (self.keep_daily, Period::Daily, "keep_daily"),
            (self.keep_weekly, Period::Weekly, "keep_weekly"),
            (self.keep_monthly, Period::Monthly, "keep_monthly"),
            (self.keep_yearly, Period::Yearly, "keep_yearly"),
        ]
    }

    /// Whether the policy keeps everything (no rule set): applying it must then keep all —
    /// refuse to delete everything by accident.
    ///
    /// A count of zero or a zero `keep_within` (both rejected by
    /// [`RetentionPolicy::validate`]) counts as unset. `only_tags` is a filter, not a rule.
    pub fn is_empty(&self) -> bool {
        let counts = std::iter::once(self.keep_last)
            .chain(self.period_rules().into_iter().map(|(n, _, _)| n))
            .all(|n| n.unwrap_or(0) == 0);
        counts && self.keep_within.is_none_or(|d| d.is_zero()) && self.keep_tags.is_empty()
    }

    /// Validate: every count is at least 1 when set, and `keep_within` is longer than zero.
    /// The error names the field, e.g. `backup.retention.keep_daily`.
    pub fn validate(&self) -> Result<()> {
        let counts = std::iter::once((self.keep_last, "keep_last", "keep by count")).chain(
            self.period_rules().into_iter().map(|(n, period, field)| {
                let what = match period {
                    Period::Hourly => "keep by hour",
                    Period::Daily => "keep by day",
                    Period::Weekly => "keep by week",
                    Period::Monthly => "keep by month",
                    Period::Yearly => "keep by year",
                };
                (n, field, what)
            }),
        );
        for (n, field, what) in counts {
            if n == Some(0) {
                return Err(Error::invalid(
                    format!("backup.retention.{field}"),
                    format!("must be at least 1; leave it out to not {what}"),
                ));
            }
        }
        if self.keep_within.is_some_and(|d| d.is_zero()) {
            return Err(Error::invalid(
                "backup.retention.keep_within",
                "must be longer than zero; leave it out to not keep by age",
            ));
        }
        Ok(())
    }

    /// Decide, newest first, which snapshots to keep. `now` is used by `keep_within`. An empty
    /// policy keeps everything (reason "no retention rule set").
    ///
    /// The output has one decision per input snapshot, ordered newest first (ties by id).
    /// Snapshots not carrying every tag of `only_tags` are kept with the reason
    /// "not selected by tags" and do not count towards any rule.
    pub fn apply(&self, snapshots: &[Candidate], now: Timestamp) -> Vec<Decision> {
        let mut sorted: Vec<&Candidate> = snapshots.iter().collect();
        // Newest first, ties by id; the tags only make the order total for duplicate ids.
        sorted.sort_by(|a, b| {
            b.time
                .cmp(&a.time)
                .then_with(|| a.id.cmp(&b.id))
                .then_with(|| a.tags.cmp(&b.tags))
        });

        let decision = |c: &Candidate, keep: bool, reasons: Vec<String>| Decision {
            id: c.id.clone(),
            time: c.time,
            keep,
            reasons,
        };

        if self.is_empty() {
            return sorted
                .into_iter()
                .map(|c| decision(c, true, vec!["no retention rule set".to_owned()]))
                .collect();
        }

        let mut last_remaining = self.keep_last.unwrap_or(0);
        let mut last_rank = 0u32;
        let mut rules: Vec<BucketRule> = self
            .period_rules()
            .into_iter()
            .filter_map(|(n, period, _)| {
                n.filter(|&n| n > 0).map(|remaining| BucketRule {
                    period,
                    remaining,
                    last: None,
                })
            })
            .collect();
        let within = self
            .keep_within
            .filter(|d| !d.is_zero())
            .map(|d| (d, format_duration(d)));

        sorted
            .into_iter()
            .map(|c| {
                if !self.only_tags.is_subset(&c.tags) {
                    return decision(c, true, vec!["not selected by tags".to_owned()]);
                }
                let mut reasons = Vec::new();
                last_rank += 1;
                if last_remaining > 0 {
                    last_remaining -= 1;
                    reasons.push(format!("last {last_rank}"));
                }
                let ms = c.time.as_millis();
                for rule in &mut rules {
                    if rule.remaining == 0 {
                        continue;
                    }
                    let (key, label) = rule.period.bucket(ms);
                    if rule.last != Some(key) {
                        rule.last = Some(key);
                        rule.remaining -= 1;
                        reasons.push(label);
                    }
                }
                if let Some((d, label)) = &within
                    && now.since(c.time) < *d
                {
                    reasons.push(format!("within {label}"));
                }
                for tag in self.keep_tags.intersection(&c.tags) {
                    reasons.push(format!("tag {tag}"));
                }
                let keep = !reasons.is_empty();
                decision(c, keep, reasons)
            })
            .collect()
    }
}

/// A duration as compact units, largest first: `7d`, `1d12h`, `90s` → `1m30s`, `250ms`.
fn format_duration(d: Duration) -> String {
    let ms = d.as_millis();
    let units: [(u128, &str); 5] = [
        (MS_PER_DAY as u128, "d"),
        (MS_PER_HOUR as u128, "h"),
        (60_000, "m"),
        (1000, "s"),
        (1, "ms"),
    ];
    let mut out = String::new();
    let mut rest = ms;
    for (size, unit) in units {
        let n = rest / size;
        rest %= size;
        if n > 0 {
            let _ = write!(out, "{n}{unit}");
        }
    }
    if out.is_empty() {
        out.push_str("0s");
    }
    out
}

/// Howard Hinnant's days-from-civil: days since 1970-01-01 of a proleptic Gregorian date.
fn days_from_civil(y: i64, m: u32, d: u32) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y.rem_euclid(400);
    let m = i64::from(m);
    let mp = if m > 2 { m - 3 } else { m + 9 };
    let doy = (153 * mp + 2) / 5 + i64::from(d) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// The ISO 8601 week-year and week (1–53) of the day `days` after 1970-01-01.
fn iso_week(days: i64) -> (i64, u32) {
    // 1970-01-01 was a Thursday; ISO weekdays run Monday = 1 … Sunday = 7.
    let weekday = (days + 3).rem_euclid(7) + 1;
    // A week belongs to the year its Thursday falls in.
    let thursday = days + 4 - weekday;
    let (year, _, _) = civil_from_days(thursday);
    let week = (thursday - days_from_civil(year, 1, 1)) / 7 + 1;
    (year, week as u32)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const HOUR: u64 = MS_PER_HOUR;
    const DAY: u64 = MS_PER_DAY;

    fn ms(y: i64, m: u32, d: u32, h: u64) -> u64 {
        days_from_civil(y, m, d) as u64 * DAY + h * HOUR
    }

    fn snap(id: &str, time_ms: u64, tags: &[&str]) -> Candidate {
        Candidate {
            id: id.to_owned(),
            time: Timestamp::from_millis(time_ms),
            tags: tags.iter().map(|t| (*t).to_owned()).collect(),
        }
    }

    fn kept(decisions: &[Decision]) -> Vec<&str> {
        decisions
            .iter()
            .filter(|d| d.keep)
            .map(|d| d.id.as_str())
            .collect()
    }

    fn reasons<'a>(decisions: &'a [Decision], id: &str) -> &'a [String] {
        &decisions
            .iter()
            .find(|d| d.id == id)
            .expect("decision")
            .reasons
    }

    #[test]
    fn civil_dates() {
        assert_eq!(days_from_civil(1970, 1, 1), 0);
        assert_eq!(civil_from_days(0), (1970, 1, 1));
        assert_eq!(days_from_civil(2000, 2, 29), 11_016);
        assert_eq!(civil_from_days(11_016), (2000, 2, 29));
        assert_eq!(civil_from_days(11_017), (2000, 3, 1));
        assert_eq!(days_from_civil(2026, 11, 27), 20_784);
        assert_eq!(civil_from_days(20_784), (2026, 11, 27));
        assert_eq!(civil_from_days(-1), (1969, 12, 31));
        for z in -800_000..800_000 {
            let (y, m, d) = civil_from_days(z);
            assert_eq!(days_from_civil(y, m, d), z);
        }
    }

    #[test]
    fn iso_weeks() {
        assert_eq!(iso_week(0), (1970, 1));
        assert_eq!(iso_week(days_from_civil(2026, 11, 27)), (2026, 48));
        // Monday 2024-12-30 opens 2025-W01.
        assert_eq!(iso_week(days_from_civil(2024, 12, 29)), (2024, 52));
        assert_eq!(iso_week(days_from_civil(2024, 12, 30)), (2025, 1));
        // Sunday 2021-01-03 closes 2020-W53.
        assert_eq!(iso_week(days_from_civil(2021, 1, 3)), (2020, 53));
        assert_eq!(iso_week(days_from_civil(2021, 1, 4)), (2021, 1));
        assert_eq!(iso_week(days_from_civil(2005, 1, 1)), (2004, 53));
        assert_eq!(iso_week(days_from_civil(2008, 12, 29)), (2009, 1));
    }

    #[test]
    fn bucket_labels() {
        let t = ms(2026, 11, 27, 9) + 59 * 60_000;
        assert_eq!(Period::Hourly.bucket(t).1, "hourly 2026-11-27 09h");
        assert_eq!(Period::Daily.bucket(t).1, "daily 2026-11-27");
        assert_eq!(Period::Weekly.bucket(t).1, "weekly 2026-W48");
        assert_eq!(Period::Monthly.bucket(t).1, "monthly 2026-11");
        assert_eq!(Period::Yearly.bucket(t).1, "yearly 2026");
        assert_eq!(
            Timestamp::from_millis(t).to_string(),
            "2026-11-27T09:59:00.000Z"
        );
        assert_eq!(format_duration(Duration::from_secs(7 * 86_400)), "7d");
        assert_eq!(format_duration(Duration::from_secs(36 * 3600)), "1d12h");
        assert_eq!(format_duration(Duration::from_millis(90_250)), "1m30s250ms");
    }

    #[test]
    fn keep_last() {
        let base = ms(2026, 1, 1, 0);
        let snaps: Vec<_> = (0..5)
            .map(|i| snap(&format!("s{i}"), base + i * HOUR, &[]))
            .collect();
        let policy = RetentionPolicy {
            keep_last: Some(3),
            ..Default::default()
        };
        let out = policy.apply(&snaps, Timestamp::from_millis(base));
        let ids: Vec<_> = out.iter().map(|d| d.id.as_str()).collect();
        assert_eq!(ids, ["s4", "s3", "s2", "s1", "s0"]);
        assert_eq!(kept(&out), ["s4", "s3", "s2"]);
        assert_eq!(reasons(&out, "s4"), ["last 1"]);
        assert_eq!(reasons(&out, "s2"), ["last 3"]);
        assert!(reasons(&out, "s1").is_empty());

        // More than there are: everything kept.
        let policy = RetentionPolicy {
            keep_last: Some(10),
            ..Default::default()
        };
        assert_eq!(
            kept(&policy.apply(&snaps, Timestamp::from_millis(base))).len(),
            5
        );
    }

    #[test]
    fn ties_are_ordered_by_id() {
        let t = ms(2026, 1, 1, 0);
        let snaps = [snap("b", t, &[]), snap("a", t, &[]), snap("c", t - 1, &[])];
        let policy = RetentionPolicy {
            keep_last: Some(1),
            ..Default::default()
        };
        let out = policy.apply(&snaps, Timestamp::from_millis(t));
        let ids: Vec<_> = out.iter().map(|d| d.id.as_str()).collect();
        assert_eq!(ids, ["a", "b", "c"]);
        assert_eq!(kept(&out), ["a"]);
    }

    #[test]
    fn keep_daily_keeps_newest_of_each_newest_day() {
        let base = ms(2026, 11, 18, 0);
        // 10 days, 3 snapshots a day at 01:00, 09:00, 17:00; given oldest first.
        let mut snaps = Vec::new();
        for day in 0..10 {
            for (n, hour) in [1, 9, 17].into_iter().enumerate() {
                snaps.push(snap(
                    &format!("d{day}-{n}"),
                    base + day * DAY + hour * HOUR,
                    &[],
                ));
            }
        }
        let policy = RetentionPolicy {
            keep_daily: Some(4),
            ..Default::default()
        };
        let out = policy.apply(&snaps, Timestamp::from_millis(base + 10 * DAY));
        assert_eq!(out.len(), 30);
        assert_eq!(kept(&out), ["d9-2", "d8-2", "d7-2", "d6-2"]);
        assert_eq!(reasons(&out, "d9-2"), ["daily 2026-11-27"]);
        assert_eq!(reasons(&out, "d6-2"), ["daily 2026-11-24"]);

        // Days without a snapshot do not use up the count.
        let sparse: Vec<_> = snaps
            .iter()
            .filter(|c| !c.id.starts_with("d8") && !c.id.starts_with("d7"))
            .cloned()
            .collect();
        let out = policy.apply(&sparse, Timestamp::from_millis(base + 10 * DAY));
        assert_eq!(kept(&out), ["d9-2", "d6-2", "d5-2", "d4-2"]);
    }

    #[test]
    fn keep_hourly() {
        let base = ms(2026, 11, 27, 9);
        let snaps = [
            snap("a", base + 50 * 60_000, &[]),
            snap("b", base + 10 * 60_000, &[]),
            snap("c", base - 10 * 60_000, &[]),
            snap("d", base - 2 * HOUR, &[]),
        ];
        let policy = RetentionPolicy {
            keep_hourly: Some(2),
            ..Default::default()
        };
        let out = policy.apply(&snaps, Timestamp::from_millis(base));
        assert_eq!(kept(&out), ["a", "c"]);
        assert_eq!(reasons(&out, "a"), ["hourly 2026-11-27 09h"]);
        assert_eq!(reasons(&out, "c"), ["hourly 2026-11-27 08h"]);
    }

    #[test]
    fn keep_weekly_monthly_yearly() {
        let snaps = [
            snap("2026-11-27", ms(2026, 11, 27, 12), &[]),
            snap("2026-11-23", ms(2026, 11, 23, 12), &[]), // same ISO week (Monday)
            snap("2026-11-22", ms(2026, 11, 22, 12), &[]), // previous week (Sunday)
            snap("2026-10-31", ms(2026, 10, 31, 12), &[]),
            snap("2026-10-01", ms(2026, 10, 1, 12), &[]),
            snap("2025-12-31", ms(2025, 12, 31, 12), &[]),
            snap("2025-01-02", ms(2025, 1, 2, 12), &[]),
            snap("2024-12-30", ms(2024, 12, 30, 12), &[]), // 2025-W01, but year 2024
            snap("2021-01-03", ms(2021, 1, 3, 12), &[]),   // 2020-W53
        ];
        let now = Timestamp::from_millis(ms(2026, 12, 1, 0));

        let weekly = RetentionPolicy {
            keep_weekly: Some(5),
            ..Default::default()
        };
        let out = weekly.apply(&snaps, now);
        assert_eq!(
            kept(&out),
            [
                "2026-11-27",
                "2026-11-22",
                "2026-10-31",
                "2026-10-01",
                "2025-12-31"
            ]
        );
        assert_eq!(reasons(&out, "2026-11-27"), ["weekly 2026-W48"]);
        assert_eq!(reasons(&out, "2026-11-22"), ["weekly 2026-W47"]);
        // 2025-01-02 and 2024-12-30 share 2025-W01: only the newer is kept.
        let all_weeks = RetentionPolicy {
            keep_weekly: Some(100),
            ..Default::default()
        };
        let out = all_weeks.apply(&snaps, now);
        assert!(!out.iter().any(|d| d.id == "2024-12-30" && d.keep));
        assert_eq!(reasons(&out, "2025-01-02"), ["weekly 2025-W01"]);
        assert_eq!(reasons(&out, "2021-01-03"), ["weekly 2020-W53"]);

        let monthly = RetentionPolicy {
            keep_monthly: Some(3),
            ..Default::default()
        };
        let out = monthly.apply(&snaps, now);
        assert_eq!(kept(&out), ["2026-11-27", "2026-10-31", "2025-12-31"]);
        assert_eq!(reasons(&out, "2025-12-31"), ["monthly 2025-12"]);

        let yearly = RetentionPolicy {
            keep_yearly: Some(10),
            ..Default::default()
        };
        let out = yearly.apply(&snaps, now);
        assert_eq!(
            kept(&out),
            ["2026-11-27", "2025-12-31", "2024-12-30", "2021-01-03"]
        );
        assert_eq!(reasons(&out, "2024-12-30"), ["yearly 2024"]);
    }

    #[test]
    fn keep_within() {
        let now = ms(2026, 11, 27, 0);
        let snaps = [
            snap("future", now + HOUR, &[]),
            snap("new", now - 6 * DAY, &[]),
            snap("edge", now - 7 * DAY, &[]),
            snap("old", now - 8 * DAY, &[]),
        ];
        let policy = RetentionPolicy {
            keep_within: Some(Duration::from_secs(7 * 86_400)),
            ..Default::default()
        };
        let out = policy.apply(&snaps, Timestamp::from_millis(now));
        assert_eq!(kept(&out), ["future", "new"]);
        assert_eq!(reasons(&out, "new"), ["within 7d"]);
    }

    #[test]
    fn keep_tags_and_only_tags() {
        let base = ms(2026, 11, 27, 0);
        let snaps = [
            snap("a", base + 4 * HOUR, &["db"]),
            snap("b", base + 3 * HOUR, &["db", "important"]),
            snap("c", base + 2 * HOUR, &["web"]),
            snap("d", base + HOUR, &["db", "important", "manual"]),
            snap("e", base, &["db"]),
        ];
        let keep_tags = RetentionPolicy {
            keep_last: Some(1),
            keep_tags: ["important", "manual"].map(String::from).into(),
            ..Default::default()
        };
        let out = keep_tags.apply(&snaps, Timestamp::from_millis(base));
        assert_eq!(kept(&out), ["a", "b", "d"]);
        assert_eq!(reasons(&out, "b"), ["tag important"]);
        assert_eq!(reasons(&out, "d"), ["tag important", "tag manual"]);

        // Only `db` snapshots are considered: `c` is left alone and does not count.
        let only = RetentionPolicy {
            keep_last: Some(2),
            only_tags: ["db".to_owned()].into(),
            ..Default::default()
        };
        let out = only.apply(&snaps, Timestamp::from_millis(base));
        assert_eq!(kept(&out), ["a", "b", "c"]);
        assert_eq!(reasons(&out, "c"), ["not selected by tags"]);
        assert_eq!(reasons(&out, "b"), ["last 2"]);

        // A keep-tags-only policy is not empty: untagged snapshots are forgotten.
        let tags_only = RetentionPolicy {
            keep_tags: ["manual".to_owned()].into(),
            ..Default::default()
        };
        assert!(!tags_only.is_empty());
        assert_eq!(
            kept(&tags_only.apply(&snaps, Timestamp::from_millis(base))),
            ["d"]
        );
    }

    #[test]
    fn combined_rules_list_every_reason() {
        let now = ms(2026, 11, 27, 12);
        let snaps = [
            snap("x", ms(2026, 11, 27, 10), &["important"]),
            snap("y", ms(2026, 11, 26, 10), &[]),
            snap("z", ms(2026, 11, 25, 10), &[]),
            snap("w", ms(2026, 10, 25, 10), &[]),
        ];
        let policy = RetentionPolicy {
            keep_last: Some(1),
            keep_daily: Some(2),
            keep_weekly: Some(1),
            keep_monthly: Some(2),
            keep_yearly: Some(1),
            keep_within: Some(Duration::from_secs(36 * 3600)),
            keep_tags: ["important".to_owned()].into(),
            ..Default::default()
        };
        let out = policy.apply(&snaps, Timestamp::from_millis(now));
        assert_eq!(kept(&out), ["x", "y", "w"]);
        assert_eq!(
            reasons(&out, "x"),
            [
                "last 1",
                "daily 2026-11-27",
                "weekly 2026-W48",
                "monthly 2026-11",
                "yearly 2026",
                "within 1d12h",
                "tag important"
            ]
        );
        assert_eq!(reasons(&out, "y"), ["daily 2026-11-26", "within 1d12h"]);
        assert_eq!(reasons(&out, "w"), ["monthly 2026-10"]);
    }

    #[test]
    fn empty_policy_keeps_everything() {
        let snaps = [snap("a", 1, &[]), snap("b", 2, &["x"])];
        let policy = RetentionPolicy {
            only_tags: ["x".to_owned()].into(),
            ..Default::default()
        };
        assert!(RetentionPolicy::default().is_empty());
        assert!(policy.is_empty());
        for p in [RetentionPolicy::default(), policy] {
            let out = p.apply(&snaps, Timestamp::from_millis(0));
            assert_eq!(kept(&out), ["b", "a"]);
            assert!(
                out.iter()
                    .all(|d| d.reasons == ["no retention rule set".to_owned()])
            );
        }
        // Zero counts (which validate rejects) never turn a policy into "delete everything".
        let zero = RetentionPolicy {
            keep_daily: Some(0),
            keep_within: Some(Duration::ZERO),
            ..Default::default()
        };
        assert!(zero.is_empty());
        assert_eq!(
            kept(&zero.apply(&snaps, Timestamp::from_millis(0))).len(),
            2
        );
        assert!(
            RetentionPolicy::default()
                .apply(&[], Timestamp::default())
                .is_empty()
        );
    }

    #[test]
    fn validate_rejects_zero() {
        let ok = RetentionPolicy {
            keep_last: Some(1),
            keep_within: Some(Duration::from_secs(1)),
            ..Default::default()
        };
        ok.validate().unwrap();
        RetentionPolicy::default().validate().unwrap();

        let err = RetentionPolicy {
            keep_daily: Some(0),
            ..Default::default()
        }
        .validate()
        .unwrap_err();
        match err {
            Error::InvalidSpec { field, reason } => {
                assert_eq!(field, "backup.retention.keep_daily");
                assert_eq!(
                    reason,
                    "must be at least 1; leave it out to not keep by day"
                );
            }
            other => panic!("unexpected {other:?}"),
        }
        for (policy, field) in [
            (
                RetentionPolicy {
                    keep_last: Some(0),
                    ..Default::default()
                },
                "keep_last",
            ),
            (
                RetentionPolicy {
                    keep_yearly: Some(0),
                    ..Default::default()
                },
                "keep_yearly",
            ),
            (
                RetentionPolicy {
                    keep_within: Some(Duration::ZERO),
                    ..Default::default()
                },
                "keep_within",
            ),
        ] {
            let err = policy.validate().unwrap_err();
            assert!(
                err.to_string()
                    .contains(&format!("backup.retention.{field}")),
                "{err}"
            );
        }
    }

    #[test]
    fn serde_round_trip() {
        let policy = RetentionPolicy {
            keep_daily: Some(7),
            keep_within: Some(Duration::from_secs(3600)),
            keep_tags: ["important".to_owned()].into(),
            ..Default::default()
        };
        let json = serde_json::to_string(&policy).unwrap();
        assert_eq!(
            json,
            r#"{"keep_daily":7,"keep_within":3600000,"keep_tags":["important"]}"#
        );
        assert_eq!(
            serde_json::from_str::<RetentionPolicy>(&json).unwrap(),
            policy
        );
        let toml_text = toml::to_string(&policy).unwrap();
        assert_eq!(
            toml::from_str::<RetentionPolicy>(&toml_text).unwrap(),
            policy
        );
        assert_eq!(
            toml::from_str::<RetentionPolicy>("").unwrap(),
            RetentionPolicy::default()
        );
        assert!(toml::from_str::<RetentionPolicy>("keep_dayly = 3").is_err());
    }

    fn arb_count() -> impl Strategy<Value = Option<u32>> {
        prop::option::of(1u32..6)
    }

    prop_compose! {
        fn arb_policy()(
            counts in prop::array::uniform6(arb_count()),
            within in prop::option::of(1u64..40 * DAY),
            keep_tags in prop::collection::btree_set("[ab]", 0..2),
            only_tags in prop::collection::btree_set("[ab]", 0..2),
        ) -> RetentionPolicy {
            RetentionPolicy {
                keep_last: counts[0],
                keep_hourly: counts[1],
                keep_daily: counts[2],
                keep_weekly: counts[3],
                keep_monthly: counts[4],
                keep_yearly: counts[5],
                keep_within: within.map(Duration::from_millis),
                keep_tags,
                only_tags,
            }
        }
    }

    fn arb_snapshots() -> impl Strategy<Value = Vec<Candidate>> {
        // Up to ~3 years from 2024-01-01, with duplicate ids and times possible.
        let start = 1_704_067_200_000u64;
        prop::collection::vec(
            (
                0u32..40,
                0u64..3 * 366 * DAY,
                prop::collection::btree_set("[ab]", 0..3),
            ),
            0..40,
        )
        .prop_map(move |v| {
            v.into_iter()
                .map(|(id, t, tags)| Candidate {
                    id: format!("s{id}"),
                    time: Timestamp::from_millis(start + t),
                    tags,
                })
                .collect()
        })
    }

    proptest! {
        #[test]
        fn apply_properties(
            policy in arb_policy(),
            snaps in arb_snapshots(),
            now_offset in 0u64..4 * 366 * DAY,
        ) {
            let now = Timestamp::from_millis(1_704_067_200_000 + now_offset);
            let out = policy.apply(&snaps, now);

            // One decision per input, newest first, and deterministic (also under reordering).
            prop_assert_eq!(out.len(), snaps.len());
            let mut input: Vec<_> = snaps.iter().map(|c| (c.id.clone(), c.time)).collect();
            let mut output: Vec<_> = out.iter().map(|d| (d.id.clone(), d.time)).collect();
            input.sort();
            output.sort();
            prop_assert_eq!(input, output);
            prop_assert!(out.windows(2).all(|w| w[0].time >= w[1].time));
            prop_assert_eq!(&policy.apply(&snaps, now), &out);
            let mut reversed = snaps.clone();
            reversed.reverse();
            prop_assert_eq!(&policy.apply(&reversed, now), &out);

            // Kept exactly when there is a reason.
            prop_assert!(out.iter().all(|d| d.keep != d.reasons.is_empty()));

            let any_count = [
                policy.keep_last,
                policy.keep_hourly,
                policy.keep_daily,
                policy.keep_weekly,
                policy.keep_monthly,
                policy.keep_yearly,
            ]
            .iter()
            .any(Option::is_some);
            if any_count && let Some(first) = out.first() {
                prop_assert!(first.keep);
            }

            if let Some(n) = policy.keep_last {
                let selected = snaps
                    .iter()
                    .filter(|c| policy.only_tags.is_subset(&c.tags))
                    .count();
                let kept_selected = out
                    .iter()
                    .filter(|d| d.keep && d.reasons.iter().all(|r| r != "not selected by tags"))
                    .count();
                prop_assert!(kept_selected >= selected.min(n as usize));
                prop_assert!(out.iter().filter(|d| d.keep).count() >= snaps.len().min(n as usize));
            }

            if policy.is_empty() {
                prop_assert!(out.iter().all(|d| d.keep));
            }
        }
    }
}
