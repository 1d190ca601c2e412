//! `[services.<name>.traffic]`: the protocol a service speaks and the limits its router
//! enforces (timeout, retries within a budget, circuit breaking, rate limit).
//!
//! ```toml
//! [services.api.traffic]
//! protocol = "grpc"                 # "http" (default), "h2c" or "grpc"
//! timeout = "5s"
//! retries = { attempts = 2, per_try_timeout = "1s", on_status = [503], budget_percent = 20 }
//! circuit_breaker = { consecutive_failures = 5, ejection = "30s", max_requests = 200 }
//! rate_limit = { per_second = 100, burst = 200 }
//! ```

use std::ops::Range;

use serde::Deserialize;
use toml::Spanned;

use super::{Located, duration};
use deploykit_core::model::{CircuitBreaker, Protocol, RateLimit, Retries, TrafficPolicy};
use deploykit_core::{Error, Result};

/// The table as written.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct TrafficToml {
    protocol: Option<Protocol>,
    timeout: Option<Spanned<String>>,
    retries: Option<Spanned<RetriesToml>>,
    circuit_breaker: Option<Spanned<BreakerToml>>,
    rate_limit: Option<Spanned<RateLimitToml>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RetriesToml {
    attempts: Option<u32>,
    per_try_timeout: Option<Spanned<String>>,
    on_status: Option<Vec<u16>>,
    budget_percent: Option<u32>,
    min_per_second: Option<u32>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct BreakerToml {
    consecutive_failures: Option<u32>,
    ejection: Option<Spanned<String>>,
    max_requests: Option<u32>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RateLimitToml {
    per_second: u32,
    burst: Option<u32>,
}

/// The policy `t` describes, at `path` (`services.api.traffic`), checked as the core checks
/// it; an error names the file, line and key.
pub(crate) fn policy(
    at: &Located<'_>,
    path: &str,
    t: &Spanned<TrafficToml>,
) -> Result<TrafficPolicy> {
    let table = t.get_ref();
    let mut policy = TrafficPolicy::default();
    policy.protocol = table.protocol.unwrap_or_default();
    if let Some(timeout) = &table.timeout {
        let field = format!("{path}.timeout");
        policy.timeout = Some(duration(at, timeout.span(), &field, timeout.get_ref())?);
    }
    if let Some(r) = &table.retries {
        let written = r.get_ref();
        let mut retries = Retries::default();
        retries.attempts = written.attempts.unwrap_or(retries.attempts);
        if let Some(d) = &written.per_try_timeout {
            let field = format!("{path}.retries.per_try_timeout");
            retries.per_try_timeout = Some(duration(at, d.span(), &field, d.get_ref())?);
        }
        if let Some(on_status) = &written.on_status {
            retries.on_status.clone_from(on_status);
        }
        retries.budget_percent = written.budget_percent.unwrap_or(retries.budget_percent);
        retries.min_per_second = written.min_per_second.unwrap_or(retries.min_per_second);
        policy.retries = Some(retries);
    }
    if let Some(b) = &table.circuit_breaker {
        let written = b.get_ref();
        let mut breaker = CircuitBreaker::default();
        breaker.consecutive_failures = written
            .consecutive_failures
            .unwrap_or(breaker.consecutive_failures);
        if let Some(d) = &written.ejection {
            let field = format!("{path}.circuit_breaker.ejection");
            breaker.ejection = duration(at, d.span(), &field, d.get_ref())?;
        }
        breaker.max_requests = written.max_requests;
        policy.circuit_breaker = Some(breaker);
    }
    if let Some(l) = &table.rate_limit {
        let written = l.get_ref();
        let mut limit = RateLimit::default();
        limit.per_second = written.per_second;
        limit.burst = written.burst;
        policy.rate_limit = Some(limit);
    }
    policy.validate(path).map_err(|e| match e {
        Error::InvalidSpec { field, reason } => at.error(span_of(t, path, &field), &field, reason),
        other => other,
    })?;
    Ok(policy)
}

/// Where the key the core names as `field` is written: its sub-table, or the whole table.
fn span_of(t: &Spanned<TrafficToml>, path: &str, field: &str) -> Range<usize> {
    let table = t.get_ref();
    let key = field
        .strip_prefix(path)
        .and_then(|rest| rest.strip_prefix('.'))
        .unwrap_or_default();
    let section = key.split(['.', '[']).next().unwrap_or_default();
    match section {
        "timeout" => table.timeout.as_ref().map(Spanned::span),
        "retries" => table.retries.as_ref().map(Spanned::span),
        "circuit_breaker" => table.circuit_breaker.as_ref().map(Spanned::span),
        "rate_limit" => table.rate_limit.as_ref().map(Spanned::span),
        _ => None,
    }
    .unwrap_or_else(|| t.span())
}
