//! deploykit on Kubernetes (being written).

pub mod render;
mod environment;
mod retry;
pub use environment::{KubeEnvironment, KubeOptions};
pub use retry::RetryPolicy;
pub mod backup;
#[cfg(feature = "fake")]
pub mod fake;
pub mod store;
