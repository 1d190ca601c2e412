//! Semantic versions as flagd's `sem_ver` reads them: Go's `golang.org/x/mod/semver` after
//! flagd's normalisation (a missing `v` is added, `V` becomes `v`), so `1`, `1.2`, `v1.2.3`,
//! `1.2.3-rc.1+build` are versions and `1.2.3.4`, `01.2.3` and `1.2-rc` are not. Build
//! metadata is ignored when comparing.

use std::cmp::Ordering;

/// A parsed version: numeric parts as digit strings (no leading zeros, any length) and the
/// pre-release identifiers.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Version<'a> {
    major: &'a str,
    minor: &'a str,
    patch: &'a str,
    prerelease: Vec<&'a str>,
}

/// The comparisons `sem_ver` knows.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum SemVerOp {
    Eq,
    Ne,
    Lt,
    Le,
    Gt,
    Ge,
    /// `^`: same major version.
    Major,
    /// `~`: same major and minor version.
    Minor,
}

impl SemVerOp {
    /// The operator named `s`, if `sem_ver` has it.
    pub(crate) fn parse(s: &str) -> Option<SemVerOp> {
        Some(match s {
            "=" => SemVerOp::Eq,
            "!=" => SemVerOp::Ne,
            "<" => SemVerOp::Lt,
            "<=" => SemVerOp::Le,
            ">" => SemVerOp::Gt,
            ">=" => SemVerOp::Ge,
            "^" => SemVerOp::Major,
            "~" => SemVerOp::Minor,
            _ => return None,
        })
    }

    /// Whether `a <op> b` holds.
    pub(crate) fn holds(self, a: &Version<'_>, b: &Version<'_>) -> bool {
        let ord = a.cmp(b);
        match self {
            SemVerOp::Eq => ord == Ordering::Equal,
            SemVerOp::Ne => ord != Ordering::Equal,
            SemVerOp::Lt => ord == Ordering::Less,
            SemVerOp::Le => ord != Ordering::Greater,
            SemVerOp::Gt => ord == Ordering::Greater,
            SemVerOp::Ge => ord != Ordering::Less,
            SemVerOp::Major => a.major == b.major,
            SemVerOp::Minor => a.major == b.major && a.minor == b.minor,
        }
    }
}

/// flagd's normalisation: `V1.0` → `v1.0`, `1.0` → `v1.0`.
pub(crate) fn normalise(s: &str) -> String {
    if s.starts_with('v') {
        s.to_string()
    } else {
        format!("v{}", s.strip_prefix('V').unwrap_or(s))
    }
}

/// Parse a normalised version (`v` first), as `semver.IsValid` accepts it.
pub(crate) fn parse(v: &str) -> Option<Version<'_>> {
    let rest = v.strip_prefix('v')?;
    let (major, rest) = number(rest)?;
    let Some(rest) = rest.strip_prefix('.') else {
        return rest.is_empty().then(|| Version::short(major, "0"));
    };
    let (minor, rest) = number(rest)?;
    let Some(rest) = rest.strip_prefix('.') else {
        return rest.is_empty().then(|| Version::short(major, minor));
    };
    let (patch, mut rest) = number(rest)?;
    let mut prerelease = Vec::new();
    if let Some(after) = rest.strip_prefix('-') {
        let end = after.find('+').unwrap_or(after.len());
        for id in after[..end].split('.') {
            let numeric = id.bytes().all(|b| b.is_ascii_digit());
            if !identifier(id) || (numeric && id.len() > 1 && id.starts_with('0')) {
                return None;
            }
            prerelease.push(id);
        }
        rest = &after[end..];
    }
    if let Some(build) = rest.strip_prefix('+') {
        if !build.split('.').all(identifier) {
            return None;
        }
        rest = "";
    }
    rest.is_empty().then_some(Version {
        major,
        minor,
        patch,
        prerelease,
    })
}

impl<'a> Version<'a> {
    fn short(major: &'a str, minor: &'a str) -> Self {
        Version {
            major,
            minor,
            patch: "0",
            prerelease: Vec::new(),
        }
    }
}

/// Leading digits without a leading zero (except `0` itself), and what follows.
fn number(s: &str) -> Option<(&str, &str)> {
    let end = s.bytes().take_while(u8::is_ascii_digit).count();
    let digits = &s[..end];
    if digits.is_empty() || (digits.len() > 1 && digits.starts_with('0')) {
        return None;
    }
    Some((digits, &s[end..]))
}

fn identifier(id: &str) -> bool {
    !id.is_empty() && id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
}

/// Digit strings without leading zeros compare by length, then lexically.
fn compare_numbers(a: &str, b: &str) -> Ordering {
    a.len().cmp(&b.len()).then_with(|| a.cmp(b))
}

impl Ord for Version<'_> {
    fn cmp(&self, other: &Self) -> Ordering {
        compare_numbers(self.major, other.major)
            .then_with(|| compare_numbers(self.minor, other.minor))
            .then_with(|| compare_numbers(self.patch, other.patch))
            .then_with(
                || match (self.prerelease.is_empty(), other.prerelease.is_empty()) {
                    (true, true) => Ordering::Equal,
                    (true, false) => Ordering::Greater,
                    (false, true) => Ordering::Less,
                    (false, false) => {
                        for (a, b) in self.prerelease.iter().zip(&other.prerelease) {
                            let a_num = a.bytes().all(|c| c.is_ascii_digit());
                            let b_num = b.bytes().all(|c| c.is_ascii_digit());
                            let ord = match (a_num, b_num) {
                                (true, true) => compare_numbers(a, b),
                                (true, false) => Ordering::Less,
                                (false, true) => Ordering::Greater,
                                (false, false) => a.cmp(b),
                            };
                            if ord != Ordering::Equal {
                                return ord;
                            }
                        }
                        self.prerelease.len().cmp(&other.prerelease.len())
                    }
                },
            )
    }
}

impl PartialOrd for Version<'_> {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(s: &str) -> Option<Version<'_>> {
        parse(s)
    }

    #[test]
    fn accepts_what_go_semver_accepts() {
        for ok in [
            "v1",
            "v1.2",
            "v1.2.3",
            "v0.0.0",
            "v1.2.3-rc.1",
            "v1.2.3-0.a-b",
            "v1.2.3+b.1",
            "v1.2.3-rc+build",
            "v10.20.30",
        ] {
            assert!(v(ok).is_some(), "{ok}");
        }
        for bad in [
            "",
            "v",
            "1.2.3",
            "v1.2.3.4",
            "v01.2.3",
            "v1.02.3",
            "v1.2-rc",
            "v1-rc",
            "v1.2.3-",
            "v1.2.3-01",
            "v1.2.3-a..b",
            "v1.2.3+",
            "v1.2.3+a..b",
            "v1.2.3 ",
            "v1.2.3_x",
            "v1..2",
        ] {
            assert!(v(bad).is_none(), "{bad}");
        }
    }

    #[test]
    fn orders_as_semver_does() {
        let chain = [
            "v1.0.0-alpha",
            "v1.0.0-alpha.1",
            "v1.0.0-alpha.beta",
            "v1.0.0-beta",
            "v1.0.0-beta.2",
            "v1.0.0-beta.11",
            "v1.0.0-rc.1",
            "v1.0.0",
            "v1.2",
            "v2",
            "v10.0.0",
        ];
        for w in chain.windows(2) {
            assert_eq!(v(w[0]).cmp(&v(w[1])), Ordering::Less, "{} < {}", w[0], w[1]);
        }
        assert_eq!(v("v1.0.0+a").cmp(&v("v1.0.0+b")), Ordering::Equal);
        assert_eq!(v("v1").cmp(&v("v1.0.0")), Ordering::Equal);
        assert_eq!(
            v("v99999999999999999999.0.0").cmp(&v("v99999999999999999998.0.0")),
            Ordering::Greater
        );
    }

    #[test]
    fn normalises_like_flagd() {
        assert_eq!(normalise("1.0.0"), "v1.0.0");
        assert_eq!(normalise("V1.0.0"), "v1.0.0");
        assert_eq!(normalise("v1.0.0"), "v1.0.0");
        let (a, b) = (parse("v3.0.1").unwrap(), parse("v3.0.0").unwrap());
        assert!(SemVerOp::Minor.holds(&a, &b) && SemVerOp::Major.holds(&a, &b));
        let c = parse("v3.1.0").unwrap();
        assert!(!SemVerOp::Minor.holds(&c, &b) && SemVerOp::Major.holds(&c, &b));
    }
}
