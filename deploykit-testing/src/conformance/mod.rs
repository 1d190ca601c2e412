//! Conformance suites: plain `pub async fn` checks that every backend's tests call, so every
//! backend is held to the same behaviour. A failed check panics with a message that says what
//! the contract is.
//!
//! - [`environment`]: [`deploykit_core::Environment`] backends.
//! - [`state_store`]: [`deploykit_core::StateStore`] backends.
//! - [`backup_target`]: [`deploykit_core::BackupTarget`] backends (filesystem, in-memory,
//!   object stores).
//! - [`log_source`]: [`deploykit_logs::LogSource`] backends, driven through a [`log_source::LogWorld`].
//! - [`monitor`]: [`deploykit_core::Monitor`] backends, scripted by the caller.

pub mod backup_target;
pub mod environment;
pub mod log_source;
pub mod monitor;
pub mod state_store;
