//! Names people type: a service, an environment, an instance. An unknown one is an error that
//! lists what exists and suggests the closest.

use deploykit_core::Error;

/// The known name closest to `wanted` when it is close enough to be a typo: at most one edit
/// (an insertion, a deletion, a substitution or two letters swapped) per three letters typed.
pub(crate) fn closest<'a>(
    wanted: &str,
    known: impl IntoIterator<Item = &'a str>,
) -> Option<&'a str> {
    let limit = (wanted.chars().count() / 3).max(1);
    known
        .into_iter()
        .map(|k| (strsim::osa_distance(wanted, k), k))
        .filter(|(distance, _)| *distance <= limit)
        .min_by_key(|(distance, _)| *distance)
        .map(|(_, k)| k)
}

/// `invalid service: "wbe" is not a service in deploykit.toml: did you mean "web"? (services:
/// web, worker)`.
pub(crate) fn unknown(
    what: &str,
    plural: &str,
    wanted: &str,
    known: &[String],
    place: &str,
) -> Error {
    let article = if what.starts_with(['a', 'e', 'i', 'o', 'u']) {
        "an"
    } else {
        "a"
    };
    let mut reason = format!("{wanted:?} is not {article} {what} in {place}");
    if let Some(close) = closest(wanted, known.iter().map(String::as_str)) {
        reason.push_str(&format!(": did you mean {close:?}?"));
    }
    if known.is_empty() {
        reason.push_str(&format!(" (it has no {plural})"));
    } else {
        reason.push_str(&format!(" ({plural}: {})", known.join(", ")));
    }
    Error::invalid(what, reason)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_typo_is_matched_and_a_stranger_is_not() {
        let known = ["web", "worker", "api"];
        assert_eq!(closest("wbe", known), Some("web"));
        assert_eq!(closest("workr", known), Some("worker"));
        assert_eq!(closest("nosvc", known), None);
        let e = unknown(
            "service",
            "services",
            "wbe",
            &["web".into(), "worker".into()],
            "deploykit.toml",
        );
        assert_eq!(
            e.to_string(),
            "invalid service: \"wbe\" is not a service in deploykit.toml: did you mean \"web\"? \
             (services: web, worker)"
        );
    }
}
