//! # deploykit-testing
//!
//! Test support for deploykit and for code built on it:
//!
//! - [`SimCluster`]: a simulated cluster implementing [`deploykit_core::Environment`] and
//!   [`deploykit_core::Monitor`], with start latency, scripted per-artifact behaviour
//!   ([`Behavior`]: slow starts, readiness or startup failures, crash loops) and injected API
//!   errors ([`Fault`]), on tokio's clock.
//! - [`MemoryStore`]: an in-memory [`deploykit_core::StateStore`].
//! - [`SimClock`]: wall-clock time that follows tokio's (paused) clock.
//! - [`conformance`]: the suites every backend's tests run.

mod clock;
pub mod conformance;
mod sim;
mod store;

pub use clock::SimClock;
pub use sim::{Behavior, Fault, Op, SimCluster, SimConfig, Snapshot};
pub use store::MemoryStore;
