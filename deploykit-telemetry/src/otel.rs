//! Export deploykit's [`tracing`] spans over [OTLP] (feature `otel`).
//!
//! Every deployment runs in a span `deployment{id, service, environment, revision}` and every
//! backup in a span `backup{repository, kind}`; the orchestrator's and backends' events are
//! recorded inside them. This module sends those spans, through [`tracing-opentelemetry`], to
//! an OpenTelemetry collector (or anything that accepts OTLP: Jaeger, Tempo, a hosted
//! backend) as OTLP over HTTP with protobuf bodies, e.g. to
//! `http://127.0.0.1:4318/v1/traces`. gRPC is not supported.
//!
//! - [`install`] is the one-call setup: it installs a global `tracing` subscriber that does
//!   nothing but export spans. It does **not** log; a program that also wants log lines should
//!   compose its own subscriber with [`layer`] instead.
//! - [`layer`] returns the OpenTelemetry layer to add to a subscriber of the caller's own
//!   (next to a `fmt` layer, filters, ...).
//!
//! Both return an [`OtelGuard`]: spans are exported in batches from a background thread, and
//! the guard flushes the last batch and shuts the exporter down when it is dropped or
//! [`shut down`](OtelGuard::shutdown) explicitly. Keep it alive for as long as the program
//! traces, typically as a variable of `main`.
//!
//! The exporter uses its own blocking HTTP client on its own thread, so it needs no async
//! runtime and works from synchronous programs and from any runtime. Flushing blocks the
//! calling thread until the last batch is sent (at most a few seconds): from async code, call
//! [`OtelGuard::shutdown`] in `spawn_blocking` or after the runtime has stopped. `https://`
//! endpoints use rustls with the Mozilla (webpki) root certificates.
//!
//! [OTLP]: https://opentelemetry.io/docs/specs/otlp/
//! [`tracing-opentelemetry`]: https://docs.rs/tracing-opentelemetry

use std::fmt;

use opentelemetry::trace::TracerProvider as _;
use opentelemetry_otlp::{Protocol, SpanExporter, WithExportConfig};
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::trace::{SdkTracer, SdkTracerProvider};
use tracing::Subscriber;
use tracing_opentelemetry::OpenTelemetryLayer;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::registry::LookupSpan;

use deploykit_core::{Error, Result};

/// The instrumentation scope the spans are reported under.
const SCOPE: &str = "deploykit";

/// The [`tracing_subscriber::Layer`] that turns `tracing` spans into OpenTelemetry spans, as
/// returned by [`layer`].
pub type OtelLayer<S> = OpenTelemetryLayer<S, SdkTracer>;

/// Installs a global `tracing` subscriber that exports every span as OTLP over HTTP/protobuf to
/// `endpoint` (the full URL, e.g. `http://127.0.0.1:4318/v1/traces`), reported under the
/// resource attribute `service.name = service_name`.
///
/// The subscriber is `tracing_subscriber::registry()` with the OpenTelemetry layer and nothing
/// else: no log output and no level filter. To add either, build the subscriber yourself with
/// [`layer`].
///
/// # Errors
///
/// [`Error::InvalidSpec`] (field `otel.endpoint`) for an endpoint that is not an `http://` or
/// `https://` URL; [`Error::Backend`] (operation `opentelemetry`) if the exporter cannot be
/// built or a global subscriber is installed already.
///
/// # Example
///
/// ```no_run
/// # fn main() -> deploykit_core::Result<()> {
/// let otel = deploykit_telemetry::otel::install("http://127.0.0.1:4318/v1/traces", "deployer")?;
/// // ... deploy: every `deployment` and `backup` span is exported ...
/// otel.shutdown()?; // or let it drop: the last batch is flushed either way
/// # Ok(())
/// # }
/// ```
pub fn install(endpoint: &str, service_name: &str) -> Result<OtelGuard> {
    let (layer, guard) = layer(endpoint, service_name)?;
    let subscriber = tracing_subscriber::registry().with(layer);
    tracing::subscriber::set_global_default(subscriber).map_err(|e| {
        Error::backend(
            "opentelemetry",
            format!("cannot install the tracing subscriber: {e}"),
        )
    })?;
    Ok(guard)
}

/// The OpenTelemetry layer exporting to `endpoint` as `service_name` (see [`install`]), for a
/// subscriber of the caller's own, and the guard that flushes it.
///
/// # Errors
///
/// As [`install`], except that nothing is installed here.
///
/// # Example
///
/// Spans exported, and logs printed, by one subscriber:
///
/// ```no_run
/// use tracing_subscriber::layer::SubscriberExt as _;
///
/// # fn main() -> deploykit_core::Result<()> {
/// let (otel, guard) = deploykit_telemetry::otel::layer("http://127.0.0.1:4318/v1/traces", "deployer")?;
/// let subscriber = tracing_subscriber::registry()
///     .with(otel)
///     .with(tracing_subscriber::fmt::layer());
/// tracing::subscriber::set_global_default(subscriber).expect("no subscriber yet");
/// // ... deploy ...
/// drop(guard); // flushes the last batch
/// # Ok(())
/// # }
/// ```
pub fn layer<S>(endpoint: &str, service_name: &str) -> Result<(OtelLayer<S>, OtelGuard)>
where
    S: Subscriber + for<'span> LookupSpan<'span>,
{
    check_endpoint(endpoint)?;
    let exporter = SpanExporter::builder()
        .with_http()
        .with_protocol(Protocol::HttpBinary)
        .with_endpoint(endpoint)
        .build()
        .map_err(|e| {
            Error::backend(
                "opentelemetry",
                format!("cannot build the OTLP exporter to {endpoint}: {e}"),
            )
        })?;
    let provider = SdkTracerProvider::builder()
        .with_batch_exporter(exporter)
        .with_resource(
            Resource::builder()
                .with_service_name(service_name.to_owned())
                .build(),
        )
        .build();
    let layer = tracing_opentelemetry::layer().with_tracer(provider.tracer(SCOPE));
    Ok((
        layer,
        OtelGuard {
            provider: Some(provider),
        },
    ))
}

/// Rejects what the exporter would not treat as the URL to POST to: an empty endpoint would
/// silently fall back to the `OTEL_EXPORTER_OTLP_*` environment variables.
fn check_endpoint(endpoint: &str) -> Result<()> {
    let rest = endpoint
        .strip_prefix("http://")
        .or_else(|| endpoint.strip_prefix("https://"))
        .ok_or_else(|| {
            Error::invalid(
                "otel.endpoint",
                format!(
                    "`{endpoint}` is not an http:// or https:// URL \
                     (e.g. http://127.0.0.1:4318/v1/traces)"
                ),
            )
        })?;
    let host = rest.split(['/', '?', '#']).next().unwrap_or_default();
    if host.is_empty() || endpoint.chars().any(char::is_whitespace) {
        return Err(Error::invalid(
            "otel.endpoint",
            format!("`{endpoint}` has no host or contains whitespace"),
        ));
    }
    Ok(())
}

/// Keeps the OTLP export running; flushes the spans still buffered and shuts the exporter down
/// when dropped or [`shut down`](Self::shutdown).
///
/// Dropping ignores a failed export; [`shutdown`](Self::shutdown) reports it.
#[must_use = "dropping the guard shuts the OTLP export down at once"]
pub struct OtelGuard {
    /// `None` once shut down.
    provider: Option<SdkTracerProvider>,
}

impl OtelGuard {
    /// The OpenTelemetry tracer provider spans are exported through, e.g. to register it as
    /// the global provider with `opentelemetry::global::set_tracer_provider` or to
    /// `force_flush` it.
    pub fn provider(&self) -> &SdkTracerProvider {
        self.provider
            .as_ref()
            .expect("the provider is only taken by shutdown and drop")
    }

    /// Exports the spans still buffered and shuts the exporter down; spans that end afterwards
    /// are dropped. Blocks until the last batch is sent or times out.
    ///
    /// # Errors
    ///
    /// [`Error::Backend`] (operation `opentelemetry`) if the last export or the shutdown fails,
    /// e.g. when the collector cannot be reached.
    pub fn shutdown(mut self) -> Result<()> {
        match self.provider.take() {
            Some(provider) => provider.shutdown().map_err(|e| {
                Error::backend(
                    "opentelemetry",
                    format!("cannot flush and shut down the OTLP export: {e}"),
                )
            }),
            None => Ok(()),
        }
    }
}

impl Drop for OtelGuard {
    fn drop(&mut self) {
        if let Some(provider) = self.provider.take() {
            let _ = provider.shutdown();
        }
    }
}

impl fmt::Debug for OtelGuard {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("OtelGuard")
            .field("running", &self.provider.is_some())
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints_must_be_http_urls() {
        for ok in [
            "http://127.0.0.1:4318/v1/traces",
            "https://otlp.example.com/v1/traces",
            "http://collector:4318",
        ] {
            check_endpoint(ok).unwrap();
        }
        for bad in [
            "",
            "127.0.0.1:4318",
            "grpc://collector:4317",
            "http://",
            "http:///v1/traces",
            "http://a b/v1/traces",
        ] {
            let e = check_endpoint(bad).unwrap_err();
            assert!(
                matches!(&e, Error::InvalidSpec { field, .. } if field == "otel.endpoint"),
                "{bad}: {e}"
            );
        }
    }
}
