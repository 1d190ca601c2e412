//! Traffic mirroring: a copy of a share of the requests goes to a route's mirror group in a
//! background task; its response is recorded in the group's statistics and discarded.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use bytes::Bytes;
use http::header::{HeaderMap, HeaderName, HeaderValue};
use http::uri::PathAndQuery;
use http::{Method, Request, Version, request};
use http_body_util::BodyExt;
use tokio::sync::OwnedSemaphorePermit;
use tokio::time::Instant;

use super::forward::{
    Lease, ProxyBody, closed_early, describe, empty, full, upstream_request, upstream_uri,
    version_of,
};
use super::{FORCE, Inner, Upstream};

/// Most mirror copies in flight at once; a copy beyond is skipped.
pub(super) const MIRROR_LIMIT: usize = 64;

const X_DEPLOYKIT_MIRROR: HeaderName = HeaderName::from_static("x-deploykit-mirror");

impl Inner {
    /// Sends a copy of a request to the mirror group of `host`'s route when one is due. `primary`
    /// is the group serving the request, `parts` and `body` the request as received (the body
    /// fully buffered). Returns at once; the copy runs in a spawned task.
    pub(super) fn mirror(
        self: &Arc<Self>,
        host: &str,
        primary: &str,
        parts: &request::Parts,
        body: &Bytes,
        peer: SocketAddr,
    ) {
        let Some(group) = self
            .current
            .load()
            .route(host)
            .and_then(|route| route.mirror_due(primary))
        else {
            return;
        };
        let Some(lease) = self.lease(|snapshot| snapshot.route(host)?.pick_in(&group, None)) else {
            return;
        };
        let Ok(permit) = self.mirror_permits.clone().try_acquire_owned() else {
            self.mirror_skipped.fetch_add(1, Ordering::Relaxed);
            tracing::debug!(%group, "proxy: too many mirror copies in flight, copy skipped");
            return;
        };
        let protocol = lease.pick.policy.protocol;
        let upstream = &lease.pick.upstream;
        let template = match upstream_request(parts, empty(), upstream, peer, false, protocol) {
            Ok(request) => request.into_parts().0,
            Err(error) => {
                tracing::debug!(%group, %error, "proxy: request cannot be mirrored");
                return;
            }
        };
        let mut headers = template.headers;
        headers.insert(X_DEPLOYKIT_MIRROR, HeaderValue::from_static("1"));
        let copy = Copy {
            host: host.to_owned(),
            method: template.method,
            path: template
                .uri
                .path_and_query()
                .cloned()
                .unwrap_or_else(|| PathAndQuery::from_static("/")),
            headers,
            body: body.clone(),
        };
        tokio::spawn(copy.run(self.clone(), lease, permit));
    }
}

/// A mirror copy of one request.
struct Copy {
    host: String,
    method: Method,
    path: PathAndQuery,
    /// Headers as rewritten for an upstream, plus the mirror marker.
    headers: HeaderMap,
    body: Bytes,
}

impl Copy {
    /// Sends the copy, gives up when the proxy is shut down by force.
    async fn run(self, inner: Arc<Inner>, lease: Lease, permit: OwnedSemaphorePermit) {
        let mut shutdown = inner.shutdown.subscribe();
        tokio::select! {
            () = self.send(&inner, lease) => {}
            _ = shutdown.wait_for(|s| *s == FORCE) => {}
        }
        drop(permit);
    }

    /// Sends the copy to the leased instance (and once more to another instance of the group
    /// when the first failed before answering, as for client requests), records the outcome in
    /// the group's statistics and reads the response body to its end, all within
    /// `upstream_timeout`. The lease is held until then.
    async fn send(&self, inner: &Inner, mut lease: Lease) {
        let started = Instant::now();
        let deadline = started + inner.config.upstream_timeout;
        let mut retried = false;
        let response = loop {
            let upstream = &lease.pick.upstream;
            let protocol = lease.pick.policy.protocol;
            let request = match self.request(upstream, version_of(protocol)) {
                Ok(request) => request,
                Err(error) => {
                    tracing::debug!(%error, "proxy: mirror request cannot be built");
                    return;
                }
            };
            let sent = inner.send(upstream, protocol, request);
            let error = match tokio::time::timeout_at(deadline, sent).await {
                Ok(Ok(response)) => break response,
                Ok(Err(error)) => error,
                Err(_) => {
                    inner
                        .stats
                        .record(&lease.pick.group, true, started.elapsed());
                    tracing::debug!(upstream = %upstream.id, "proxy: mirror copy timed out");
                    return;
                }
            };
            let resendable =
                error.is_connect() || (self.method.is_idempotent() && closed_early(&error));
            if resendable && !retried {
                retried = true;
                let (group, exclude) = (&lease.pick.group, upstream.id.as_str());
                let next = inner
                    .lease(|snapshot| snapshot.route(&self.host)?.pick_in(group, Some(exclude)));
                if let Some(next) = next {
                    lease = next;
                    continue;
                }
            }
            inner
                .stats
                .record(&lease.pick.group, true, started.elapsed());
            tracing::debug!(
                upstream = %upstream.id,
                error = %describe(&error),
                "proxy: mirror copy failed",
            );
            return;
        };
        inner.stats.record(
            &lease.pick.group,
            response.status().is_server_error(),
            started.elapsed(),
        );
        // Discard the body, but read it so that the connection can be reused.
        let mut body = response.into_body();
        let _ = tokio::time::timeout_at(deadline, async {
            while let Some(Ok(_)) = body.frame().await {}
        })
        .await;
        drop(lease);
    }

    /// The copy addressed to the instance at `addr`.
    fn request(
        &self,
        upstream: &Upstream,
        version: Version,
    ) -> Result<Request<ProxyBody>, http::Error> {
        let uri = upstream_uri(upstream, self.path.as_str())?;
        let mut request = Request::new(full(self.body.clone()));
        *request.method_mut() = self.method.clone();
        *request.uri_mut() = uri;
        *request.version_mut() = version;
        *request.headers_mut() = self.headers.clone();
        Ok(request)
    }
}
