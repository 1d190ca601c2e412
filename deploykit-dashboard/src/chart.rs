//! Analysis charts: one metric's measurements over time against its thresholds, as SVG.

use std::fmt::Write as _;

use deploykit_core::Timestamp;
use deploykit_core::analysis::{MeasurementOutcome, format_value};

use crate::html::esc;

/// A line across the chart: a threshold (`success: < 2 %`) or a score bound.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct Threshold {
    pub label: String,
    pub value: f64,
}

/// One measurement: when, its value (none without data), how it was judged.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct Point {
    pub at: Timestamp,
    pub value: Option<f64>,
    pub outcome: MeasurementOutcome,
}

const WIDTH: f64 = 560.0;
const HEIGHT: f64 = 180.0;
const LEFT: f64 = 64.0;
const RIGHT: f64 = 12.0;
const TOP: f64 = 12.0;
const BOTTOM: f64 = 28.0;

fn outcome_class(o: MeasurementOutcome) -> &'static str {
    match o {
        MeasurementOutcome::Successful => "ok",
        MeasurementOutcome::Failed => "bad",
        MeasurementOutcome::Inconclusive => "wait",
        _ => "none",
    }
}

/// The chart of `points` (seconds from `origin` across, values up), with `thresholds` as
/// dashed lines, values written with `unit` as the analysis shows them.
pub(crate) fn measurements(
    metric: &str,
    unit: Option<&str>,
    origin: Timestamp,
    points: &[Point],
    thresholds: &[Threshold],
) -> String {
    // Values beyond ±1e300 would overflow the scale: drawn as missing, like no data.
    let finite = |v: f64| (v.is_finite() && v.abs() < 1e300).then_some(v);
    let values: Vec<f64> = points
        .iter()
        .filter_map(|p| p.value.and_then(finite))
        .chain(thresholds.iter().filter_map(|t| finite(t.value)))
        .collect();
    let (mut lo, mut hi) = values
        .iter()
        .fold((0.0f64, f64::NEG_INFINITY), |(lo, hi), v| {
            (lo.min(*v), hi.max(*v))
        });
    if !hi.is_finite() || hi <= lo {
        hi = lo + 1.0;
    }
    let pad = (hi - lo) * 0.1;
    hi += pad;
    if lo < 0.0 {
        lo -= pad;
    }
    let secs = |t: Timestamp| t.since(origin).as_secs_f64();
    let t_end = points
        .iter()
        .map(|p| secs(p.at))
        .fold(0.0f64, f64::max)
        .max(1.0);
    let t_start = points
        .iter()
        .map(|p| secs(p.at))
        .fold(t_end, f64::min)
        .min(t_end - 1.0)
        .max(0.0);
    let x = |t: f64| LEFT + (t - t_start) / (t_end - t_start) * (WIDTH - LEFT - RIGHT);
    let y = |v: f64| TOP + (hi - v) / (hi - lo) * (HEIGHT - TOP - BOTTOM);
    let mut svg = format!(
        "<svg class=\"chart\" viewBox=\"0 0 {WIDTH} {HEIGHT}\" role=\"img\" \
         data-metric=\"{m}\" data-points=\"{n}\"><title>{m}: {n} measurement(s)</title>",
        m = esc(metric),
        n = points.len()
    );
    // Axes with their ends labelled.
    let _ = write!(
        svg,
        "<line class=\"axis\" x1=\"{LEFT}\" y1=\"{b}\" x2=\"{r}\" y2=\"{b}\"/>\
         <line class=\"axis\" x1=\"{LEFT}\" y1=\"{TOP}\" x2=\"{LEFT}\" y2=\"{b}\"/>\
         <text class=\"tick\" x=\"{tx}\" y=\"{ty}\" text-anchor=\"end\">{hi_l}</text>\
         <text class=\"tick\" x=\"{tx}\" y=\"{b}\" text-anchor=\"end\">{lo_l}</text>\
         <text class=\"tick\" x=\"{LEFT}\" y=\"{tb}\">{t0:.0}s</text>\
         <text class=\"tick\" x=\"{r}\" y=\"{tb}\" text-anchor=\"end\">{t1:.0}s</text>",
        b = HEIGHT - BOTTOM,
        r = WIDTH - RIGHT,
        tx = LEFT - 6.0,
        ty = TOP + 8.0,
        tb = HEIGHT - 8.0,
        hi_l = esc(&format_value(hi, unit)),
        lo_l = esc(&format_value(lo, unit)),
        t0 = t_start,
        t1 = t_end,
    );
    for t in thresholds.iter().filter(|t| t.value.is_finite()) {
        let ty = y(t.value);
        let _ = write!(
            svg,
            "<line class=\"threshold\" x1=\"{LEFT}\" y1=\"{ty:.1}\" x2=\"{r}\" y2=\"{ty:.1}\" \
             data-threshold=\"{v}\"/><text class=\"tick threshold\" x=\"{r}\" y=\"{ly:.1}\" \
             text-anchor=\"end\">{l}</text>",
            r = WIDTH - RIGHT,
            v = t.value,
            ly = ty - 3.0,
            l = esc(&t.label),
        );
    }
    let path: Vec<String> = points
        .iter()
        .filter_map(|p| {
            p.value
                .and_then(finite)
                .map(|v| format!("{:.1},{:.1}", x(secs(p.at)), y(v)))
        })
        .collect();
    if path.len() > 1 {
        let _ = write!(
            svg,
            "<polyline class=\"series\" points=\"{}\"/>",
            path.join(" ")
        );
    }
    for p in points {
        let cx = x(secs(p.at));
        match p.value.and_then(finite) {
            Some(v) => {
                let _ = write!(
                    svg,
                    "<circle class=\"point {c}\" cx=\"{cx:.1}\" cy=\"{cy:.1}\" r=\"4\">\
                     <title>{t:.1}s: {val} ({o})</title></circle>",
                    c = outcome_class(p.outcome),
                    cy = y(v),
                    t = secs(p.at),
                    val = esc(&format_value(v, unit)),
                    o = p.outcome,
                );
            }
            // No value: a mark on the time axis, so missing data is seen, not hidden.
            None => {
                let _ = write!(
                    svg,
                    "<rect class=\"point none\" x=\"{x0:.1}\" y=\"{y0:.1}\" width=\"6\" height=\"6\">\
                     <title>{t:.1}s: {o}</title></rect>",
                    x0 = cx - 3.0,
                    y0 = HEIGHT - BOTTOM - 3.0,
                    t = secs(p.at),
                    o = p.outcome,
                );
            }
        }
    }
    svg.push_str("</svg>");
    svg
}

#[cfg(test)]
mod tests {
    use super::*;

    fn point(s: u64, value: Option<f64>, outcome: MeasurementOutcome) -> Point {
        Point {
            at: Timestamp::from_millis(s * 1000),
            value,
            outcome,
        }
    }

    #[test]
    fn every_measurement_is_drawn_inside_the_chart_with_its_threshold() {
        let points = [
            point(1, Some(0.01), MeasurementOutcome::Successful),
            point(2, None, MeasurementOutcome::NoData),
            point(3, Some(0.449), MeasurementOutcome::Failed),
        ];
        let svg = measurements(
            "error-rate",
            Some("%"),
            Timestamp::from_millis(0),
            &points,
            &[Threshold {
                label: "success < 2 %".into(),
                value: 0.02,
            }],
        );
        assert_eq!(svg.matches("<circle").count(), 2, "{svg}");
        assert_eq!(svg.matches("class=\"point none\"").count(), 1);
        assert!(svg.contains("point bad") && svg.contains("point ok"));
        assert!(svg.contains("data-threshold=\"0.02\""));
        assert!(svg.contains("44.9 %"), "{svg}");
        for cap in regex_free_numbers(&svg, "cy=\"") {
            assert!(
                (TOP..=HEIGHT - BOTTOM).contains(&cap),
                "{cap} outside in {svg}"
            );
        }
    }

    #[test]
    fn absurd_values_draw_no_nan_and_no_points_draw_an_empty_chart() {
        for values in [
            vec![
                Some(f64::NAN),
                Some(f64::INFINITY),
                Some(-1e308),
                Some(1e308),
                Some(-1e299),
                Some(1e299),
            ],
            vec![],
            vec![Some(5.0), Some(5.0)],
        ] {
            let points: Vec<Point> = values
                .iter()
                .enumerate()
                .map(|(i, v)| point(i as u64, *v, MeasurementOutcome::Error))
                .collect();
            let svg = measurements("m", None, Timestamp::from_millis(0), &points, &[]);
            assert!(!svg.contains("NaN") && !svg.contains("inf"), "{svg}");
        }
    }

    /// The numbers after each `prefix` in `s`.
    fn regex_free_numbers(s: &str, prefix: &str) -> Vec<f64> {
        s.split(prefix)
            .skip(1)
            .filter_map(|rest| rest.split('"').next()?.parse().ok())
            .collect()
    }
}
