//! The Mann-Whitney U test (Wilcoxon rank-sum), two-sided, with the normal approximation,
//! tie correction and continuity correction, as `scipy.stats.mannwhitneyu(x, y,
//! method="asymptotic")` computes it.

/// The result of a Mann-Whitney U test of `x` against `y`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct MannWhitney {
    /// U statistic of `x` (the number of pairs in which `x` is larger, ties counting half).
    pub u: f64,
    /// The standardised statistic (continuity-corrected).
    pub z: f64,
    /// Two-sided p-value: the chance of a difference at least this large if `x` and `y` came
    /// from the same distribution.
    pub p: f64,
}

/// Runs the test; `None` if either sample is empty or holds a non-finite value.
///
/// ```
/// use deploykit_core::analysis::mann_whitney;
/// let r = mann_whitney(&[1.0, 2.0, 3.0, 4.0, 5.0], &[6.0, 7.0, 8.0, 9.0, 10.0]).unwrap();
/// assert_eq!(r.u, 0.0);
/// assert!(r.p < 0.02);
/// ```
pub fn mann_whitney(x: &[f64], y: &[f64]) -> Option<MannWhitney> {
    if x.is_empty() || y.is_empty() || x.iter().chain(y).any(|v| !v.is_finite()) {
        return None;
    }
    let (n1, n2) = (x.len() as f64, y.len() as f64);
    let mut all: Vec<(f64, bool)> = x
        .iter()
        .map(|v| (*v, true))
        .chain(y.iter().map(|v| (*v, false)))
        .collect();
    all.sort_by(|a, b| a.0.total_cmp(&b.0));
    // Average ranks over ties; collect the tie term sum(t^3 - t).
    let mut rank_sum_x = 0.0;
    let mut tie_term = 0.0;
    let mut i = 0;
    while i < all.len() {
        let mut j = i;
        while j + 1 < all.len() && all[j + 1].0 == all[i].0 {
            j += 1;
        }
        let t = (j - i + 1) as f64;
        let rank = (i + j) as f64 / 2.0 + 1.0;
        rank_sum_x += all[i..=j].iter().filter(|e| e.1).count() as f64 * rank;
        tie_term += t * t * t - t;
        i = j + 1;
    }
    let u = rank_sum_x - n1 * (n1 + 1.0) / 2.0;
    let n = n1 + n2;
    let mean = n1 * n2 / 2.0;
    let variance = n1 * n2 / 12.0 * ((n + 1.0) - tie_term / (n * (n - 1.0)));
    if variance <= 0.0 || !variance.is_finite() {
        return Some(MannWhitney { u, z: 0.0, p: 1.0 });
    }
    let diff = u - mean;
    let corrected = diff.abs() - 0.5;
    let z = corrected.max(0.0).copysign(diff) / variance.sqrt();
    let p = libm::erfc(z.abs() / std::f64::consts::SQRT_2).min(1.0);
    Some(MannWhitney { u, z, p })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close(a: f64, b: f64) -> bool {
        (a - b).abs() < 1e-6
    }

    #[test]
    fn empty_or_non_finite_samples_give_nothing() {
        assert!(mann_whitney(&[], &[1.0]).is_none());
        assert!(mann_whitney(&[1.0, f64::NAN], &[1.0]).is_none());
        assert!(mann_whitney(&[1.0], &[f64::INFINITY]).is_none());
    }

    /// Reference values from SciPy 1.17.1:
    /// `mannwhitneyu(x, y, alternative="two-sided", method="asymptotic", use_continuity=True)`.
    #[test]
    fn matches_scipy() {
        let cases: [(&[f64], &[f64], f64, f64); 4] = [
            (
                &[1., 2., 3., 4., 5.],
                &[6., 7., 8., 9., 10.],
                0.0,
                0.012185780355344813,
            ),
            (
                &[19., 22., 16., 29., 24.],
                &[20., 11., 17., 12.],
                17.0,
                0.11134688653314041,
            ),
            // With ties.
            (
                &[1.1, 2.2, 2.2, 3.3, 4.4, 5.5],
                &[2.2, 3.3, 6.6, 7.7, 8.8, 9.9, 9.9],
                6.5,
                0.043727859914373765,
            ),
            // Error rates of a good stable and a bad canary.
            (
                &[0.01, 0.012, 0.011, 0.013, 0.009, 0.010, 0.012, 0.011],
                &[0.05, 0.06, 0.045, 0.055, 0.07, 0.052, 0.061, 0.049],
                0.0,
                0.0009148479102636043,
            ),
        ];
        for (x, y, u, p) in cases {
            let r = mann_whitney(x, y).unwrap();
            assert_eq!(r.u, u, "{x:?} vs {y:?}");
            assert!(close(r.p, p), "{x:?} vs {y:?}: p {} != {p}", r.p);
        }
    }

    #[test]
    fn identical_samples_show_no_difference() {
        let r = mann_whitney(&[3.0, 3.0, 3.0], &[3.0, 3.0, 3.0]).unwrap();
        assert_eq!((r.u, r.p), (4.5, 1.0));
    }
}
