//! S3 Object Lock: retention on the objects an [`crate::S3Target`] writes, so that a client
//! whose credentials are stolen cannot delete the backups before their time.

use std::fmt;
use std::str::FromStr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use aws_sdk_s3::primitives::DateTime;
use deploykit_core::{Error, Result};

/// How strictly S3 holds a locked object.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum LockMode {
    /// Nobody deletes or shortens it before its date, except an identity granted
    /// `s3:BypassGovernanceRetention` that asks to bypass it.
    Governance,
    /// Nobody deletes or shortens it before its date, not even the account's root user.
    Compliance,
}

impl LockMode {
    /// `GOVERNANCE` or `COMPLIANCE`, as S3 spells it.
    pub fn as_str(self) -> &'static str {
        match self {
            LockMode::Governance => "GOVERNANCE",
            LockMode::Compliance => "COMPLIANCE",
        }
    }

    pub(crate) fn sdk(self) -> aws_sdk_s3::types::ObjectLockMode {
        match self {
            LockMode::Governance => aws_sdk_s3::types::ObjectLockMode::Governance,
            LockMode::Compliance => aws_sdk_s3::types::ObjectLockMode::Compliance,
        }
    }
}

impl fmt::Display for LockMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for LockMode {
    type Err = Error;

    /// `governance` or `compliance`, in any case.
    fn from_str(s: &str) -> Result<Self> {
        match s.to_ascii_lowercase().as_str() {
            "governance" => Ok(LockMode::Governance),
            "compliance" => Ok(LockMode::Compliance),
            _ => Err(Error::invalid(
                "s3.object_lock.mode",
                format!("{s:?}: expected governance or compliance"),
            )),
        }
    }
}

/// Object Lock retention for the objects an [`crate::S3Target`] writes: each new object (or
/// new version) is kept in `mode` until `days` days after it was written.
///
/// The bucket must have Object Lock enabled (S3 turns versioning on with it). Then a delete
/// through the target removes every version of a key, and fails with
/// [`Error::PermissionDenied`] naming the key, mode and date while any version is retained —
/// and S3 itself refuses to remove a retained version, whoever asks.
///
/// Keys under an [exempt](ObjectLock::exempt_prefix) prefix are written without retention: a
/// backup repository's `locks/` (a running backup's marker, rewritten while it runs and
/// deleted when it ends) belongs there.
///
/// ```
/// use deploykit_aws::{LockMode, ObjectLock};
/// let lock = ObjectLock::new(LockMode::Compliance, 30).exempt_prefix("locks/");
/// assert_eq!((lock.mode(), lock.days()), (LockMode::Compliance, 30));
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ObjectLock {
    mode: LockMode,
    days: u32,
    exempt: Vec<String>,
}

impl ObjectLock {
    /// Retain new objects in `mode` for `days` days (at least 1).
    pub fn new(mode: LockMode, days: u32) -> Self {
        ObjectLock {
            mode,
            days,
            exempt: Vec::new(),
        }
    }

    /// [`LockMode::Governance`] for `days` days.
    pub fn governance(days: u32) -> Self {
        Self::new(LockMode::Governance, days)
    }

    /// [`LockMode::Compliance`] for `days` days.
    pub fn compliance(days: u32) -> Self {
        Self::new(LockMode::Compliance, days)
    }

    /// Write keys starting with `prefix` (relative to the target's prefix) without retention.
    pub fn exempt_prefix(mut self, prefix: impl Into<String>) -> Self {
        self.exempt.push(prefix.into());
        self
    }

    /// The mode.
    pub fn mode(&self) -> LockMode {
        self.mode
    }

    /// Days each object is retained.
    pub fn days(&self) -> u32 {
        self.days
    }

    pub(crate) fn validate(&self) -> Result<()> {
        if self.days == 0 {
            return Err(Error::invalid(
                "s3.object_lock.days",
                "must be at least 1 (S3's shortest retention is a day)",
            ));
        }
        Ok(())
    }

    /// Whether an object under `key` is written with retention.
    pub(crate) fn applies_to(&self, key: &str) -> bool {
        !self.exempt.iter().any(|p| key.starts_with(p.as_str()))
    }

    /// The retain-until date of an object written at `now`, in whole seconds (S3 and its
    /// imitations parse second precision everywhere).
    pub(crate) fn retain_until(&self, now: SystemTime) -> DateTime {
        let until = now + Duration::from_secs(u64::from(self.days) * 86_400);
        let secs = until.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
        DateTime::from_secs(secs as i64)
    }
}

/// The retention an object carries, as S3 reports it.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct Retention {
    /// The mode.
    pub mode: LockMode,
    /// Until when.
    pub retain_until: SystemTime,
}

impl Retention {
    /// Whether it still holds at `now`.
    pub fn holds_at(&self, now: SystemTime) -> bool {
        self.retain_until > now
    }

    pub(crate) fn from_sdk(
        mode: Option<&str>,
        until: Option<&DateTime>,
        what: &str,
    ) -> Result<Option<Self>> {
        let (Some(mode), Some(until)) = (mode, until) else {
            return Ok(None);
        };
        let mode = match mode {
            "GOVERNANCE" => LockMode::Governance,
            "COMPLIANCE" => LockMode::Compliance,
            other => {
                return Err(Error::backend(
                    format!("read the retention of {what}"),
                    format!("unknown Object Lock mode {other:?}"),
                ));
            }
        };
        let retain_until = SystemTime::try_from(*until).map_err(|e| {
            Error::backend(
                format!("read the retention of {what}"),
                format!("retain-until date out of range: {e}"),
            )
        })?;
        Ok(Some(Retention { mode, retain_until }))
    }
}

/// `2026-12-05T08:00:00Z`.
pub(crate) fn format_time(t: SystemTime) -> String {
    DateTime::from(t)
        .fmt(aws_sdk_s3::primitives::DateTimeFormat::DateTime)
        .unwrap_or_else(|_| format!("{t:?}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn modes_parse_in_any_case_and_bad_ones_are_named() {
        assert_eq!(
            "Governance".parse::<LockMode>().unwrap(),
            LockMode::Governance
        );
        assert_eq!(
            "COMPLIANCE".parse::<LockMode>().unwrap(),
            LockMode::Compliance
        );
        let e = "legal".parse::<LockMode>().unwrap_err().to_string();
        assert!(e.contains("s3.object_lock.mode"), "{e}");
    }

    #[test]
    fn retention_is_whole_seconds_days_ahead_and_exemptions_apply() {
        let lock = ObjectLock::governance(2).exempt_prefix("locks/");
        let now = UNIX_EPOCH + Duration::from_millis(1_000_500);
        assert_eq!(lock.retain_until(now).secs(), 1000 + 2 * 86_400);
        assert!(lock.applies_to("data/ab/abcd"));
        assert!(!lock.applies_to("locks/1"));
        assert!(ObjectLock::compliance(0).validate().is_err());
    }
}
