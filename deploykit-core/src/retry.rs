//! One way to retry, for the whole workspace: a [`RetryPolicy`] (how long to wait and how often
//! to try), a [`Backoff`] (the delays it gives), one loop ([`RetryPolicy::run`]) and a
//! [`Retry`] verdict that each backend gives for its own errors — the one place it decides
//! what is worth trying again.
//!
//! When a policy is used up the loop says so ([`RetryError::gave_up`]), and
//! [`RetryError::into_error`] makes that an [`Error::Persistent`]: still worth trying later,
//! but not at once, since whoever ran the loop already has. The orchestrator therefore does not
//! spin its own fast retries on it.
//!
//! ```
//! use std::time::Duration;
//! use deploykit_core::retry::{Retry, RetryPolicy};
//! # async fn demo() -> deploykit_core::Result<()> {
//! let policy = RetryPolicy::default()
//!     .with_backoff(Duration::from_millis(50), Duration::from_secs(2))?
//!     .with_max_attempts(4)?;
//! let mut calls = 0;
//! let answer = policy
//!     .run("fetch the answer", |e: &String| if e == "busy" { Retry::Yes } else { Retry::No }, || {
//!         calls += 1;
//!         let result = if calls < 3 { Err("busy".to_string()) } else { Ok(42) };
//!         async move { result }
//!     })
//!     .await
//!     .map_err(|e| e.into_error("fetch the answer", |e| deploykit_core::Error::backend("fetch", e)))?;
//! assert_eq!(answer, 42);
//! # Ok(()) }
//! ```

use std::collections::HashMap;
use std::fmt;
use std::future::Future;
use std::hash::{BuildHasher, Hasher};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::time::Instant;

use crate::error::{BoxError, Error, Result};

/// How often a read-decide-write that lost a compare-and-swap to another writer is run in all
/// (re-reading each time, with no wait) before [`on_conflict`] returns the conflict.
pub const CONFLICT_ATTEMPTS: u32 = 20;

/// How failed operations are retried: exponential backoff from `initial_backoff`, multiplied
/// by `multiplier` per failure up to `max_backoff`, with full jitter (each wait uniformly
/// random between zero and the delay) unless turned off; at most `max_attempts` attempts and no
/// new attempt after `max_elapsed`.
///
/// Every setter checks its value: a bad one is an [`Error::InvalidSpec`] naming the field
/// (`retry.multiplier`, ...), so a policy that exists is valid.
///
/// Defaults: 200 ms doubling up to 10 s, 6 attempts, 60 s, jitter on.
///
/// ```
/// use std::time::Duration;
/// use deploykit_core::retry::RetryPolicy;
/// let policy = RetryPolicy::default()
///     .with_backoff(Duration::from_millis(100), Duration::from_secs(5))?
///     .with_max_attempts(8)?
///     .with_max_elapsed(Duration::from_secs(30))?;
/// assert_eq!(policy.max_attempts(), 8);
/// assert!(RetryPolicy::default().with_multiplier(0.5).is_err());
/// assert_eq!(RetryPolicy::none().max_attempts(), 1);
/// # Ok::<(), deploykit_core::Error>(())
/// ```
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct RetryPolicy {
    initial_backoff: Duration,
    max_backoff: Duration,
    multiplier: f64,
    max_attempts: u32,
    max_elapsed: Duration,
    jitter: bool,
}

// The multiplier is never NaN (checked by its setter), so equality is an equivalence.
impl Eq for RetryPolicy {}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            initial_backoff: Duration::from_millis(200),
            max_backoff: Duration::from_secs(10),
            multiplier: 2.0,
            max_attempts: 6,
            max_elapsed: Duration::from_secs(60),
            jitter: true,
        }
    }
}

impl RetryPolicy {
    /// No retries: every operation is attempted once.
    pub fn none() -> Self {
        RetryPolicy {
            max_attempts: 1,
            ..RetryPolicy::default()
        }
    }

    /// `attempts` attempts in all with no wait between them (for compare-and-swap conflicts).
    fn immediate(attempts: u32) -> Self {
        RetryPolicy {
            initial_backoff: Duration::ZERO,
            max_backoff: Duration::ZERO,
            multiplier: 1.0,
            max_attempts: attempts.max(1),
            max_elapsed: Duration::MAX,
            jitter: false,
        }
    }

    /// The delay after the first failure.
    pub fn initial_backoff(&self) -> Duration {
        self.initial_backoff
    }

    /// The longest delay between attempts (also the longest a server's `Retry-After` is
    /// waited).
    pub fn max_backoff(&self) -> Duration {
        self.max_backoff
    }

    /// The factor by which the delay grows per failure.
    pub fn multiplier(&self) -> f64 {
        self.multiplier
    }

    /// Attempts per operation, the first included.
    pub fn max_attempts(&self) -> u32 {
        self.max_attempts
    }

    /// No attempt starts once this long has passed since the first (an attempt under way is
    /// not cut short).
    pub fn max_elapsed(&self) -> Duration {
        self.max_elapsed
    }

    /// Whether waits are jittered.
    pub fn jitter(&self) -> bool {
        self.jitter
    }

    /// This policy with delays from `initial` growing up to `max`; `initial` may not exceed
    /// `max` (set both at once with this when both change).
    pub fn with_backoff(mut self, initial: Duration, max: Duration) -> Result<Self> {
        if initial > max {
            return Err(Error::invalid(
                "retry.initial_backoff",
                format!("{initial:?} is longer than retry.max_backoff {max:?}"),
            ));
        }
        self.initial_backoff = initial;
        self.max_backoff = max;
        Ok(self)
    }

    /// This policy with the first delay `initial` (at most the current `max_backoff`).
    pub fn with_initial_backoff(self, initial: Duration) -> Result<Self> {
        let max = self.max_backoff;
        self.with_backoff(initial, max)
    }

    /// This policy with the longest delay `max` (at least the current `initial_backoff`).
    pub fn with_max_backoff(self, max: Duration) -> Result<Self> {
        if max < self.initial_backoff {
            return Err(Error::invalid(
                "retry.max_backoff",
                format!(
                    "{max:?} is shorter than retry.initial_backoff {:?}",
                    self.initial_backoff
                ),
            ));
        }
        let initial = self.initial_backoff;
        self.with_backoff(initial, max)
    }

    /// This policy multiplying the delay by `multiplier` (finite, at least 1) per failure.
    pub fn with_multiplier(mut self, multiplier: f64) -> Result<Self> {
        if !multiplier.is_finite() || multiplier < 1.0 {
            return Err(Error::invalid(
                "retry.multiplier",
                format!("{multiplier} is not a finite number of at least 1"),
            ));
        }
        self.multiplier = multiplier;
        Ok(self)
    }

    /// This policy with at most `attempts` attempts per operation (at least 1: the first).
    pub fn with_max_attempts(mut self, attempts: u32) -> Result<Self> {
        if attempts == 0 {
            return Err(Error::invalid(
                "retry.max_attempts",
                "0 attempts would never run the operation; 1 means no retries",
            ));
        }
        self.max_attempts = attempts;
        Ok(self)
    }

    /// This policy starting no attempt once `budget` has passed since the first
    /// (`Duration::MAX` for no limit).
    pub fn with_max_elapsed(mut self, budget: Duration) -> Result<Self> {
        if budget.is_zero() {
            return Err(Error::invalid(
                "retry.max_elapsed",
                "a zero time budget would allow no retry; use RetryPolicy::none() for that",
            ));
        }
        self.max_elapsed = budget;
        Ok(self)
    }

    /// This policy with jittered waits or not (exact delays, e.g. for tests).
    #[must_use]
    pub fn with_jitter(mut self, jitter: bool) -> Self {
        self.jitter = jitter;
        self
    }

    /// Runs `op` until it succeeds, fails for good, or this policy is used up.
    ///
    /// After each failure `classify` says whether another attempt may help ([`Retry`]):
    /// [`Retry::No`] returns the error at once; otherwise the loop waits the [`Backoff`]'s next
    /// delay (at least what [`Retry::After`] asks, at most `max_backoff`) and tries again —
    /// unless that was the last attempt or the wait would pass `max_elapsed`, in which case it
    /// gives up ([`RetryError::gave_up`]). `what` names the operation in logs.
    pub async fn run<T, E, F, Fut>(
        &self,
        what: &str,
        classify: impl Fn(&E) -> Retry,
        op: F,
    ) -> Result<T, RetryError<E>>
    where
        E: fmt::Display,
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, E>>,
    {
        let mut backoff = Backoff::new(self);
        attempt_loop(self, &mut backoff, None, what, classify, op).await
    }
}

/// Whether a failed attempt is worth another: the verdict each backend gives for its own
/// errors, in one function per error type.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Retry {
    /// A permanent failure: trying again cannot help; it is returned at once.
    No,
    /// A temporary failure: try again after the backoff's next delay.
    Yes,
    /// A temporary failure, and the server asked for at least this wait (`Retry-After`): the
    /// wait is the longer of this and the backoff's delay, at most the policy's `max_backoff`.
    After(Duration),
}

/// The delays between attempts: `initial_backoff`, then multiplied per failure up to
/// `max_backoff`; with jitter, each delay drawn uniformly from zero to that ("full jitter"),
/// otherwise exactly that.
///
/// ```
/// use std::time::Duration;
/// use deploykit_core::retry::{Backoff, RetryPolicy};
/// let policy = RetryPolicy::default()
///     .with_backoff(Duration::from_millis(100), Duration::from_millis(500))?
///     .with_jitter(false);
/// let mut backoff = Backoff::new(&policy);
/// let delays: Vec<u128> = (0..4).map(|_| backoff.next_delay().as_millis()).collect();
/// assert_eq!(delays, [100, 200, 400, 500]);
/// # Ok::<(), deploykit_core::Error>(())
/// ```
#[derive(Clone, Debug)]
pub struct Backoff {
    initial: Duration,
    max: Duration,
    multiplier: f64,
    jitter: bool,
    /// The un-jittered delay after the last failure; `None` before the first and after a
    /// reset.
    current: Option<Duration>,
}

impl Backoff {
    /// A backoff at its start, with `policy`'s delays.
    pub fn new(policy: &RetryPolicy) -> Self {
        Backoff {
            initial: policy.initial_backoff,
            max: policy.max_backoff,
            multiplier: policy.multiplier,
            jitter: policy.jitter,
            current: None,
        }
    }

    /// The wait after one more failure.
    pub fn next_delay(&mut self) -> Duration {
        let next = match self.current {
            None => self.initial,
            Some(d) => Duration::try_from_secs_f64(d.as_secs_f64() * self.multiplier)
                .unwrap_or(self.max)
                .min(self.max),
        };
        self.current = Some(next);
        self.jittered(next)
    }

    /// The un-jittered delay after the last failure, if any since the start or last reset.
    pub fn current(&self) -> Option<Duration> {
        self.current
    }

    /// Back to the start: the next failure waits `initial_backoff` again.
    pub fn reset(&mut self) {
        self.current = None;
    }

    fn jittered(&self, d: Duration) -> Duration {
        if self.jitter { full_jitter(d) } else { d }
    }
}

/// A uniformly random duration in `[0, d]`, so that many clients backing off at once do not
/// retry in lockstep.
fn full_jitter(d: Duration) -> Duration {
    static DRAWS: AtomicU64 = AtomicU64::new(0);
    let nanos = d.as_nanos().min(u128::from(u64::MAX));
    if nanos == 0 {
        return Duration::ZERO;
    }
    // RandomState is randomly keyed per process (and re-keyed per instance): a good enough
    // source of jitter without a dependency on a random number generator.
    let mut h = std::hash::RandomState::new().build_hasher();
    h.write_u64(DRAWS.fetch_add(1, Ordering::Relaxed));
    let r = u128::from(h.finish()) % (nanos + 1);
    Duration::from_nanos(r as u64)
}

/// A retried operation that failed: its last error, how many attempts were made in how long,
/// and whether the policy was used up ([`RetryError::gave_up`]) or the error was permanent.
#[derive(Debug)]
pub struct RetryError<E> {
    error: E,
    attempts: u32,
    elapsed: Duration,
    gave_up: bool,
}

impl<E> RetryError<E> {
    /// The last attempt's error.
    pub fn error(&self) -> &E {
        &self.error
    }

    /// The last attempt's error, taken out.
    pub fn into_inner(self) -> E {
        self.error
    }

    /// Attempts made, the first included.
    pub fn attempts(&self) -> u32 {
        self.attempts
    }

    /// Time from the first attempt to giving up.
    pub fn elapsed(&self) -> Duration {
        self.elapsed
    }

    /// Whether the last error was worth retrying but the attempts or the time budget were
    /// used up (otherwise it was permanent and returned at once).
    pub fn gave_up(&self) -> bool {
        self.gave_up
    }

    /// deploykit's error for this failure: if the policy was used up, an
    /// [`Error::Persistent`] for `operation` with the last error as its source; otherwise what
    /// `permanent` makes of the last error.
    pub fn into_error(
        self,
        operation: impl Into<String>,
        permanent: impl FnOnce(E) -> Error,
    ) -> Error
    where
        E: Into<BoxError>,
    {
        if self.gave_up {
            Error::Persistent {
                operation: operation.into(),
                attempts: self.attempts,
                elapsed: self.elapsed,
                source: self.error.into(),
            }
        } else {
            permanent(self.error)
        }
    }
}

impl<E: fmt::Display> fmt::Display for RetryError<E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.gave_up {
            write!(
                f,
                "gave up after {} in {:.1?}: {}",
                crate::error::attempts(self.attempts),
                self.elapsed,
                self.error
            )
        } else {
            self.error.fmt(f)
        }
    }
}

impl Error {
    /// Whether a [retry loop](RetryPolicy::run) should try the operation again: only a
    /// [`Error::Transient`] failure. A conflict needs a re-read first (see [`on_conflict`]),
    /// and a persistent failure has been retried already.
    pub fn retry(&self) -> Retry {
        match self {
            Error::Transient { .. } => Retry::Yes,
            _ => Retry::No,
        }
    }
}

/// Runs `op` — a read, a decision and a conditional write — again at once each time it loses a
/// compare-and-swap to another writer (`conflicted` says which errors mean that), at most
/// [`CONFLICT_ATTEMPTS`] times in all; returns its first other result, or the last conflict.
/// `what` names the operation in logs.
pub async fn on_conflict<T, E, F, Fut>(
    what: &str,
    conflicted: impl Fn(&E) -> bool,
    op: F,
) -> Result<T, E>
where
    E: fmt::Display,
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, E>>,
{
    let classify = |e: &E| if conflicted(e) { Retry::Yes } else { Retry::No };
    RetryPolicy::immediate(CONFLICT_ATTEMPTS)
        .run(what, classify, op)
        .await
        .map_err(RetryError::into_inner)
}

/// A [`Backoff`] per key (an object, an endpoint), remembered across calls: a key that keeps
/// failing waits longer before each attempt, also before the first attempt of its next call,
/// until one success resets it. Keys never slow each other down.
#[derive(Debug)]
pub struct KeyedBackoff {
    policy: RetryPolicy,
    failing: Mutex<HashMap<String, Backoff>>,
}

impl KeyedBackoff {
    /// No key failing yet, under `policy`.
    pub fn new(policy: RetryPolicy) -> Self {
        KeyedBackoff {
            policy,
            failing: Mutex::new(HashMap::new()),
        }
    }

    /// The policy every key follows.
    pub fn policy(&self) -> &RetryPolicy {
        &self.policy
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Backoff>> {
        self.failing.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The un-jittered delay `key` waits before its next attempt, if it is failing.
    pub fn delay(&self, key: &str) -> Option<Duration> {
        self.lock().get(key).and_then(Backoff::current)
    }

    /// [`RetryPolicy::run`] under `key`: first waits the key's delay if it is failing, and
    /// leaves the key's backoff grown after a retryable failure, forgotten after a success
    /// and as it was after a permanent failure.
    pub async fn run<T, E, F, Fut>(
        &self,
        key: &str,
        classify: impl Fn(&E) -> Retry,
        op: F,
    ) -> Result<T, RetryError<E>>
    where
        E: fmt::Display,
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, E>>,
    {
        let mut backoff = self
            .lock()
            .get(key)
            .cloned()
            .unwrap_or_else(|| Backoff::new(&self.policy));
        let owed = backoff.current().map(|d| backoff.jittered(d));
        let result = attempt_loop(&self.policy, &mut backoff, owed, key, classify, op).await;
        let mut failing = self.lock();
        if backoff.current().is_some() {
            failing.insert(key.to_string(), backoff);
        } else {
            failing.remove(key);
        }
        result
    }
}

/// The one retry loop: waits `owed` first if given, then attempts `op` as
/// [`RetryPolicy::run`] describes, taking its delays from `backoff` (reset on success).
async fn attempt_loop<T, E, F, Fut>(
    policy: &RetryPolicy,
    backoff: &mut Backoff,
    owed: Option<Duration>,
    what: &str,
    classify: impl Fn(&E) -> Retry,
    mut op: F,
) -> Result<T, RetryError<E>>
where
    E: fmt::Display,
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, E>>,
{
    let started = Instant::now();
    let mut wait = owed;
    let mut attempt = 0;
    loop {
        if let Some(w) = wait.take()
            && !w.is_zero()
        {
            tokio::time::sleep(w).await;
        }
        attempt += 1;
        let error = match op().await {
            Ok(v) => {
                backoff.reset();
                return Ok(v);
            }
            Err(e) => e,
        };
        let floor = match classify(&error) {
            Retry::No => {
                return Err(RetryError {
                    error,
                    attempts: attempt,
                    elapsed: started.elapsed(),
                    gave_up: false,
                });
            }
            Retry::Yes => Duration::ZERO,
            Retry::After(d) => d.min(policy.max_backoff),
        };
        let delay = backoff.next_delay().max(floor);
        let elapsed = started.elapsed();
        if attempt >= policy.max_attempts || elapsed.saturating_add(delay) > policy.max_elapsed {
            tracing::debug!(what, attempt, ?elapsed, %error, "giving up");
            return Err(RetryError {
                error,
                attempts: attempt,
                elapsed,
                gave_up: true,
            });
        }
        tracing::debug!(what, attempt, ?delay, %error, "retrying");
        wait = Some(delay);
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::AtomicU32;

    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    /// 100 ms doubling up to 1 s, no jitter, `attempts` attempts, no time limit.
    fn exact(attempts: u32) -> RetryPolicy {
        RetryPolicy::default()
            .with_backoff(ms(100), ms(1000))
            .and_then(|p| p.with_max_attempts(attempts))
            .and_then(|p| p.with_max_elapsed(Duration::MAX))
            .expect("valid")
            .with_jitter(false)
    }

    #[derive(Clone, Debug, PartialEq)]
    enum Failure {
        Busy,
        SlowDown(Duration),
        Denied,
    }

    impl fmt::Display for Failure {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            write!(f, "{self:?}")
        }
    }

    impl std::error::Error for Failure {}

    fn classify(e: &Failure) -> Retry {
        match e {
            Failure::Busy => Retry::Yes,
            Failure::SlowDown(d) => Retry::After(*d),
            Failure::Denied => Retry::No,
        }
    }

    /// Runs `policy` over an operation that fails with `failures` in turn, then succeeds;
    /// returns the result and the instants (from the start) of the attempts.
    async fn play(
        policy: &RetryPolicy,
        failures: Vec<Failure>,
    ) -> (Result<u32, RetryError<Failure>>, Vec<Duration>) {
        let start = Instant::now();
        let times = Mutex::new(Vec::new());
        let failures = Mutex::new(failures.into_iter());
        let result = policy
            .run("test op", classify, || {
                times.lock().unwrap().push(start.elapsed());
                let next = failures.lock().unwrap().next();
                async move {
                    match next {
                        Some(f) => Err(f),
                        None => Ok(7),
                    }
                }
            })
            .await;
        (result, times.into_inner().unwrap())
    }

    #[test]
    fn delays_grow_by_the_multiplier_up_to_the_max_and_reset() {
        let mut b = Backoff::new(&exact(10));
        let delays: Vec<u64> = (0..6).map(|_| b.next_delay().as_millis() as u64).collect();
        assert_eq!(delays, [100, 200, 400, 800, 1000, 1000]);
        assert_eq!(b.current(), Some(ms(1000)));
        b.reset();
        assert_eq!(b.current(), None);
        assert_eq!(b.next_delay(), ms(100), "starts over");

        let tripling = exact(10).with_multiplier(3.0).unwrap();
        let mut b = Backoff::new(&tripling);
        let delays: Vec<u64> = (0..4).map(|_| b.next_delay().as_millis() as u64).collect();
        assert_eq!(delays, [100, 300, 900, 1000]);

        let huge = RetryPolicy::default()
            .with_backoff(Duration::from_secs(1), Duration::MAX)
            .unwrap()
            .with_multiplier(1e300)
            .unwrap()
            .with_jitter(false);
        let mut b = Backoff::new(&huge);
        b.next_delay();
        assert_eq!(
            b.next_delay(),
            Duration::MAX,
            "an overflowing delay is the max"
        );
    }

    #[test]
    fn jitter_stays_between_zero_and_the_delay_and_varies() {
        let policy = exact(10).with_jitter(true);
        let (mut low, mut high) = (0, 0);
        for _ in 0..1000 {
            let mut b = Backoff::new(&policy);
            let d = b.next_delay();
            assert!(d <= ms(100), "{d:?}");
            if d < ms(50) {
                low += 1;
            } else {
                high += 1;
            }
            assert_eq!(
                b.current(),
                Some(ms(100)),
                "the sequence itself is not jittered"
            );
        }
        assert!(
            low > 300 && high > 300,
            "not uniform: {low} low, {high} high"
        );
        assert_eq!(full_jitter(Duration::ZERO), Duration::ZERO);
        assert!(full_jitter(Duration::MAX) <= Duration::MAX);
    }

    #[test]
    fn bad_values_are_errors_naming_the_field() {
        let field = |r: Result<RetryPolicy>| match r {
            Err(Error::InvalidSpec { field, .. }) => field,
            other => panic!("not refused: {other:?}"),
        };
        let p = RetryPolicy::default();
        assert_eq!(field(p.with_multiplier(0.5)), "retry.multiplier");
        assert_eq!(field(p.with_multiplier(f64::NAN)), "retry.multiplier");
        assert_eq!(field(p.with_multiplier(f64::INFINITY)), "retry.multiplier");
        assert_eq!(field(p.with_max_attempts(0)), "retry.max_attempts");
        assert_eq!(
            field(p.with_max_elapsed(Duration::ZERO)),
            "retry.max_elapsed"
        );
        assert_eq!(
            field(p.with_backoff(ms(500), ms(100))),
            "retry.initial_backoff"
        );
        assert_eq!(
            field(p.with_initial_backoff(Duration::from_secs(11))),
            "retry.initial_backoff"
        );
        assert_eq!(field(p.with_max_backoff(ms(100))), "retry.max_backoff");
        let ok = p.with_backoff(ms(500), ms(500)).unwrap();
        assert_eq!((ok.initial_backoff(), ok.max_backoff()), (ms(500), ms(500)));
        assert_eq!(p.with_multiplier(1.0).unwrap().multiplier(), 1.0);
        assert_eq!(RetryPolicy::none().max_attempts(), 1);
        assert!(RetryPolicy::default().jitter());
    }

    #[tokio::test(start_paused = true)]
    async fn retries_wait_the_exact_sequence_without_jitter() {
        let (result, times) = play(&exact(6), vec![Failure::Busy; 4]).await;
        assert_eq!(result.unwrap(), 7);
        assert_eq!(times, [ms(0), ms(100), ms(300), ms(700), ms(1500)]);
    }

    #[tokio::test(start_paused = true)]
    async fn attempts_are_limited_and_giving_up_is_recorded() {
        let (result, times) = play(&exact(3), vec![Failure::Busy; 10]).await;
        assert_eq!(times, [ms(0), ms(100), ms(300)], "no wait after the last");
        let err = result.unwrap_err();
        assert!(err.gave_up());
        assert_eq!((err.attempts(), err.elapsed()), (3, ms(300)));
        assert_eq!(err.error(), &Failure::Busy);
        assert_eq!(err.to_string(), "gave up after 3 attempts in 300.0ms: Busy");

        let e = err.into_error("fetch x", |_| panic!("not permanent"));
        assert!(e.is_persistent() && e.is_retryable(), "{e:?}");
        assert_eq!(e.retry(), Retry::No, "not retried again at once");
        assert_eq!(
            e.chain(),
            "fetch x: gave up after 3 attempts in 300.0ms: Busy"
        );
        assert!(matches!(e, Error::Persistent { attempts: 3, .. }));

        let (result, times) = play(&RetryPolicy::none(), vec![Failure::Busy]).await;
        assert_eq!(times, [ms(0)]);
        let err = result.unwrap_err();
        assert!(err.gave_up());
        assert_eq!(err.to_string(), "gave up after 1 attempt in 0.0ns: Busy");
    }

    #[tokio::test(start_paused = true)]
    async fn the_time_budget_is_kept() {
        let policy = exact(100)
            .with_backoff(ms(400), ms(10_000))
            .unwrap()
            .with_max_elapsed(ms(1000))
            .unwrap();
        let start = Instant::now();
        let (result, times) = play(&policy, vec![Failure::Busy; 10]).await;
        // The third attempt would start at 400 + 800 ms, past the budget: no wait for it.
        assert_eq!(times, [ms(0), ms(400)]);
        assert_eq!(start.elapsed(), ms(400));
        let err = result.unwrap_err();
        assert!(err.gave_up());
        assert_eq!((err.attempts(), err.elapsed()), (2, ms(400)));
    }

    #[tokio::test(start_paused = true)]
    async fn a_servers_retry_after_is_honoured_and_capped() {
        let (result, times) = play(&exact(6), vec![Failure::SlowDown(ms(3000))]).await;
        assert_eq!(result.unwrap(), 7);
        assert_eq!(times, [ms(0), ms(1000)], "capped at max_backoff (1 s)");

        let patient = exact(6).with_max_backoff(Duration::from_secs(10)).unwrap();
        let failures = vec![Failure::SlowDown(ms(3000)), Failure::SlowDown(ms(50))];
        let (result, times) = play(&patient, failures).await;
        assert_eq!(result.unwrap(), 7);
        // 3 s asked (longer than 100 ms), then 200 ms (longer than the 50 ms asked).
        assert_eq!(times, [ms(0), ms(3000), ms(3200)]);
    }

    #[tokio::test(start_paused = true)]
    async fn a_permanent_failure_returns_at_once() {
        let start = Instant::now();
        let (result, times) = play(&exact(6), vec![Failure::Busy, Failure::Denied]).await;
        assert_eq!(times, [ms(0), ms(100)]);
        assert_eq!(
            start.elapsed(),
            ms(100),
            "no wait after a permanent failure"
        );
        let err = result.unwrap_err();
        assert!(!err.gave_up());
        assert_eq!(err.attempts(), 2);
        assert_eq!(err.to_string(), "Denied");
        let e = err.into_error("fetch x", |f| Error::backend("fetch x", f.to_string()));
        assert!(matches!(e, Error::Backend { .. }) && !e.is_persistent());
    }

    #[tokio::test(start_paused = true)]
    async fn a_failing_key_backs_off_across_calls_without_slowing_others() {
        let keyed = KeyedBackoff::new(exact(2));
        let fail = || async { Err::<(), _>(Failure::Busy) };
        // First call: attempt, wait 100 ms, attempt; its backoff is then at 200 ms.
        let start = Instant::now();
        let err = keyed.run("bad", classify, fail).await.unwrap_err();
        assert!(err.gave_up());
        assert_eq!(start.elapsed(), ms(100));
        assert_eq!(keyed.delay("bad"), Some(ms(200)));
        // Second call: its first attempt waits the delay owed, then 400 ms.
        let start = Instant::now();
        keyed.run("bad", classify, fail).await.unwrap_err();
        assert_eq!(start.elapsed(), ms(200 + 400));
        assert_eq!(keyed.delay("bad"), Some(ms(800)));
        // A permanent failure leaves the key's backoff as it was.
        let denied = || async { Err::<(), _>(Failure::Denied) };
        keyed.run("bad", classify, denied).await.unwrap_err();
        assert_eq!(keyed.delay("bad"), Some(ms(800)));
        // Another key is not slowed down, and a success resets the failing one.
        let start = Instant::now();
        let ok = || async { Ok::<_, Failure>(()) };
        keyed.run("good", classify, ok).await.unwrap();
        assert_eq!(start.elapsed(), Duration::ZERO);
        assert_eq!(keyed.delay("good"), None);
        let start = Instant::now();
        keyed.run("bad", classify, ok).await.unwrap();
        assert!(start.elapsed() >= ms(800));
        assert_eq!(keyed.delay("bad"), None);
        let start = Instant::now();
        keyed.run("bad", classify, ok).await.unwrap();
        assert_eq!(start.elapsed(), Duration::ZERO);
    }

    #[tokio::test(start_paused = true)]
    async fn conflicts_are_retried_at_once_a_bounded_number_of_times() {
        let calls = AtomicU32::new(0);
        let start = Instant::now();
        let always = on_conflict(
            "append",
            |e: &Failure| *e == Failure::Busy,
            || {
                calls.fetch_add(1, Ordering::SeqCst);
                async { Err::<(), _>(Failure::Busy) }
            },
        )
        .await;
        assert_eq!(always, Err(Failure::Busy), "the last conflict");
        assert_eq!(calls.load(Ordering::SeqCst), CONFLICT_ATTEMPTS);
        assert_eq!(start.elapsed(), Duration::ZERO, "no waits");

        let calls = AtomicU32::new(0);
        let other = on_conflict(
            "append",
            |e: &Failure| *e == Failure::Busy,
            || {
                let n = calls.fetch_add(1, Ordering::SeqCst);
                async move {
                    match n {
                        0 => Err(Failure::Busy),
                        _ => Err::<(), _>(Failure::Denied),
                    }
                }
            },
        )
        .await;
        assert_eq!(other, Err(Failure::Denied));
        assert_eq!(
            calls.load(Ordering::SeqCst),
            2,
            "other errors return at once"
        );

        let calls = AtomicU32::new(0);
        let won = on_conflict(
            "append",
            |e: &Failure| *e == Failure::Busy,
            || {
                let n = calls.fetch_add(1, Ordering::SeqCst);
                async move { if n < 3 { Err(Failure::Busy) } else { Ok(n) } }
            },
        )
        .await;
        assert_eq!(won, Ok(3));
    }
}
