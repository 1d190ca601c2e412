//! Retries of Kubernetes API calls: which failures are worth retrying, and a per-object
//! backoff that grows while one object keeps failing and resets when it succeeds.
//!
//! kube-rs retries nothing by itself (its controller has a per-key requeue backoff, but no
//! per-object backoff for plain API calls). Here every call is made under a key (an object's
//! `Kind/namespace/name`, or a list's kind): a key that fails with a retryable error waits
//! longer before its next attempt, within one call and across calls, until one success resets
//! it. Other keys are unaffected.

use std::collections::HashMap;
use std::future::Future;
use std::hash::{BuildHasher, Hasher};
use std::sync::Mutex;
use std::time::Duration;

/// How Kubernetes API calls are retried: exponential backoff with jitter, from `initial` up
/// to `max`, at most `attempts` attempts per call.
///
/// Retried: `429 Too Many Requests` (waiting at least the `Retry-After` the API server gives in
/// the Status details), `5xx` and connection failures. Never retried: other `4xx`, e.g. a
/// `409 Conflict` or a `422 Invalid`.
///
/// ```
/// use std::time::Duration;
/// use deploykit_k8s::RetryPolicy;
/// let policy = RetryPolicy::default();
/// assert_eq!(policy.initial, Duration::from_millis(200));
/// let patient = RetryPolicy::new(Duration::from_secs(1), Duration::from_secs(60), 10);
/// assert_eq!(patient.attempts, 10);
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct RetryPolicy {
    /// The delay after an object's first failure (default 200 ms).
    pub initial: Duration,
    /// The longest delay (default 10 s).
    pub max: Duration,
    /// Attempts per call, the first included (default 6); at least 1.
    pub attempts: u32,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            initial: Duration::from_millis(200),
            max: Duration::from_secs(10),
            attempts: 6,
        }
    }
}

impl RetryPolicy {
    /// A policy starting at `initial`, doubling up to `max`, with `attempts` attempts per call
    /// (0 is taken as 1).
    pub fn new(initial: Duration, max: Duration, attempts: u32) -> Self {
        RetryPolicy {
            initial,
            max: max.max(initial),
            attempts: attempts.max(1),
        }
    }

    /// No retries: every call is attempted once.
    pub fn none() -> Self {
        RetryPolicy::new(Duration::ZERO, Duration::ZERO, 1)
    }

    /// The delay after one more failure, given the current one.
    fn grow(&self, current: Option<Duration>) -> Duration {
        match current {
            None => self.initial.min(self.max),
            Some(d) => d.saturating_mul(2).min(self.max),
        }
    }
}

/// Whether a failed call is worth trying again.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Verdict {
    /// A permanent failure.
    Fail,
    /// A transient failure; the server may ask for a minimum wait.
    Retry(Option<Duration>),
}

/// Classifies a kube client error: 429, 5xx and connection failures are transient.
pub(crate) fn classify(err: &kube::Error) -> Verdict {
    match err {
        kube::Error::Api(status) => {
            let retry_after = status
                .details
                .as_ref()
                .map(|d| d.retry_after_seconds)
                .filter(|s| *s > 0)
                .map(|s| Duration::from_secs(u64::from(s)));
            let throttled = status.code == 429 || status.reason == "TooManyRequests";
            let server = status.code >= 500
                || matches!(
                    status.reason.as_str(),
                    "InternalError" | "ServiceUnavailable" | "ServerTimeout" | "Timeout"
                );
            if throttled || server {
                Verdict::Retry(retry_after)
            } else {
                Verdict::Fail
            }
        }
        kube::Error::HyperError(_) | kube::Error::Service(_) | kube::Error::ReadEvents(_) => {
            Verdict::Retry(None)
        }
        _ => Verdict::Fail,
    }
}

/// Whether `err` is transient (see [`classify`]).
pub(crate) fn is_transient(err: &kube::Error) -> bool {
    matches!(classify(err), Verdict::Retry(_))
}

/// A uniformly random duration in `[d/2, d]` ("equal jitter"), so that many clients backing
/// off at once do not retry in lockstep.
pub(crate) fn jitter(d: Duration) -> Duration {
    let half = d / 2;
    let span = (d - half).as_nanos() as u64;
    if span == 0 {
        return d;
    }
    // RandomState is randomly keyed (and re-keyed per instance): a good enough source of
    // jitter without a dependency on a random number generator.
    let mut h = std::hash::RandomState::new().build_hasher();
    h.write_u64(span);
    half + Duration::from_nanos(h.finish() % (span + 1))
}

/// Per-key backoff: the delay each failing key waits before its next attempt.
///
/// A key's delay starts at the policy's `initial` on its first retryable failure, doubles on
/// each further one up to `max`, and is forgotten on its first success. Keys never slow each
/// other down.
#[derive(Debug, Default)]
pub(crate) struct KeyedBackoff {
    policy: RetryPolicy,
    delays: Mutex<HashMap<String, Duration>>,
}

impl KeyedBackoff {
    /// An empty map under `policy`.
    pub(crate) fn new(policy: RetryPolicy) -> Self {
        KeyedBackoff {
            policy,
            delays: Mutex::new(HashMap::new()),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Duration>> {
        self.delays.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The (un-jittered) delay `key` waits before its next attempt, if it is failing.
    pub(crate) fn delay(&self, key: &str) -> Option<Duration> {
        self.lock().get(key).copied()
    }

    /// Records a retryable failure of `key`; returns its new delay.
    pub(crate) fn failed(&self, key: &str) -> Duration {
        let mut delays = self.lock();
        let next = self.policy.grow(delays.get(key).copied());
        delays.insert(key.to_string(), next);
        next
    }

    /// Records a success of `key`: its delay is forgotten.
    pub(crate) fn succeeded(&self, key: &str) {
        self.lock().remove(key);
    }

    /// Runs `op` under `key`: before each attempt waits the key's current delay (jittered, and
    /// at least what the server asked for), retries transient failures up to the policy's
    /// attempts, and returns the last error otherwise. Permanent failures return at once and
    /// leave the key's delay as it was.
    pub(crate) async fn run<T, F, Fut>(&self, key: &str, mut op: F) -> Result<T, kube::Error>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, kube::Error>>,
    {
        let mut server_hint: Option<Duration> = None;
        let attempts = self.policy.attempts.max(1);
        for attempt in 1..=attempts {
            if let Some(d) = self.delay(key) {
                let wait = jitter(d).max(server_hint.take().unwrap_or_default());
                if !wait.is_zero() {
                    tracing::debug!(key, ?wait, attempt, "backing off before retrying");
                    tokio::time::sleep(wait).await;
                }
            }
            match op().await {
                Ok(v) => {
                    self.succeeded(key);
                    return Ok(v);
                }
                Err(e) => match classify(&e) {
                    Verdict::Fail => return Err(e),
                    Verdict::Retry(hint) => {
                        let delay = self.failed(key);
                        if attempt == attempts {
                            return Err(e);
                        }
                        tracing::debug!(key, error = %e, ?delay, "transient API failure");
                        server_hint = hint;
                    }
                },
            }
        }
        unreachable!("the last attempt returns")
    }
}

/// A kube error as a deploykit error: transient ones (429, 5xx, connection) as
/// [`Error::Transient`](deploykit_core::Error::Transient), so callers retry them; anything
/// else as [`Error::Backend`](deploykit_core::Error::Backend).
pub(crate) fn kube_error(operation: impl Into<String>, e: kube::Error) -> deploykit_core::Error {
    let operation = operation.into();
    if is_transient(&e) {
        deploykit_core::Error::Transient {
            operation,
            source: Box::new(e),
        }
    } else {
        deploykit_core::Error::Backend {
            operation,
            source: Box::new(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicU32, Ordering};

    use kube::core::Status;
    use tokio::time::Instant;

    use super::*;

    fn policy() -> RetryPolicy {
        RetryPolicy::new(Duration::from_millis(200), Duration::from_secs(10), 6)
    }

    fn status(code: u16, reason: &str) -> kube::Error {
        kube::Error::Api(Status::failure("test", reason).with_code(code).boxed())
    }

    #[test]
    fn classifies_failures() {
        assert_eq!(
            classify(&status(429, "TooManyRequests")),
            Verdict::Retry(None)
        );
        assert_eq!(
            classify(&status(503, "ServiceUnavailable")),
            Verdict::Retry(None)
        );
        assert_eq!(
            classify(&status(500, "InternalError")),
            Verdict::Retry(None)
        );
        assert_eq!(classify(&status(409, "Conflict")), Verdict::Fail);
        assert_eq!(classify(&status(404, "NotFound")), Verdict::Fail);
        assert_eq!(classify(&status(422, "Invalid")), Verdict::Fail);
        let mut s = Status::failure("slow down", "TooManyRequests").with_code(429);
        s.details = Some(kube::core::response::StatusDetails {
            name: String::new(),
            group: String::new(),
            kind: String::new(),
            uid: String::new(),
            causes: vec![],
            retry_after_seconds: 3,
        });
        assert_eq!(
            classify(&kube::Error::Api(s.boxed())),
            Verdict::Retry(Some(Duration::from_secs(3)))
        );
    }

    #[test]
    fn jitter_stays_between_half_and_full() {
        for _ in 0..1000 {
            let j = jitter(Duration::from_millis(400));
            assert!(j >= Duration::from_millis(200) && j <= Duration::from_millis(400));
        }
        assert_eq!(jitter(Duration::ZERO), Duration::ZERO);
    }

    #[test]
    fn backoff_grows_per_failure_up_to_max() {
        let b = KeyedBackoff::new(policy());
        assert_eq!(b.delay("Deployment/ns/web-1"), None);
        let grown: Vec<u64> = (0..8)
            .map(|_| b.failed("Deployment/ns/web-1").as_millis() as u64)
            .collect();
        assert_eq!(grown, vec![200, 400, 800, 1600, 3200, 6400, 10000, 10000]);
    }

    #[test]
    fn backoff_resets_on_success_and_is_per_key() {
        let b = KeyedBackoff::new(policy());
        b.failed("a");
        b.failed("a");
        b.failed("b");
        assert_eq!(b.delay("a"), Some(Duration::from_millis(400)));
        assert_eq!(b.delay("b"), Some(Duration::from_millis(200)));
        assert_eq!(b.delay("c"), None);
        b.succeeded("a");
        assert_eq!(b.delay("a"), None);
        assert_eq!(
            b.delay("b"),
            Some(Duration::from_millis(200)),
            "one key's success leaves the others"
        );
        assert_eq!(b.failed("a"), Duration::from_millis(200), "starts over");
    }

    #[tokio::test(start_paused = true)]
    async fn run_retries_transient_failures_with_growing_waits() {
        let b = KeyedBackoff::new(policy());
        let calls = AtomicU32::new(0);
        let start = Instant::now();
        let out = b
            .run("k", || async {
                if calls.fetch_add(1, Ordering::SeqCst) < 2 {
                    Err(status(503, "ServiceUnavailable"))
                } else {
                    Ok(7)
                }
            })
            .await
            .unwrap();
        assert_eq!(out, 7);
        assert_eq!(calls.load(Ordering::SeqCst), 3);
        let waited = start.elapsed();
        // 200 ms then 400 ms, each jittered into [d/2, d].
        assert!(
            waited >= Duration::from_millis(300) && waited <= Duration::from_millis(600),
            "{waited:?}"
        );
        assert_eq!(b.delay("k"), None, "success resets the key");
    }

    #[tokio::test(start_paused = true)]
    async fn run_never_retries_permanent_failures() {
        let b = KeyedBackoff::new(policy());
        let calls = AtomicU32::new(0);
        let err = b
            .run("k", || async {
                calls.fetch_add(1, Ordering::SeqCst);
                Err::<(), _>(status(409, "Conflict"))
            })
            .await
            .unwrap_err();
        assert!(matches!(err, kube::Error::Api(s) if s.code == 409));
        assert_eq!(calls.load(Ordering::SeqCst), 1);
        assert_eq!(b.delay("k"), None);
    }

    #[tokio::test(start_paused = true)]
    async fn a_failing_key_waits_longer_across_calls_without_slowing_others() {
        let b = KeyedBackoff::new(RetryPolicy::new(
            Duration::from_millis(200),
            Duration::from_secs(10),
            2,
        ));
        let fail = || async { Err::<(), _>(status(500, "InternalError")) };
        // First call: attempt, fail (delay 200), wait, attempt, fail (delay 400).
        let start = Instant::now();
        b.run("bad", fail).await.unwrap_err();
        assert!(start.elapsed() <= Duration::from_millis(200));
        assert_eq!(b.delay("bad"), Some(Duration::from_millis(400)));
        // Second call: its first attempt already waits the grown delay.
        let start = Instant::now();
        b.run("bad", fail).await.unwrap_err();
        let waited = start.elapsed();
        assert!(
            waited >= Duration::from_millis(200 + 400)
                && waited <= Duration::from_millis(400 + 800),
            "{waited:?}"
        );
        assert_eq!(b.delay("bad"), Some(Duration::from_millis(1600)));
        // Another key is not slowed down.
        let start = Instant::now();
        b.run("good", || async { Ok::<_, kube::Error>(()) })
            .await
            .unwrap();
        assert_eq!(start.elapsed(), Duration::ZERO);
        // One success resets the failing key.
        let start = Instant::now();
        b.run("bad", || async { Ok::<_, kube::Error>(()) })
            .await
            .unwrap();
        assert!(start.elapsed() >= Duration::from_millis(800));
        assert_eq!(b.delay("bad"), None);
        let start = Instant::now();
        b.run("bad", || async { Ok::<_, kube::Error>(()) })
            .await
            .unwrap();
        assert_eq!(start.elapsed(), Duration::ZERO);
    }
}
