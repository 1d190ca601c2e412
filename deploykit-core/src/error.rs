//! The one error type of `deploykit-core`, and the one place that decides whether an error is
//! worth retrying.

use std::fmt;

use crate::time::Timestamp;

/// A boxed error from a backend, kept as the `source` of an [`Error`].
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// Result alias used throughout deploykit.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong in deploykit.
///
/// Variants are semantic (what went wrong), not per backend: backends map their private errors
/// into them. Whether an error is worth retrying is decided in exactly one place,
/// [`Error::is_retryable`].
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A spec or request is impossible; `field` names the offending field (e.g.
    /// `rollout.max_surge`).
    #[error("invalid {field}: {reason}")]
    InvalidSpec {
        /// Dotted path of the offending field.
        field: String,
        /// What is wrong with it and what was expected.
        reason: String,
    },
    /// Something looked up does not exist.
    #[error("{what} not found")]
    NotFound {
        /// What was looked up, e.g. `deployment d-1234`.
        what: String,
    },
    /// Something to be created exists already.
    #[error("{what} already exists")]
    AlreadyExists {
        /// What exists already.
        what: String,
    },
    /// An optimistic-concurrency check failed: another writer appended to the journal first.
    #[error(
        "journal of deployment {deployment} moved on: expected next sequence {expected}, store is at {actual}"
    )]
    Conflict {
        /// The deployment whose journal was written concurrently.
        deployment: String,
        /// The sequence number the writer expected to write.
        expected: u64,
        /// The sequence number the store is actually at.
        actual: u64,
    },
    /// A lease is held by another owner.
    #[error("lease {key} is held by {owner} until {expires_at}")]
    LeaseHeld {
        /// The lease key (`service/environment`).
        key: String,
        /// The current holder.
        owner: String,
        /// When the holder's lease expires unless renewed.
        expires_at: Timestamp,
    },
    /// An operation on a deployment that its current phase does not allow.
    #[error("cannot {action} deployment {deployment}: it is {phase}")]
    InvalidTransition {
        /// The deployment.
        deployment: String,
        /// The operation that was refused (`pause`, `abort`, ...).
        action: String,
        /// The phase the deployment is in.
        phase: String,
    },
    /// A temporary failure (throttling, a busy database, a dropped connection): retry it.
    #[error("{operation} failed transiently")]
    Transient {
        /// What was being done.
        operation: String,
        /// The underlying failure.
        #[source]
        source: BoxError,
    },
    /// A temporary failure that persisted: the operation was retried under a
    /// [`RetryPolicy`](crate::retry::RetryPolicy) until its attempts or its time budget were
    /// used up (OpenDAL's `Persistent` status). It may still succeed later, so it
    /// [is retryable](Error::is_retryable), but not at once: whoever gave up has already
    /// retried ([`Error::is_persistent`]).
    #[error("{operation}: gave up after {} in {elapsed:.1?}", crate::error::attempts(*.attempts))]
    Persistent {
        /// What was being done.
        operation: String,
        /// The attempts made, the first included.
        attempts: u32,
        /// The time from the first attempt to giving up.
        elapsed: std::time::Duration,
        /// The last attempt's failure.
        #[source]
        source: BoxError,
    },
    /// A backend (environment, monitor, target) refused an operation for good.
    #[error("{operation} failed")]
    Backend {
        /// What was being done.
        operation: String,
        /// The underlying failure.
        #[source]
        source: BoxError,
    },
    /// The state store failed.
    #[error("state store: {operation} failed")]
    Store {
        /// What was being done.
        operation: String,
        /// The underlying failure.
        #[source]
        source: BoxError,
    },
    /// An access policy refuses an operator action.
    #[error("{principal} may not {permission}")]
    PermissionDenied {
        /// Who asked.
        principal: String,
        /// The missing permission: action on object, and the denying rule if one denied it.
        permission: String,
    },
    /// The audit log does not verify: `seq` is the first bad record.
    #[error("audit log tampered with at record {seq}: {reason}")]
    AuditTampered {
        /// The first record that does not verify.
        seq: u64,
        /// What is wrong.
        reason: String,
    },
    /// A secrets file cannot be opened or does not verify: truncated, edited, not for this
    /// identity. No plaintext is ever returned from a file that fails.
    #[error("secrets file {file}: {reason}")]
    Secrets {
        /// The file.
        file: String,
        /// What is wrong (never a secret value).
        reason: String,
    },
    /// Stored data could not be decoded.
    #[error("corrupt {what}")]
    Corrupt {
        /// What could not be decoded, e.g. `journal entry 3 of deployment d-1`.
        what: String,
        /// The decoding failure.
        #[source]
        source: BoxError,
    },
    /// Nothing drives a deployment that has not ended: no orchestrator that runs its
    /// environment is alive (see [`crate::Orchestrator::wait`]).
    #[error("nobody drives deployment {deployment}: {reason}")]
    Undriven {
        /// The deployment.
        deployment: String,
        /// Why it is known that nobody does, and what would.
        reason: String,
    },
}

impl Error {
    /// Whether the operation that produced this error may succeed if tried again unchanged:
    /// a transient failure (at once, with backoff: see [`Error::retry`]), a conflict (after
    /// re-reading), or a persistent failure (later: its retries are used up).
    ///
    /// This and [`Error::retry`] are the single place where retryability is decided.
    pub fn is_retryable(&self) -> bool {
        matches!(
            self,
            Error::Transient { .. } | Error::Conflict { .. } | Error::Persistent { .. }
        )
    }

    /// Whether this is a failure that was already retried until a retry policy was used up
    /// ([`Error::Persistent`]): try it again later, not at once.
    pub fn is_persistent(&self) -> bool {
        matches!(self, Error::Persistent { .. })
    }

    /// An [`Error::InvalidSpec`] for `field`.
    pub fn invalid(field: impl Into<String>, reason: impl Into<String>) -> Self {
        Error::InvalidSpec {
            field: field.into(),
            reason: reason.into(),
        }
    }

    /// An [`Error::Transient`] with a plain message as its source.
    pub fn transient(operation: impl Into<String>, message: impl Into<String>) -> Self {
        Error::Transient {
            operation: operation.into(),
            source: message.into().into(),
        }
    }

    /// An [`Error::Backend`] with a plain message as its source.
    pub fn backend(operation: impl Into<String>, message: impl Into<String>) -> Self {
        Error::Backend {
            operation: operation.into(),
            source: message.into().into(),
        }
    }

    /// An [`Error::NotFound`].
    pub fn not_found(what: impl Into<String>) -> Self {
        Error::NotFound { what: what.into() }
    }

    /// A [`Error::NotFound`] with `note` added to what was not found (`secret x (referenced
    /// by y)`); any other error unchanged.
    pub fn noting(self, note: impl fmt::Display) -> Self {
        match self {
            Error::NotFound { what } => Error::NotFound {
                what: format!("{what} ({note})"),
            },
            other => other,
        }
    }

    /// The message of this error followed by every `source` in its chain, separated by `: `.
    pub fn chain(&self) -> String {
        let mut out = self.to_string();
        let mut source = std::error::Error::source(self);
        while let Some(s) = source {
            out.push_str(": ");
            out.push_str(&s.to_string());
            source = s.source();
        }
        out
    }
}

/// `n attempts`, or `1 attempt`.
pub(crate) fn attempts(n: u32) -> String {
    if n == 1 {
        "1 attempt".to_string()
    } else {
        format!("{n} attempts")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_transient_and_conflict_are_retryable() {
        assert!(Error::transient("observe", "503").is_retryable());
        assert!(!Error::backend("apply", "forbidden").is_retryable());
        assert!(!Error::invalid("replicas", "zero").is_retryable());
        assert!(!Error::not_found("deployment d-1").is_retryable());
    }

    #[test]
    fn a_persistent_failure_is_retryable_later_but_not_at_once() {
        let e = Error::Persistent {
            operation: "apply web".into(),
            attempts: 4,
            elapsed: std::time::Duration::from_millis(1500),
            source: "503 service unavailable".into(),
        };
        assert!(e.is_retryable() && e.is_persistent());
        assert_eq!(e.retry(), crate::retry::Retry::No);
        assert_eq!(
            e.chain(),
            "apply web: gave up after 4 attempts in 1.5s: 503 service unavailable"
        );
        let t = Error::transient("observe", "503");
        assert!(!t.is_persistent());
        assert_eq!(t.retry(), crate::retry::Retry::Yes);
        assert_eq!(
            Error::Conflict {
                deployment: "d-1".into(),
                expected: 2,
                actual: 3
            }
            .retry(),
            crate::retry::Retry::No
        );
    }

    #[test]
    fn chain_includes_sources() {
        let e = Error::backend("apply web", "403 forbidden");
        assert_eq!(e.chain(), "apply web failed: 403 forbidden");
    }
}
