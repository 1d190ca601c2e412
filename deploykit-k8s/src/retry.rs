//! Which Kubernetes API failures are worth retrying, and kube errors as deploykit errors. The
//! retrying itself is [`deploykit_core::retry`]'s: calls of the environment run under a
//! [`KeyedBackoff`](deploykit_core::retry::KeyedBackoff) per object, those of the state store
//! and of backups under [`RetryPolicy::run`].
//!
//! kube-rs retries nothing by itself (its controller has a per-key requeue backoff, but no
//! per-object backoff for plain API calls).

use std::time::Duration;

use deploykit_core::Error;
use deploykit_core::retry::{Retry, RetryError, RetryPolicy};

/// Classifies a kube client error: `429 Too Many Requests` (after at least the
/// `retryAfterSeconds` the API server gives in the Status details), `5xx` and connection
/// failures are worth retrying; other `4xx` (a `409 Conflict`, a `422 Invalid`) are not.
pub(crate) fn classify(err: &kube::Error) -> Retry {
    match err {
        kube::Error::Api(status) => {
            let throttled = status.code == 429 || status.reason == "TooManyRequests";
            let server = status.code >= 500
                || matches!(
                    status.reason.as_str(),
                    "InternalError" | "ServiceUnavailable" | "ServerTimeout" | "Timeout"
                );
            if !(throttled || server) {
                return Retry::No;
            }
            match status.details.as_ref().map(|d| d.retry_after_seconds) {
                Some(s) if s > 0 => Retry::After(Duration::from_secs(u64::from(s))),
                _ => Retry::Yes,
            }
        }
        kube::Error::HyperError(_) | kube::Error::Service(_) | kube::Error::ReadEvents(_) => {
            Retry::Yes
        }
        _ => Retry::No,
    }
}

/// The HTTP status of an API error.
pub(crate) fn status_code(e: &kube::Error) -> Option<u16> {
    match e {
        kube::Error::Api(s) => Some(s.code),
        _ => None,
    }
}

/// The retry policy of the state store's and of backups' API calls: 5 attempts, 100 ms
/// doubling up to 2 s, jittered.
pub(crate) fn api_policy() -> RetryPolicy {
    RetryPolicy::default()
        .with_backoff(Duration::from_millis(100), Duration::from_secs(2))
        .and_then(|p| p.with_max_attempts(5))
        .expect("a valid policy")
}

/// A failed, retried kube call as a deploykit error: [`Error::Persistent`] if its retries
/// were used up, else (a permanent failure) [`Error::Backend`].
pub(crate) fn kube_error(operation: impl Into<String>, e: RetryError<kube::Error>) -> Error {
    let operation = operation.into();
    e.into_error(operation.clone(), |e| Error::Backend {
        operation,
        source: Box::new(e),
    })
}

#[cfg(test)]
mod tests {
    use kube::core::Status;

    use super::*;

    fn status(code: u16, reason: &str) -> kube::Error {
        kube::Error::Api(Status::failure("test", reason).with_code(code).boxed())
    }

    #[test]
    fn classifies_failures() {
        assert_eq!(classify(&status(429, "TooManyRequests")), Retry::Yes);
        assert_eq!(classify(&status(503, "ServiceUnavailable")), Retry::Yes);
        assert_eq!(classify(&status(500, "InternalError")), Retry::Yes);
        assert_eq!(classify(&status(409, "Conflict")), Retry::No);
        assert_eq!(classify(&status(404, "NotFound")), Retry::No);
        assert_eq!(classify(&status(422, "Invalid")), Retry::No);
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
            Retry::After(Duration::from_secs(3))
        );
    }

    #[test]
    fn the_api_policy_is_valid() {
        let p = api_policy();
        assert_eq!(p.max_attempts(), 5);
        assert_eq!(
            (p.initial_backoff(), p.max_backoff()),
            (Duration::from_millis(100), Duration::from_secs(2))
        );
    }
}
