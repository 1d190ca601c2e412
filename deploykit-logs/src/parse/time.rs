//! Timestamps found in lines.

/// Parses a timestamp as nanoseconds since the Unix epoch: RFC 3339 text
/// (`2026-12-05T12:00:00.123Z`), or a number of seconds, milliseconds, microseconds or
/// nanoseconds since the epoch (told apart by magnitude; fractions allowed). `None` when it is
/// neither or out of range.
pub fn parse_timestamp_ns(text: &str) -> Option<i64> {
    let text = text.trim();
    if let Some(nanos) = fast_rfc3339_ns(text) {
        return Some(nanos);
    }
    if let Ok(number) = text.parse::<i128>() {
        return epoch_integer_ns(number);
    }
    if let Ok(number) = text.parse::<f64>() {
        return epoch_number_ns(number);
    }
    None.or_else(|| {
        chrono::DateTime::parse_from_rfc3339(text)
            .ok()
            .and_then(|time| time.timestamp_nanos_opt())
    })
}

/// The common shapes of RFC 3339 (`YYYY-MM-DDTHH:MM:SS[.fraction](Z|±HH:MM)`, `T` or space),
/// parsed without chrono's generality; anything else is left to chrono.
fn fast_rfc3339_ns(text: &str) -> Option<i64> {
    let bytes = text.as_bytes();
    if bytes.len() < 20
        || bytes[4] != b'-'
        || bytes[7] != b'-'
        || !matches!(bytes[10], b'T' | b't' | b' ')
        || bytes[13] != b':'
        || bytes[16] != b':'
    {
        return None;
    }
    let digits = |range: std::ops::Range<usize>| -> Option<i64> {
        let mut value = 0i64;
        for &byte in &bytes[range] {
            if !byte.is_ascii_digit() {
                return None;
            }
            value = value * 10 + i64::from(byte - b'0');
        }
        Some(value)
    };
    let (year, month, day) = (digits(0..4)?, digits(5..7)?, digits(8..10)?);
    let (hour, minute, second) = (digits(11..13)?, digits(14..16)?, digits(17..19)?);
    if !(1..=12).contains(&month)
        || !(1..=31).contains(&day)
        || hour > 23
        || minute > 59
        || second > 60
    {
        return None;
    }
    let mut position = 19;
    let mut nanos = 0i64;
    if bytes[position] == b'.' {
        position += 1;
        let start = position;
        while position < bytes.len() && bytes[position].is_ascii_digit() {
            if position - start < 9 {
                nanos = nanos * 10 + i64::from(bytes[position] - b'0');
            }
            position += 1;
        }
        if position == start {
            return None;
        }
        for _ in (position - start)..9 {
            nanos *= 10;
        }
    }
    let offset_seconds = match &bytes[position..] {
        [b'Z' | b'z'] => 0,
        [sign @ (b'+' | b'-'), h1, h2, b':', m1, m2] => {
            let field = |a: u8, b: u8| -> Option<i64> {
                (a.is_ascii_digit() && b.is_ascii_digit())
                    .then(|| i64::from(a - b'0') * 10 + i64::from(b - b'0'))
            };
            let offset = field(*h1, *h2)? * 3600 + field(*m1, *m2)? * 60;
            if *sign == b'-' { -offset } else { offset }
        }
        _ => return None,
    };
    // Days since the epoch of a proleptic Gregorian date (Howard Hinnant's algorithm).
    let shifted_year = if month <= 2 { year - 1 } else { year };
    let era = shifted_year.div_euclid(400);
    let year_of_era = shifted_year - era * 400;
    let month_index = (month + 9) % 12;
    let day_of_year = (153 * month_index + 2) / 5 + day - 1;
    let day_of_era = year_of_era * 365 + year_of_era / 4 - year_of_era / 100 + day_of_year;
    let days = era * 146_097 + day_of_era - 719_468;
    let seconds = days * 86_400 + hour * 3600 + minute * 60 + second - offset_seconds;
    seconds.checked_mul(1_000_000_000)?.checked_add(nanos)
}

/// An integer number of seconds/milliseconds/microseconds/nanoseconds since the epoch, by
/// magnitude, exactly.
pub(crate) fn epoch_integer_ns(number: i128) -> Option<i64> {
    if number < 0 {
        return None;
    }
    let nanos = if number < 100_000_000_000 {
        number * 1_000_000_000
    } else if number < 100_000_000_000_000 {
        number * 1_000_000
    } else if number < 100_000_000_000_000_000 {
        number * 1_000
    } else {
        number
    };
    i64::try_from(nanos).ok()
}

/// A number of seconds/milliseconds/microseconds/nanoseconds since the epoch, by magnitude.
pub(crate) fn epoch_number_ns(number: f64) -> Option<i64> {
    if !number.is_finite() || number < 0.0 {
        return None;
    }
    let nanos = if number < 1e11 {
        number * 1e9
    } else if number < 1e14 {
        number * 1e6
    } else if number < 1e17 {
        number * 1e3
    } else {
        number
    };
    (nanos < 9.2e18).then_some(nanos as i64)
}
