//! deploykit on Kubernetes (being written).

pub mod render;
