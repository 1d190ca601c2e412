//! One validation per type, whichever way a value arrives.
//!
//! Specs are built three ways: with their builders, deserialised with serde (a journal entry,
//! a JSON document from an embedder), and by the `deploykit.toml` loader (which goes through the
//! builders). [`validated_serde!`] makes the serde path call the same `validate` the builders
//! call, so one input is accepted or refused the same way on every path: the derived
//! (de)serialiser is generated under `#[serde(remote = "Self")]` as inherent functions, and the
//! trait implementations wrap them, validating after deserialising.

use std::time::Duration;

use crate::error::{Error, Result};

/// Implement `Serialize` and `Deserialize` for a type whose derives carry
/// `#[serde(remote = "Self")]`, validating with `$validate` (a `fn(&T) -> Result<()>`) after
/// every deserialisation.
#[macro_export]
macro_rules! validated_serde {
    ($ty:ty, $validate:expr) => {
        impl serde::Serialize for $ty {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                <$ty>::serialize(self, s)
            }
        }

        impl<'de> serde::Deserialize<'de> for $ty {
            fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let value = <$ty>::deserialize(d)?;
                let check: fn(&$ty) -> $crate::Result<()> = $validate;
                check(&value).map_err(serde::de::Error::custom)?;
                Ok(value)
            }
        }
    };
}

pub use validated_serde;

/// The one check every duration of every spec goes through: a whole number of milliseconds
/// (what the journal stores, so nothing is rounded away) within `min..=max`. The error names
/// the field and the range.
pub fn check_duration(field: &str, d: Duration, min: Duration, max: Duration) -> Result<()> {
    let show = |d: Duration| humantime::format_duration(d).to_string();
    if !d.subsec_nanos().is_multiple_of(1_000_000) {
        return Err(Error::invalid(
            field,
            format!("{d:?} is not a whole number of milliseconds"),
        ));
    }
    if d < min || d > max {
        let min = if min.is_zero() {
            "0".to_string()
        } else {
            show(min)
        };
        return Err(Error::invalid(
            field,
            format!("{} is outside {min} to {}", show(d), show(max)),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::check_duration;
    use crate::time::{DAY, HOUR};

    #[test]
    fn durations_outside_their_range_are_refused_with_the_range() {
        let err = check_duration(
            "x.pause",
            Duration::from_secs(40 * 24 * 3600),
            Duration::from_secs(60),
            30 * DAY,
        )
        .expect_err("too long");
        assert_eq!(
            err.to_string(),
            "invalid x.pause: 1month 9days 13h 26m 24s is outside 1m to 30days"
        );
        check_duration("x", Duration::ZERO, Duration::ZERO, HOUR).expect("0 is in 0..");
    }
}
