//! serde's error messages in the words of the file the user wrote: TOML has whole numbers,
//! numbers, strings, booleans, arrays and tables, not `u32`, `f64`, sequences, maps or
//! `struct ServiceToml`.
//!
//! serde words a type error as `invalid type: <what was found>, expected <what was wanted>`
//! and a value error as `invalid value: <found>, expected <wanted>`; [`rewrite`] turns both
//! into `expected <wanted>, found <found>` (or `<n> is not a whole number from <min> to
//! <max>` when only the range is wrong) and leaves every other message — unknown or missing
//! fields, custom messages — as it is.

/// `message`, a serde/toml deserialization message, in TOML words. `value_text` is the source
/// text where the offending value starts (it tells a date from a table, which toml hands to
/// serde alike).
pub(crate) fn rewrite(message: &str, value_text: &str) -> String {
    let mismatched = message
        .strip_prefix("invalid type: ")
        .or_else(|| message.strip_prefix("invalid value: "))
        .and_then(split_expected);
    if let Some((found, expected)) = mismatched {
        return mismatch(found, expected, value_text);
    }
    let wrong_length = message
        .strip_prefix("invalid length ")
        .and_then(split_expected);
    if let Some((length, expected)) = wrong_length {
        let items = if length == "1" { "item" } else { "items" };
        return format!("expected {}, found {length} {items}", wanted(expected));
    }
    message.to_string()
}

/// A TOML value as an error message names what was found: `the number -1`, `the string
/// "x"`, `an array`.
pub(crate) fn describe(value: &toml::Value) -> String {
    match value {
        toml::Value::String(s) => format!("the string {s:?}"),
        toml::Value::Integer(n) => format!("the number {n}"),
        toml::Value::Float(f) => format!("the number {f}"),
        toml::Value::Boolean(b) => format!("the boolean {b}"),
        toml::Value::Datetime(d) => format!("the date {d}"),
        toml::Value::Array(_) => "an array".to_string(),
        toml::Value::Table(_) => "a table".to_string(),
    }
}

/// `<found>, expected <wanted>` split at the last `, expected ` (a found string may itself
/// hold those words; the wanted description never does).
fn split_expected(rest: &str) -> Option<(&str, &str)> {
    let at = rest.rfind(", expected ")?;
    Some((&rest[..at], &rest[at + ", expected ".len()..]))
}

fn mismatch(found: &str, expected: &str, value_text: &str) -> String {
    if let (Some(range), Some(number)) = (whole_number(expected), number(found)) {
        return format!("{number} is not {range}");
    }
    format!(
        "expected {}, found {}",
        wanted(expected),
        found_words(found, value_text)
    )
}

/// The number in serde's `integer `-1`` or `floating point `1.5``.
fn number(found: &str) -> Option<&str> {
    found
        .strip_prefix("integer ")
        .or_else(|| found.strip_prefix("floating point "))
        .map(|n| n.trim_matches('`'))
}

/// `a whole number from <min> to <max>` for serde's name of an integer type.
fn whole_number(expected: &str) -> Option<String> {
    let range = |min: i128, max: u128| Some(format!("a whole number from {min} to {max}"));
    match expected {
        "u8" => range(0, u8::MAX.into()),
        "u16" => range(0, u16::MAX.into()),
        "u32" => range(0, u32::MAX.into()),
        "u64" | "usize" => range(0, u64::MAX.into()),
        "u128" => range(0, u128::MAX),
        "i8" => range(i8::MIN.into(), i8::MAX.unsigned_abs().into()),
        "i16" => range(i16::MIN.into(), i16::MAX.unsigned_abs().into()),
        "i32" => range(i32::MIN.into(), i32::MAX.unsigned_abs().into()),
        // Every TOML integer fits: the range would say nothing.
        "i64" | "isize" | "i128" => Some("a whole number".to_string()),
        _ => None,
    }
}

/// What serde says was expected, in TOML words.
fn wanted(expected: &str) -> String {
    if let Some(range) = whole_number(expected) {
        return range;
    }
    let words = match expected {
        "f32" | "f64" => "a number",
        "a boolean" => "a boolean (true or false)",
        "a string" | "a borrowed string" | "path string" | "a character" | "char" => "a string",
        "a sequence" => "an array",
        "a map" => "a table",
        _ => {
            if let Some(n) = expected.strip_prefix("a tuple of size ") {
                return format!("an array of {n} items");
            }
            if expected.starts_with("struct ") {
                return "a table".to_string();
            }
            return expected.to_string();
        }
    };
    words.to_string()
}

/// What serde says was found, in TOML words.
fn found_words(found: &str, value_text: &str) -> String {
    if let Some(b) = found.strip_prefix("boolean ") {
        return format!("the boolean {}", b.trim_matches('`'));
    }
    if let Some(n) = number(found) {
        return format!("the number {n}");
    }
    if let Some(s) = found.strip_prefix("string ") {
        return format!("the string {s}");
    }
    if let Some(c) = found.strip_prefix("character ") {
        return format!("the string {:?}", c.trim_matches('`'));
    }
    match found {
        "sequence" => "an array".to_string(),
        // toml hands a date or time to serde as a one-key table.
        "map" if value_text.starts_with(|c: char| c.is_ascii_digit()) => {
            "a date or time".to_string()
        }
        "map" => "a table".to_string(),
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::rewrite;

    #[test]
    fn serde_messages_become_toml_words() {
        let cases = [
            (
                "invalid type: string \"two\", expected u32",
                "\"two\"",
                "expected a whole number from 0 to 4294967295, found the string \"two\"",
            ),
            (
                "invalid value: integer `-1`, expected u32",
                "-1",
                "-1 is not a whole number from 0 to 4294967295",
            ),
            (
                "invalid value: integer `70000`, expected u16",
                "70000",
                "70000 is not a whole number from 0 to 65535",
            ),
            (
                "invalid type: floating point `1.5`, expected u64",
                "1.5",
                "1.5 is not a whole number from 0 to 18446744073709551615",
            ),
            (
                "invalid type: boolean `true`, expected i64",
                "true",
                "expected a whole number, found the boolean true",
            ),
            (
                "invalid type: string \"x\", expected f64",
                "\"x\"",
                "expected a number, found the string \"x\"",
            ),
            (
                "invalid type: string \"yes\", expected a boolean",
                "\"yes\"",
                "expected a boolean (true or false), found the string \"yes\"",
            ),
            (
                "invalid type: integer `3`, expected a string",
                "3",
                "expected a string, found the number 3",
            ),
            (
                "invalid type: string \"./web\", expected a sequence",
                "\"./web\"",
                "expected an array, found the string \"./web\"",
            ),
            (
                "invalid type: sequence, expected a map",
                "[",
                "expected a table, found an array",
            ),
            (
                "invalid type: integer `3`, expected struct BackupToml",
                "3",
                "expected a table, found the number 3",
            ),
            (
                "invalid type: map, expected u32",
                "1979-05-27",
                "expected a whole number from 0 to 4294967295, found a date or time",
            ),
            (
                "invalid type: map, expected a string",
                "{ a = 1 }",
                "expected a string, found a table",
            ),
            (
                "invalid type: string \"a, expected b\", expected u8",
                "\"a, expected b\"",
                "expected a whole number from 0 to 255, found the string \"a, expected b\"",
            ),
            (
                "invalid length 3, expected a tuple of size 2",
                "[",
                "expected an array of 2 items, found 3 items",
            ),
        ];
        for (serde, text, toml) in cases {
            assert_eq!(rewrite(serde, text), toml, "{serde}");
        }
    }

    #[test]
    fn other_messages_are_kept() {
        for message in [
            "unknown field `replica`, expected one of `kind`, `replicas`",
            "missing field `kind`",
            "a custom message",
        ] {
            assert_eq!(rewrite(message, ""), message);
        }
    }
}
