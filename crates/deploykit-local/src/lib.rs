//! deploykit on one machine: each revision's instances run as supervised child processes behind
//! a built-in reverse proxy.

pub mod daemon;
mod environment;
pub mod loadgen;
pub mod logs;
pub mod probe;
pub mod process;
pub mod proxy;
mod state;

pub use daemon::{DaemonInfo, LocalClient};
pub use environment::{LOCAL_METRICS, LocalEnvironment, LocalOptions};
