//! OCI container images without a container daemon, as ko and jib make them.
//!
//! - [`Layer`]: build outputs as a reproducible gzip tarball (sorted entries, fixed times,
//!   fixed owners), so the same files always make the same layer digest.
//! - [`Image`]: an optional base image pulled by digest, layers, and what runs, written to an
//!   OCI image layout ([`Layout`]) that skopeo, crane and container runtimes read.
//! - [`Registry`]: the OCI distribution API: push a layout's image (auth, chunked upload,
//!   cross-repository mount, manifest by digest) and pull one.
//!
//! The manifest digest a push reports is what a [`deploykit_core::Revision`]'s artifact
//! carries, and what the Kubernetes backend pins (`repository@sha256:…`).
//!
//! ```no_run
//! # async fn push() -> deploykit_core::Result<()> {
//! use deploykit_image::{Image, Layer, Layout, Reference, Registry};
//! let layout = Layout::open_or_create(".deploykit/images")?;
//! let mut app = Layer::new();
//! app.add_tree("srv", std::path::Path::new("dist"))?;
//! let built = Image::scratch().layer(app).entrypoint(["/srv/server"]).build(&layout, "web")?;
//! let target: Reference = "127.0.0.1:5000/shop/web:v1".parse()?;
//! let report = Registry::new().push(&layout, &built.descriptor, &target, &[]).await?;
//! println!("pushed {}", target.with_digest(report.digest)?);
//! # Ok(())
//! # }
//! ```

pub mod image;
pub mod layer;
pub mod layout;
pub mod oci;
pub mod reference;
pub mod registry;

pub use image::{Built, Image};
pub use layer::{Layer, LayerInfo};
pub use layout::Layout;
pub use reference::Reference;
pub use registry::{PushReport, Registry};
