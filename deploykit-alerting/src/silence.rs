//! Silences: label matchers that mute notifications for a while.

use serde::{Deserialize, Serialize};
use typed_builder::TypedBuilder;

use super::Labels;
use super::route::{CompiledMatcher, Matcher, compile_all, matches_all};
use deploykit_core::time::Timestamp;
use deploykit_core::{Error, Result};

/// A silence, as in Alertmanager: from `starts_at` until `ends_at`, alerts matching all of
/// `matchers` are not notified. They stay in the engine's state, listing the silence in
/// [`super::Alert::silenced_by`].
///
/// Added with [`super::Alerting::add_silence`], which checks it (it ends after it starts, has at
/// least one matcher, every regex compiles) and assigns an id when `id` is empty.
///
/// ```
/// use std::time::Duration;
/// use deploykit_core::Timestamp;
/// use deploykit_alerting::{Matcher, Silence};
/// let start = Timestamp::from_millis(1_767_225_600_000);
/// let s = Silence::builder()
///     .matchers(vec![Matcher::regex("service", "web.*")])
///     .starts_at(start)
///     .ends_at(start.plus(Duration::from_secs(3600)))
///     .author("ops@example.com")
///     .comment("maintenance")
///     .build();
/// assert!(s.is_active(start));
/// assert!(!s.is_active(start.plus(Duration::from_secs(3600))));
/// ```
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, TypedBuilder)]
#[non_exhaustive]
pub struct Silence {
    /// Its id; empty for the engine to assign one. Adding a silence with the id of an existing
    /// one replaces it.
    #[builder(default, setter(into))]
    #[serde(default)]
    pub id: String,
    /// All must match an alert's labels for the silence to mute it.
    pub matchers: Vec<Matcher>,
    /// When it starts muting.
    pub starts_at: Timestamp,
    /// When it stops muting (exclusive).
    pub ends_at: Timestamp,
    /// Who created it.
    #[builder(setter(into))]
    pub author: String,
    /// Why.
    #[builder(default, setter(into))]
    #[serde(default)]
    pub comment: String,
}

impl Silence {
    /// Whether it mutes at `now`: `starts_at <= now < ends_at`.
    pub fn is_active(&self, now: Timestamp) -> bool {
        self.starts_at <= now && now < self.ends_at
    }

    /// Checks the silence and compiles its matchers.
    pub(super) fn compile(&self) -> Result<Vec<CompiledMatcher>> {
        if self.matchers.is_empty() {
            return Err(Error::invalid(
                "alert.silence.matchers",
                "a silence needs at least one matcher",
            ));
        }
        if self.ends_at <= self.starts_at {
            return Err(Error::invalid(
                "alert.silence.ends_at",
                format!(
                    "ends at {} which is not after it starts ({})",
                    self.ends_at, self.starts_at
                ),
            ));
        }
        if self.author.trim().is_empty() {
            return Err(Error::invalid(
                "alert.silence.author",
                "a silence needs an author",
            ));
        }
        compile_all(&self.matchers, "alert.silence.matchers")
    }
}

/// A silence with compiled matchers.
#[derive(Debug)]
pub(super) struct SilenceEntry {
    pub(super) silence: Silence,
    pub(super) matchers: Vec<CompiledMatcher>,
}

impl SilenceEntry {
    /// Whether it mutes `labels` at `now`.
    pub(super) fn mutes(&self, labels: &Labels, now: Timestamp) -> bool {
        self.silence.is_active(now) && matches_all(&self.matchers, labels)
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::labels;

    fn silence(m: Vec<Matcher>, len: Duration) -> Silence {
        Silence::builder()
            .matchers(m)
            .starts_at(Timestamp::from_millis(1000))
            .ends_at(Timestamp::from_millis(1000).plus(len))
            .author("me")
            .build()
    }

    fn field(s: Silence) -> String {
        match s.compile() {
            Err(Error::InvalidSpec { field, .. }) => field,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn validation() {
        let hour = Duration::from_secs(3600);
        assert_eq!(field(silence(vec![], hour)), "alert.silence.matchers");
        assert_eq!(
            field(silence(vec![Matcher::eq("a", "b")], Duration::ZERO)),
            "alert.silence.ends_at"
        );
        assert_eq!(
            field(silence(vec![Matcher::regex("a", "(")], hour)),
            "alert.silence.matchers[0]"
        );
    }

    #[test]
    fn mutes_matching_alerts_while_active() {
        let s = silence(
            vec![Matcher::regex("service", "web.*")],
            Duration::from_secs(10),
        );
        let e = SilenceEntry {
            matchers: s.compile().unwrap(),
            silence: s,
        };
        let web2 = labels([("service", "web2")]);
        assert!(e.mutes(&web2, Timestamp::from_millis(1000)));
        assert!(!e.mutes(&web2, Timestamp::from_millis(999)));
        assert!(!e.mutes(&web2, Timestamp::from_millis(11_000)));
        assert!(!e.mutes(
            &labels([("service", "xweb1")]),
            Timestamp::from_millis(2000)
        ));
    }
}
