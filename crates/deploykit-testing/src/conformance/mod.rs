//! Conformance suites: plain `pub async fn` checks that every backend's tests call, so every
//! backend is held to the same behaviour. A failed check panics with a message that says what
//! the contract is.

pub mod environment;
pub mod state_store;
