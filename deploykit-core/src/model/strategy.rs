//! Strategy specs: how a deployment rolls out (rolling, blue-green or canary), as plain data
//! with its defaults and validation. The planners that carry a spec out are in
//! [`crate::strategy`].

use std::time::Duration;

use serde::{Deserialize, Serialize};
use typed_builder::TypedBuilder;

use super::analysis::AnalysisSpec;
use super::rollout::{MAX_REPLICAS, RollingSpec, Weight};
use crate::error::{Error, Result};
use crate::time::{DAY, duration_ms, option_duration_ms};
use crate::validate::check_duration;

/// How a deployment rolls out, as recorded in its journal.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
#[non_exhaustive]
pub enum StrategySpec {
    /// A rolling update.
    Rolling(RollingSpec),
    /// Blue-green: the new revision at full size beside the old, then a traffic switch.
    BlueGreen(BlueGreenSpec),
    /// Canary: traffic moved to the new revision in steps, with analysis.
    Canary(CanarySpec),
}

impl Default for StrategySpec {
    fn default() -> Self {
        StrategySpec::Rolling(RollingSpec::default())
    }
}

impl StrategySpec {
    /// A short name (`rolling`, `blue-green`, `canary`) for logs and metrics.
    pub fn name(&self) -> &'static str {
        match self {
            StrategySpec::Rolling(_) => "rolling",
            StrategySpec::BlueGreen(_) => "blue-green",
            StrategySpec::Canary(_) => "canary",
        }
    }

    /// The rolling parameters, for a rolling strategy.
    pub fn rolling(&self) -> Option<&RollingSpec> {
        match self {
            StrategySpec::Rolling(spec) => Some(spec),
            _ => None,
        }
    }

    /// Whether the strategy has a promotion (blue-green, canary): only those can join a
    /// multi-service release, which promotes all its members together.
    pub fn promotes(&self) -> bool {
        !matches!(self, StrategySpec::Rolling(_))
    }

    /// Whether any step or background check needs a [`crate::Monitor`].
    pub fn needs_monitor(&self) -> bool {
        match self {
            StrategySpec::Rolling(_) => false,
            StrategySpec::BlueGreen(spec) => spec.pre_promotion_analysis.is_some(),
            StrategySpec::Canary(spec) => {
                spec.background_analysis.is_some()
                    || spec
                        .steps
                        .iter()
                        .any(|s| matches!(s, CanaryStep::Analysis { .. }))
            }
        }
    }

    /// The first step that needs traffic split by weight (a weight strictly between 0 and
    /// 100, a header route or a mirror), as `steps[i]: …` for messages; `None` if the strategy
    /// only ever sends all traffic to one revision (rolling, blue-green).
    pub fn weighted_step(&self) -> Option<String> {
        let StrategySpec::Canary(spec) = self else {
            return None;
        };
        spec.steps.iter().enumerate().find_map(|(i, step)| {
            let what = match step {
                CanaryStep::SetWeight { weight } if (1..100).contains(&weight.percent()) => {
                    format!("set_weight {}", weight.percent())
                }
                CanaryStep::SetHeaderRoute { name, .. } => format!("set_header_route {name}"),
                CanaryStep::SetMirror { percent } => format!("set_mirror {}%", percent.percent()),
                _ => return None,
            };
            Some(format!("steps[{i}]: {what}"))
        })
    }

    pub(crate) fn validate(&self, field: &str) -> Result<()> {
        match self {
            StrategySpec::Rolling(spec) => spec.validate(&format!("{field}.rolling")),
            StrategySpec::BlueGreen(spec) => spec.validate(&format!("{field}.blue_green")),
            StrategySpec::Canary(spec) => spec.validate(&format!("{field}.canary")),
        }
    }
}

/// Parameters of a blue-green rollout, with Argo Rollouts' defaults.
///
/// ```
/// use std::time::Duration;
/// use deploykit_core::strategy::BlueGreenSpec;
/// let spec = BlueGreenSpec::builder().auto_promote(false).build()?;
/// assert_eq!(spec.scale_down_delay, Duration::from_secs(30));
/// # Ok::<(), deploykit_core::Error>(())
/// ```
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, TypedBuilder)]
#[serde(remote = "Self")]
#[builder(build_method(into = Result<BlueGreenSpec>))]
#[non_exhaustive]
pub struct BlueGreenSpec {
    /// Promote on its own once ready (and analysed); otherwise wait for an approval of gate
    /// `promotion` (default true).
    #[builder(default = true)]
    pub auto_promote: bool,
    /// With auto-promotion, wait this long after the new revision is ready (default 0).
    #[builder(default)]
    #[serde(with = "duration_ms", rename = "auto_promotion_delay_ms")]
    pub auto_promotion_delay: Duration,
    /// Keep the old revision running this long after promotion, so a rollback is an instant
    /// traffic switch (default 30 s).
    #[builder(default = Duration::from_secs(30))]
    #[serde(with = "duration_ms", rename = "scale_down_delay_ms")]
    pub scale_down_delay: Duration,
    /// Analysis of the new revision on the preview route before promotion.
    #[builder(default, setter(strip_option))]
    pub pre_promotion_analysis: Option<AnalysisSpec>,
}

impl Default for BlueGreenSpec {
    fn default() -> Self {
        BlueGreenSpec {
            auto_promote: true,
            auto_promotion_delay: Duration::ZERO,
            scale_down_delay: Duration::from_secs(30),
            pre_promotion_analysis: None,
        }
    }
}

crate::validate::validated_serde!(BlueGreenSpec, |s| s.validate("blue_green"));

impl From<BlueGreenSpec> for Result<BlueGreenSpec> {
    fn from(s: BlueGreenSpec) -> Self {
        s.validate("blue_green")?;
        Ok(s)
    }
}

impl BlueGreenSpec {
    pub(crate) fn validate(&self, field: &str) -> Result<()> {
        if let Some(a) = &self.pre_promotion_analysis {
            a.validate(&format!("{field}.pre_promotion_analysis"))?;
        }
        // More than a day would hold the old revision's capacity for too long.
        check_duration(
            &format!("{field}.scale_down_delay"),
            self.scale_down_delay,
            Duration::ZERO,
            DAY,
        )?;
        check_duration(
            &format!("{field}.auto_promotion_delay"),
            self.auto_promotion_delay,
            Duration::ZERO,
            DAY * 7,
        )?;
        Ok(())
    }
}

/// The longest timed pause (a bake of up to 30 days; "until approved" is a pause without a
/// duration, never a huge number).
pub const MAX_PAUSE: Duration = Duration::from_secs(30 * 24 * 3600);

/// The most steps a canary may have.
pub const MAX_STEPS: usize = 1_000;

/// How many canary instances run.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CanaryScale {
    /// Enough instances for the current weight: ⌈replicas × weight / 100⌉ (the default).
    MatchWeight,
    /// A fixed count.
    Replicas(u32),
    /// A percentage of the desired replicas, rounded up.
    Percent(u32),
}

/// One canary step.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
#[non_exhaustive]
pub enum CanaryStep {
    /// Send this share of traffic to the canary.
    SetWeight {
        /// The share.
        weight: Weight,
    },
    /// Wait this long, or (without a duration) until gate `step-<index>` is approved.
    Pause {
        /// How long; `None` waits for an approval.
        #[serde(default, with = "option_duration_ms", rename = "duration_ms")]
        duration: Option<Duration>,
    },
    /// Run an analysis; move on when it succeeds, roll back when it fails.
    Analysis {
        /// The analysis.
        analysis: AnalysisSpec,
    },
    /// Change how many canary instances run.
    SetCanaryScale {
        /// The scale.
        scale: CanaryScale,
    },
    /// Route requests with header `name: value` to the canary.
    SetHeaderRoute {
        /// Header name.
        name: String,
        /// Header value.
        value: String,
    },
    /// Copy this share of requests to the canary.
    SetMirror {
        /// The share.
        percent: Weight,
    },
}

impl CanaryStep {
    /// `SetWeight` of `percent`; fails for a weight above 100.
    pub fn weight(percent: u32) -> Result<Self> {
        Ok(CanaryStep::SetWeight {
            weight: Weight::new(percent)?,
        })
    }

    /// A timed pause.
    pub fn pause(duration: Duration) -> Self {
        CanaryStep::Pause {
            duration: Some(duration),
        }
    }

    /// A pause until approved.
    pub fn approval() -> Self {
        CanaryStep::Pause { duration: None }
    }

    /// An analysis step.
    pub fn analysis(analysis: AnalysisSpec) -> Self {
        CanaryStep::Analysis { analysis }
    }
}

/// Parameters of a canary rollout.
///
/// ```
/// use std::time::Duration;
/// use deploykit_core::strategy::{CanarySpec, CanaryStep};
/// let spec = CanarySpec::builder()
///     .steps(vec![
///         CanaryStep::weight(10)?,
///         CanaryStep::pause(Duration::from_secs(60)),
///         CanaryStep::weight(50)?,
///         CanaryStep::approval(),
///     ])
///     .build()?;
/// assert_eq!(spec.steps.len(), 4);
/// # Ok::<(), deploykit_core::Error>(())
/// ```
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, TypedBuilder)]
#[serde(remote = "Self")]
#[builder(build_method(into = Result<CanarySpec>))]
#[non_exhaustive]
pub struct CanarySpec {
    /// The steps, in order. After the last one the canary is scaled to full size and promoted.
    pub steps: Vec<CanaryStep>,
    /// Analysis that runs through every step until promotion; its failure aborts the rollout.
    #[builder(default, setter(strip_option))]
    pub background_analysis: Option<AnalysisSpec>,
    /// Keep the old revision running this long after promotion (default 30 s).
    #[builder(default = Duration::from_secs(30))]
    #[serde(with = "duration_ms", rename = "scale_down_delay_ms")]
    pub scale_down_delay: Duration,
}

crate::validate::validated_serde!(CanarySpec, |s| s.validate("canary"));

impl From<CanarySpec> for Result<CanarySpec> {
    fn from(s: CanarySpec) -> Self {
        s.validate("canary")?;
        Ok(s)
    }
}

impl CanarySpec {
    pub(crate) fn validate(&self, field: &str) -> Result<()> {
        if let Some(a) = &self.background_analysis {
            a.validate(&format!("{field}.background_analysis"))?;
        }
        if self.steps.is_empty() {
            return Err(Error::invalid(
                format!("{field}.steps"),
                "a canary needs at least one step (to switch all traffic at once, use the \
                 blue-green strategy)",
            ));
        }
        if self.steps.len() > MAX_STEPS {
            return Err(Error::invalid(
                format!("{field}.steps"),
                format!("{} steps is more than {MAX_STEPS}", self.steps.len()),
            ));
        }
        check_duration(
            &format!("{field}.scale_down_delay"),
            self.scale_down_delay,
            Duration::ZERO,
            DAY,
        )?;
        for (i, step) in self.steps.iter().enumerate() {
            let f = format!("{field}.steps[{i}]");
            match step {
                CanaryStep::Pause { duration: Some(d) } => check_duration(
                    &format!("{f}.pause"),
                    *d,
                    Duration::from_millis(1),
                    MAX_PAUSE,
                )?,
                CanaryStep::Analysis { analysis } => analysis.validate(&format!("{f}.analysis"))?,
                CanaryStep::SetCanaryScale {
                    scale: CanaryScale::Percent(p),
                } if *p > 100 => {
                    return Err(Error::invalid(
                        format!("{f}.scale"),
                        format!("{p}% is outside 0-100%"),
                    ));
                }
                CanaryStep::SetCanaryScale {
                    scale: CanaryScale::Replicas(n),
                } if *n > MAX_REPLICAS => {
                    return Err(Error::invalid(
                        format!("{f}.scale"),
                        format!("{n} instances is above {}", MAX_REPLICAS),
                    ));
                }
                CanaryStep::SetCanaryScale {
                    scale: CanaryScale::Replicas(0),
                } => {
                    return Err(Error::invalid(
                        format!("{f}.scale"),
                        "0 canary instances could serve nothing; use at least 1",
                    ));
                }
                CanaryStep::SetHeaderRoute { name, .. } if name.trim().is_empty() => {
                    return Err(Error::invalid(
                        format!("{f}.name"),
                        "a header route needs a header name",
                    ));
                }
                _ => {}
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{
        BadDirection, Condition, JudgedMetric, JudgementSpec, MetricCheck, MetricKind, MinSamples,
        Quantity,
    };

    /// Each strategy, with every kind of step, metric and analysis.
    fn specs() -> [StrategySpec; 4] {
        let threshold = MetricCheck::threshold("error-rate", "error_rate", Condition::below(0.05))
            .interval(Duration::from_secs(60))
            .count(3)
            .failure_limit(1)
            .min_samples(MinSamples::new("requests[1m]", 100))
            .build()
            .unwrap();
        let mut bounded = MetricCheck::threshold("p99", "p99", Condition::above(0.5))
            .build()
            .unwrap();
        if let MetricKind::Threshold { failure, .. } = &mut bounded.kind {
            *failure = Some(Condition::above(2.0));
        }
        let judged = MetricCheck::judgement(
            "judgement",
            JudgementSpec::builder()
                .metrics(vec![
                    JudgedMetric::builder().name("latency").query("p99").build(),
                    JudgedMetric::builder()
                        .name("throughput")
                        .query("rps")
                        .bad(BadDirection::Decrease)
                        .weight(2.5)
                        .critical(true)
                        .build(),
                ])
                .range(Duration::from_millis(120_500))
                .build(),
        )
        .build()
        .unwrap();
        let background = AnalysisSpec::new(vec![threshold.clone()]).unwrap();
        let pre_promotion = AnalysisSpec::new(vec![judged.clone()]).unwrap();
        let analysis = AnalysisSpec::new(vec![threshold, bounded, judged]).unwrap();
        let canary = CanarySpec::builder()
            .steps(vec![
                CanaryStep::weight(10).unwrap(),
                CanaryStep::pause(Duration::from_millis(1_500)),
                CanaryStep::approval(),
                CanaryStep::analysis(analysis),
                CanaryStep::SetCanaryScale {
                    scale: CanaryScale::Replicas(2),
                },
                CanaryStep::SetCanaryScale {
                    scale: CanaryScale::Percent(50),
                },
                CanaryStep::SetCanaryScale {
                    scale: CanaryScale::MatchWeight,
                },
                CanaryStep::SetHeaderRoute {
                    name: "x-canary".into(),
                    value: "1".into(),
                },
                CanaryStep::SetMirror {
                    percent: Weight::new(5).unwrap(),
                },
            ])
            .background_analysis(background)
            .scale_down_delay(Duration::from_secs(45))
            .build()
            .unwrap();
        let blue_green = BlueGreenSpec::builder()
            .auto_promote(false)
            .auto_promotion_delay(Duration::from_secs(5))
            .pre_promotion_analysis(pre_promotion)
            .build()
            .unwrap();
        let rolling = RollingSpec {
            max_surge: Quantity::Percent(25),
            max_unavailable: Quantity::Count(1),
            fail_fast_after: 2,
        };
        [
            StrategySpec::Canary(canary),
            StrategySpec::BlueGreen(blue_green),
            StrategySpec::Rolling(rolling),
            StrategySpec::default(),
        ]
    }

    /// Journals store strategy specs (in each deployment's first entry): their serialised form
    /// is the journal format, which journals already written must keep being read in.
    #[test]
    fn the_journal_form_of_strategy_specs_does_not_change() {
        let expected = [
            concat!(
                r#"{"type":"canary","steps":[{"type":"set_weight","weight":10},{"type":"pause","#,
                r#""duration_ms":1500},{"type":"pause","duration_ms":null},{"type":"analysis","#,
                r#""analysis":{"metrics":[{"name":"error-rate","kind":{"type":"threshold","#,
                r#""query":"error_rate","success":{"op":"lt","threshold":0.05},"failure":null},"#,
                r#""interval_ms":60000,"count":3,"failure_limit":1,"inconclusive_limit":0,"#,
                r#""consecutive_error_limit":4,"min_samples":{"query":"requests[1m]","count":100}},"#,
                r#"{"name":"p99","kind":{"type":"threshold","query":"p99","success":{"op":"gt","#,
                r#""threshold":0.5},"failure":{"op":"gt","threshold":2.0}},"interval_ms":null,"#,
                r#""count":null,"failure_limit":0,"inconclusive_limit":0,"#,
                r#""consecutive_error_limit":4},{"name":"judgement","kind":{"type":"judgement","#,
                r#""metrics":[{"name":"latency","query":"p99","bad":"increase","weight":1.0,"#,
                r#""critical":false},{"name":"throughput","query":"rps","bad":"decrease","#,
                r#""weight":2.5,"critical":true}],"range_ms":120500,"confidence":0.98,"#,
                r#""pass_score":95.0,"marginal_score":75.0},"interval_ms":null,"count":null,"#,
                r#""failure_limit":0,"inconclusive_limit":0,"consecutive_error_limit":4}]}},"#,
                r#"{"type":"set_canary_scale","scale":{"replicas":2}},{"type":"set_canary_scale","#,
                r#""scale":{"percent":50}},{"type":"set_canary_scale","scale":"match_weight"},"#,
                r#"{"type":"set_header_route","name":"x-canary","value":"1"},{"type":"set_mirror","#,
                r#""percent":5}],"background_analysis":{"metrics":[{"name":"error-rate","#,
                r#""kind":{"type":"threshold","query":"error_rate","success":{"op":"lt","#,
                r#""threshold":0.05},"failure":null},"interval_ms":60000,"count":3,"failure_limit":1,"#,
                r#""inconclusive_limit":0,"consecutive_error_limit":4,"#,
                r#""min_samples":{"query":"requests[1m]","count":100}}]},"scale_down_delay_ms":45000}"#,
            ),
            concat!(
                r#"{"type":"blue_green","auto_promote":false,"auto_promotion_delay_ms":5000,"#,
                r#""scale_down_delay_ms":30000,"#,
                r#""pre_promotion_analysis":{"metrics":[{"name":"judgement","#,
                r#""kind":{"type":"judgement","metrics":[{"name":"latency","query":"p99","#,
                r#""bad":"increase","weight":1.0,"critical":false},{"name":"throughput","#,
                r#""query":"rps","bad":"decrease","weight":2.5,"critical":true}],"range_ms":120500,"#,
                r#""confidence":0.98,"pass_score":95.0,"marginal_score":75.0},"interval_ms":null,"#,
                r#""count":null,"failure_limit":0,"inconclusive_limit":0,"#,
                r#""consecutive_error_limit":4}]}}"#,
            ),
            concat!(
                r#"{"type":"rolling","max_surge":{"percent":25},"max_unavailable":{"count":1},"#,
                r#""fail_fast_after":2}"#,
            ),
            concat!(
                r#"{"type":"rolling","max_surge":{"percent":25},"max_unavailable":{"percent":25},"#,
                r#""fail_fast_after":3}"#,
            ),
        ];
        for (spec, json) in specs().iter().zip(expected) {
            assert_eq!(serde_json::to_string(spec).unwrap(), json);
            assert_eq!(&serde_json::from_str::<StrategySpec>(json).unwrap(), spec);
        }
    }
}
