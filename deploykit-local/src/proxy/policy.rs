//! The run-time side of a [`TrafficPolicy`]: each instance's in-flight count and circuit
//! breaker, each revision's retry budget, each route's rate limiter. Their state outlives
//! routing tables (a table is swapped at every readiness change): it is kept in registries
//! keyed by instance id, by host and revision, and by host, and attached to each new table.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use deploykit_core::{CircuitBreaker, RateLimit, Retries};
use tokio::time::Instant;

use super::lock;

/// What the proxy tracks of one instance: the requests it serves now, and its breaker.
#[derive(Default)]
pub(super) struct UpstreamState {
    pub(super) in_flight: AtomicUsize,
    breaker: Mutex<Breaker>,
}

#[derive(Default)]
struct Breaker {
    /// Failures in a row.
    failures: u32,
    /// Out of rotation until then.
    ejected_until: Option<Instant>,
    /// Times taken out since the proxy started.
    ejections: u64,
}

impl UpstreamState {
    /// Whether the instance is out of rotation at `now`.
    pub(super) fn ejected(&self, now: Instant) -> bool {
        lock(&self.breaker).ejected_until.is_some_and(|t| now < t)
    }

    /// Times the instance was taken out of rotation.
    pub(super) fn ejections(&self) -> u64 {
        lock(&self.breaker).ejections
    }

    /// Counts the outcome of one attempt under `policy`: a failure in a row too many takes the
    /// instance out for the ejection time; after that, one more failure takes it out again.
    pub(super) fn record(&self, failed: bool, policy: Option<&CircuitBreaker>) {
        let Some(policy) = policy else { return };
        let mut breaker = lock(&self.breaker);
        if !failed {
            breaker.failures = 0;
            return;
        }
        let now = Instant::now();
        if breaker.ejected_until.is_some_and(|t| now < t) {
            // Failures of requests sent before it was taken out.
            return;
        }
        breaker.failures = breaker.failures.saturating_add(1);
        if breaker.failures >= policy.consecutive_failures {
            breaker.ejected_until = Some(now + policy.ejection);
            breaker.ejections += 1;
            // Back in rotation, one failure takes it out again (half open).
            breaker.failures = policy.consecutive_failures - 1;
        }
    }
}

/// A retry budget: a token per `100 / budget_percent` requests, plus `min_per_second` tokens
/// a second, spent one per retry; at most ten seconds' worth are kept.
pub(super) struct RetryBudget {
    retries: Retries,
    state: Mutex<(f64, Instant)>,
}

impl RetryBudget {
    fn new(retries: &Retries) -> Self {
        RetryBudget {
            retries: retries.clone(),
            state: Mutex::new((f64::from(retries.min_per_second), Instant::now())),
        }
    }

    fn cap(&self) -> f64 {
        10.0 * f64::from(self.retries.min_per_second) + f64::from(self.retries.budget_percent)
    }

    fn refill(&self, state: &mut (f64, Instant)) {
        let now = Instant::now();
        let elapsed = now.duration_since(state.1).as_secs_f64();
        state.0 = (state.0 + elapsed * f64::from(self.retries.min_per_second)).min(self.cap());
        state.1 = now;
    }

    /// Counts one request.
    pub(super) fn deposit(&self) {
        let mut state = lock(&self.state);
        self.refill(&mut state);
        state.0 = (state.0 + f64::from(self.retries.budget_percent) / 100.0).min(self.cap());
    }

    /// Takes a token for one retry: `false` when the budget is spent.
    pub(super) fn withdraw(&self) -> bool {
        let mut state = lock(&self.state);
        self.refill(&mut state);
        if state.0 >= 1.0 {
            state.0 -= 1.0;
            true
        } else {
            false
        }
    }
}

/// A token bucket of `bucket` requests, refilled at `per_second`.
pub(super) struct RateLimiter {
    limit: RateLimit,
    state: Mutex<(f64, Instant)>,
}

impl RateLimiter {
    fn new(limit: &RateLimit) -> Self {
        RateLimiter {
            limit: limit.clone(),
            state: Mutex::new((f64::from(limit.bucket()), Instant::now())),
        }
    }

    /// Lets one request through, or says how long until one would be.
    pub(super) fn admit(&self) -> Result<(), Duration> {
        let mut state = lock(&self.state);
        let now = Instant::now();
        let rate = f64::from(self.limit.per_second);
        let elapsed = now.duration_since(state.1).as_secs_f64();
        state.0 = (state.0 + elapsed * rate).min(f64::from(self.limit.bucket()));
        state.1 = now;
        if state.0 >= 1.0 {
            state.0 -= 1.0;
            Ok(())
        } else {
            Err(Duration::from_secs_f64((1.0 - state.0) / rate))
        }
    }
}

/// The registries the routing tables take their run-time state from.
#[derive(Default)]
pub(super) struct Registries {
    /// Instance id → its state.
    pub(super) upstreams: HashMap<String, Arc<UpstreamState>>,
    /// (host, revision) → its retry budget.
    budgets: HashMap<(String, String), Arc<RetryBudget>>,
    /// Host → its rate limiter.
    limiters: HashMap<String, Arc<RateLimiter>>,
}

impl Registries {
    /// The state of instance `id`.
    pub(super) fn upstream(&mut self, id: &str) -> Arc<UpstreamState> {
        self.upstreams.entry(id.to_owned()).or_default().clone()
    }

    /// The retry budget of revision `group` on `host` under `retries`: the one in use if its
    /// settings are the same, else a new one.
    pub(super) fn budget(
        &mut self,
        host: &str,
        group: &str,
        retries: &Retries,
    ) -> Arc<RetryBudget> {
        let key = (host.to_owned(), group.to_owned());
        match self.budgets.get(&key) {
            Some(budget) if budget.retries == *retries => budget.clone(),
            _ => {
                let budget = Arc::new(RetryBudget::new(retries));
                self.budgets.insert(key, budget.clone());
                budget
            }
        }
    }

    /// The rate limiter of `host` under `limit`, kept while its settings are the same.
    pub(super) fn limiter(&mut self, host: &str, limit: &RateLimit) -> Arc<RateLimiter> {
        match self.limiters.get(host) {
            Some(limiter) if limiter.limit == *limit => limiter.clone(),
            _ => {
                let limiter = Arc::new(RateLimiter::new(limit));
                self.limiters.insert(host.to_owned(), limiter.clone());
                limiter
            }
        }
    }

    /// Forgets what the table just compiled does not use: instances that left it and serve
    /// nothing, budgets and limiters of routes and revisions that left it.
    pub(super) fn retain(
        &mut self,
        upstreams: &[&str],
        budgets: &[(String, String)],
        hosts: &[&str],
    ) {
        self.upstreams.retain(|id, state| {
            upstreams.contains(&id.as_str()) || state.in_flight.load(Ordering::SeqCst) > 0
        });
        self.budgets.retain(|key, _| budgets.contains(key));
        self.limiters
            .retain(|host, _| hosts.contains(&host.as_str()));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_breaker_ejects_after_failures_in_a_row_and_again_after_one_more() {
        let policy = CircuitBreaker::builder()
            .consecutive_failures(3)
            .ejection(Duration::from_secs(10))
            .build();
        let state = UpstreamState::default();
        state.record(true, Some(&policy));
        state.record(true, Some(&policy));
        state.record(false, Some(&policy));
        state.record(true, Some(&policy));
        state.record(true, Some(&policy));
        assert!(!state.ejected(Instant::now()), "a success breaks the run");
        state.record(true, Some(&policy));
        assert!(state.ejected(Instant::now()));
        tokio::time::advance(Duration::from_secs(10)).await;
        assert!(!state.ejected(Instant::now()));
        state.record(true, Some(&policy));
        assert!(state.ejected(Instant::now()), "half open: one failure");
        assert_eq!(state.ejections(), 2);
        state.record(true, None);
        let free = UpstreamState::default();
        for _ in 0..100 {
            free.record(true, None);
        }
        assert!(!free.ejected(Instant::now()), "no policy, no breaker");
    }

    #[tokio::test(start_paused = true)]
    async fn retries_stay_within_the_budget() {
        let retries = Retries::builder()
            .budget_percent(20)
            .min_per_second(0)
            .build();
        let budget = RetryBudget::new(&retries);
        let mut granted = 0;
        for _ in 0..1000 {
            budget.deposit();
            if budget.withdraw() {
                granted += 1;
            }
        }
        assert_eq!(granted, 200, "20 % of 1000 requests");
        let floor = RetryBudget::new(
            &Retries::builder()
                .budget_percent(0)
                .min_per_second(5)
                .build(),
        );
        let mut granted = 0;
        for _ in 0..10 {
            tokio::time::advance(Duration::from_secs(1)).await;
            while floor.withdraw() {
                granted += 1;
            }
        }
        // Five at the start, then five a second.
        assert_eq!(granted, 55);
    }

    #[tokio::test(start_paused = true)]
    async fn the_rate_limiter_lets_a_burst_then_the_rate_through() {
        let limiter = RateLimiter::new(&RateLimit::builder().per_second(10).burst(5).build());
        for _ in 0..5 {
            assert!(limiter.admit().is_ok());
        }
        let wait = limiter.admit().unwrap_err();
        assert!(wait <= Duration::from_millis(100), "{wait:?}");
        tokio::time::advance(Duration::from_millis(100)).await;
        assert!(limiter.admit().is_ok());
        assert!(limiter.admit().is_err());
        tokio::time::advance(Duration::from_secs(60)).await;
        let admitted = (0..100).filter(|_| limiter.admit().is_ok()).count();
        assert_eq!(admitted, 5, "a quiet minute refills the bucket, not more");
    }
}
