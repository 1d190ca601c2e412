//! deploykit's builds: from source to artifacts a deployment can run.
//!
//! - [`CommandStage`]: a stage of commands (prepare, compile, test, package, or your own),
//!   with typed outputs ([`Output`]: static assets, configuration, documentation, files) and
//!   [`Check`]s its outputs must pass before later stages see them.
//! - [`ImageStage`]: packages earlier outputs into an OCI image (on a base pulled by digest),
//!   written to an OCI layout without a container daemon; its artifact's digest is the image
//!   manifest's, which the Kubernetes backend pins.
//! - [`Pipeline`]: runs stages in order, passes each stage's output paths to later ones (in
//!   [`output_variable`]s), cleans up on success and failure, and with a [`BuildCache`] skips
//!   every stage whose inputs did not change, restoring its outputs; [`Build::explain`] says
//!   why each stage ran or was skipped.
//! - [`attest`]: a signed SLSA provenance statement and CycloneDX SBOM for every image, attached
//!   as OCI referrers, and [`attest::SignatureVerifier`], which refuses to deploy an image
//!   without a valid signature.

pub mod attest;
pub mod cache;
pub mod command;
pub mod files;
pub mod image_stage;
pub mod pipeline;

pub use cache::BuildCache;
pub use command::{Check, CommandStage, Output};
pub use image_stage::ImageStage;
pub use pipeline::{Build, Outcome, Pipeline, StageRun, output_variable};
