//! How requests reach a service's instances: the protocol the instances speak, and the limits
//! that protect them and their callers (timeouts, retries within a budget, circuit breaking,
//! rate limiting). The router of an environment enforces it: the local proxy does all of it;
//! see each environment's documentation for what its router supports.

use std::time::Duration;

use serde::{Deserialize, Serialize};
use typed_builder::TypedBuilder;

use crate::error::{Error, Result};
use crate::time::{HOUR, duration_ms, option_duration_ms};
use crate::validate::check_duration;

/// The protocol a service's instances speak on their port.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum Protocol {
    /// HTTP/1.1 (the default). Clients may still speak HTTP/2 to the router.
    #[default]
    Http,
    /// HTTP/2 without TLS, by prior knowledge ("h2c"), as gRPC servers and many Go and Rust
    /// servers speak it.
    H2c,
    /// gRPC: HTTP/2 without TLS to the instances, trailers passed through.
    Grpc,
}

impl Protocol {
    /// Whether the instances are spoken to in HTTP/2.
    pub fn is_http2(self) -> bool {
        matches!(self, Protocol::H2c | Protocol::Grpc)
    }

    /// The name used in files and manifests: `http`, `h2c`, `grpc`.
    pub fn as_str(self) -> &'static str {
        match self {
            Protocol::Http => "http",
            Protocol::H2c => "h2c",
            Protocol::Grpc => "grpc",
        }
    }
}

/// The traffic policy of a service: the protocol its instances speak, and the limits that
/// protect them and their callers, enforced by the environment's router (the local proxy
/// does all of it). The default is plain HTTP with the router's own timeouts, one retry after
/// a failed connection, and no limits.
///
/// ```
/// use std::time::Duration;
/// use deploykit_core::{CircuitBreaker, Protocol, RateLimit, Retries, TrafficPolicy};
///
/// let policy = TrafficPolicy::builder()
///     .protocol(Protocol::Grpc)
///     .timeout(Duration::from_secs(5))
///     .retries(Retries::builder().attempts(2).per_try_timeout(Duration::from_secs(1)).build())
///     .circuit_breaker(CircuitBreaker::builder().consecutive_failures(3).build())
///     .rate_limit(RateLimit::builder().per_second(200).build())
///     .build()?;
/// assert_eq!(policy.retries.unwrap().budget_percent, 20);
///
/// let err = TrafficPolicy::builder()
///     .retries(Retries::builder().attempts(50).build())
///     .build()
///     .unwrap_err();
/// assert!(err.to_string().contains("traffic.retries.attempts"));
/// # Ok::<(), deploykit_core::Error>(())
/// ```
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, TypedBuilder)]
#[serde(remote = "Self")]
#[builder(build_method(into = Result<TrafficPolicy>))]
#[non_exhaustive]
pub struct TrafficPolicy {
    /// What the instances speak (default HTTP/1.1).
    #[builder(default)]
    #[serde(default)]
    pub protocol: Protocol,
    /// How long a request may wait for its response headers, retries included (default: the
    /// router's own limit; 60 s for the local proxy). 1 ms to 1 h.
    #[builder(default, setter(strip_option))]
    #[serde(
        default,
        with = "option_duration_ms",
        rename = "timeout_ms",
        skip_serializing_if = "Option::is_none"
    )]
    pub timeout: Option<Duration>,
    /// Retries of failed requests (default: one retry on another instance, only after a
    /// connection that failed before sending anything).
    #[builder(default, setter(strip_option))]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retries: Option<Retries>,
    /// Instances taken out of rotation after consecutive failures, and a cap on requests in
    /// flight (default: none).
    #[builder(default, setter(strip_option))]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub circuit_breaker: Option<CircuitBreaker>,
    /// A limit on the rate of requests to the service (default: none).
    #[builder(default, setter(strip_option))]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate_limit: Option<RateLimit>,
}

crate::validate::validated_serde!(TrafficPolicy, |p| p.validate("traffic"));

impl From<TrafficPolicy> for Result<TrafficPolicy> {
    fn from(policy: TrafficPolicy) -> Self {
        policy.validate("traffic")?;
        Ok(policy)
    }
}

/// Most retries of one request.
pub const MAX_RETRIES: u32 = 10;

impl TrafficPolicy {
    /// Whether this is the default policy (nothing set).
    pub fn is_default(&self) -> bool {
        *self == TrafficPolicy::default()
    }

    /// Checks the policy; errors name the field under `path` (`service.traffic.timeout`).
    pub fn validate(&self, path: &str) -> Result<()> {
        let ms = Duration::from_millis(1);
        if let Some(timeout) = self.timeout {
            check_duration(&format!("{path}.timeout"), timeout, ms, HOUR)?;
        }
        if let Some(r) = &self.retries {
            let at = |field: &str| format!("{path}.retries.{field}");
            if r.attempts == 0 || r.attempts > MAX_RETRIES {
                return Err(Error::invalid(
                    at("attempts"),
                    format!(
                        "{} is outside 1 to {MAX_RETRIES} (retries after the first attempt)",
                        r.attempts
                    ),
                ));
            }
            if let Some(per_try) = r.per_try_timeout {
                check_duration(&at("per_try_timeout"), per_try, ms, HOUR)?;
                if let Some(timeout) = self.timeout
                    && per_try > timeout
                {
                    return Err(Error::invalid(
                        at("per_try_timeout"),
                        format!(
                            "{} is longer than the request's timeout ({}): no retry could \
                             ever start",
                            humantime::format_duration(per_try),
                            humantime::format_duration(timeout)
                        ),
                    ));
                }
            }
            for (i, status) in r.on_status.iter().enumerate() {
                if !(500..=599).contains(status) {
                    return Err(Error::invalid(
                        format!("{path}.retries.on_status[{i}]"),
                        format!("{status} is not a 5xx status: only server errors are retried"),
                    ));
                }
            }
            if r.budget_percent > 100 {
                return Err(Error::invalid(
                    at("budget_percent"),
                    format!("{} is outside 0 to 100", r.budget_percent),
                ));
            }
            if r.min_per_second > 10_000 {
                return Err(Error::invalid(
                    at("min_per_second"),
                    format!("{} is outside 0 to 10000", r.min_per_second),
                ));
            }
        }
        if let Some(c) = &self.circuit_breaker {
            let at = |field: &str| format!("{path}.circuit_breaker.{field}");
            if c.consecutive_failures == 0 || c.consecutive_failures > 10_000 {
                return Err(Error::invalid(
                    at("consecutive_failures"),
                    format!("{} is outside 1 to 10000", c.consecutive_failures),
                ));
            }
            check_duration(&at("ejection"), c.ejection, Duration::from_secs(1), HOUR)?;
            if c.max_requests == Some(0) {
                return Err(Error::invalid(
                    at("max_requests"),
                    "0 would refuse every request; leave it out for no limit",
                ));
            }
        }
        if let Some(l) = &self.rate_limit {
            let at = |field: &str| format!("{path}.rate_limit.{field}");
            if l.per_second == 0 || l.per_second > 1_000_000 {
                return Err(Error::invalid(
                    at("per_second"),
                    format!("{} is outside 1 to 1000000", l.per_second),
                ));
            }
            if l.burst == Some(0) || l.burst.is_some_and(|b| b > 10_000_000) {
                return Err(Error::invalid(
                    at("burst"),
                    format!("{} is outside 1 to 10000000", l.burst.unwrap_or_default()),
                ));
            }
        }
        Ok(())
    }
}

/// Retries of failed requests, within a budget, as Linkerd and Finagle bound them: retries may
/// add at most `budget_percent` % to the requests, plus `min_per_second` each second, so that
/// retries cannot multiply the load on a service that is already failing.
///
/// A request is retried on another instance of the same revision when possible, only when
/// its body was small enough to be kept (64 KiB), and:
/// - after a connection that failed before anything was sent (any method);
/// - for idempotent methods (GET, HEAD, OPTIONS, PUT, DELETE): after a reset before the
///   answer, an answer with a status in `on_status`, or no answer within `per_try_timeout`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, TypedBuilder)]
#[serde(default)]
#[non_exhaustive]
pub struct Retries {
    /// Retries after the first attempt (default 2; 1 to [`MAX_RETRIES`]).
    #[builder(default = 2)]
    pub attempts: u32,
    /// Time one attempt may wait for its answer before it is abandoned for a retry (default:
    /// none, only the policy's timeout).
    #[builder(default, setter(strip_option))]
    #[serde(
        with = "option_duration_ms",
        rename = "per_try_timeout_ms",
        skip_serializing_if = "Option::is_none"
    )]
    pub per_try_timeout: Option<Duration>,
    /// Statuses retried (default 502, 503, 504).
    #[builder(default = vec![502, 503, 504])]
    pub on_status: Vec<u16>,
    /// Retries allowed as a share of requests, in percent (default 20).
    #[builder(default = 20)]
    pub budget_percent: u32,
    /// Retries allowed each second whatever the number of requests (default 10).
    #[builder(default = 10)]
    pub min_per_second: u32,
}

impl Default for Retries {
    fn default() -> Self {
        Retries::builder().build()
    }
}

/// Circuit breaking, as Envoy's outlier detection and circuit breakers do it: an instance
/// that fails `consecutive_failures` times in a row (a connection that fails, a reset, a 5xx
/// answer, no answer in time) gets no request for `ejection`; after that one more failure
/// takes it out again. The instances of a revision are never all taken out: when every one is,
/// they all serve again. `max_requests` caps the requests in flight to a revision: one more is
/// answered 503 at once rather than queued.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, TypedBuilder)]
#[serde(default)]
#[non_exhaustive]
pub struct CircuitBreaker {
    /// Failures in a row that take an instance out (default 5).
    #[builder(default = 5)]
    pub consecutive_failures: u32,
    /// How long an instance stays out (default 30 s; 1 s to 1 h).
    #[builder(default = Duration::from_secs(30))]
    #[serde(with = "duration_ms", rename = "ejection_ms")]
    pub ejection: Duration,
    /// Requests in flight to one revision at most (default: no cap).
    #[builder(default, setter(strip_option))]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_requests: Option<u32>,
}

impl Default for CircuitBreaker {
    fn default() -> Self {
        CircuitBreaker::builder().build()
    }
}

/// A token bucket over the requests to a service: `per_second` on average, `burst` at once
/// (default: `per_second`). A request over the limit is answered 429 with `Retry-After`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, TypedBuilder)]
#[serde(default)]
#[non_exhaustive]
pub struct RateLimit {
    /// Requests per second, on average (1 to 1,000,000; default 100).
    #[builder(default = 100)]
    pub per_second: u32,
    /// Requests let through at once after a quiet time (default: `per_second`).
    #[builder(default, setter(strip_option))]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub burst: Option<u32>,
}

impl Default for RateLimit {
    fn default() -> Self {
        RateLimit::builder().build()
    }
}

impl RateLimit {
    /// The bucket's size: `burst`, or `per_second` without one.
    pub fn bucket(&self) -> u32 {
        self.burst.unwrap_or(self.per_second)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn field_of(err: Error) -> String {
        match err {
            Error::InvalidSpec { field, .. } => field,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn bad_values_name_their_field() {
        let cases = [
            (
                TrafficPolicy::builder().timeout(Duration::ZERO).build(),
                "traffic.timeout",
            ),
            (
                TrafficPolicy::builder()
                    .retries(Retries::builder().attempts(0).build())
                    .build(),
                "traffic.retries.attempts",
            ),
            (
                TrafficPolicy::builder()
                    .timeout(Duration::from_secs(1))
                    .retries(
                        Retries::builder()
                            .per_try_timeout(Duration::from_secs(2))
                            .build(),
                    )
                    .build(),
                "traffic.retries.per_try_timeout",
            ),
            (
                TrafficPolicy::builder()
                    .retries(Retries::builder().on_status(vec![503, 404]).build())
                    .build(),
                "traffic.retries.on_status[1]",
            ),
            (
                TrafficPolicy::builder()
                    .retries(Retries::builder().budget_percent(101).build())
                    .build(),
                "traffic.retries.budget_percent",
            ),
            (
                TrafficPolicy::builder()
                    .circuit_breaker(
                        CircuitBreaker::builder()
                            .ejection(Duration::from_millis(10))
                            .build(),
                    )
                    .build(),
                "traffic.circuit_breaker.ejection",
            ),
            (
                TrafficPolicy::builder()
                    .circuit_breaker(CircuitBreaker::builder().max_requests(0).build())
                    .build(),
                "traffic.circuit_breaker.max_requests",
            ),
            (
                TrafficPolicy::builder()
                    .rate_limit(RateLimit::builder().per_second(0).build())
                    .build(),
                "traffic.rate_limit.per_second",
            ),
            (
                TrafficPolicy::builder()
                    .rate_limit(RateLimit::builder().burst(0).build())
                    .build(),
                "traffic.rate_limit.burst",
            ),
        ];
        for (built, field) in cases {
            assert_eq!(field_of(built.unwrap_err()), field);
        }
    }

    #[test]
    fn a_policy_survives_the_journal_and_bad_ones_do_not_load() {
        let policy = TrafficPolicy::builder()
            .protocol(Protocol::Grpc)
            .timeout(Duration::from_millis(2500))
            .retries(Retries::default())
            .circuit_breaker(CircuitBreaker::builder().max_requests(64).build())
            .rate_limit(RateLimit::builder().per_second(5).burst(10).build())
            .build()
            .unwrap();
        let json = serde_json::to_string(&policy).unwrap();
        assert_eq!(
            serde_json::from_str::<TrafficPolicy>(&json).unwrap(),
            policy
        );
        assert_eq!(
            serde_json::to_string(&TrafficPolicy::default()).unwrap(),
            r#"{"protocol":"http"}"#
        );
        let bad = json.replace("\"attempts\":2", "\"attempts\":0");
        let err = serde_json::from_str::<TrafficPolicy>(&bad).unwrap_err();
        assert!(
            err.to_string().contains("traffic.retries.attempts"),
            "{err}"
        );
    }
}
