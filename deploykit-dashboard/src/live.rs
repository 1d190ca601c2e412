//! Live updates: the journal's events as server-sent events.
//!
//! One task follows the store's journals ([`JournalFollower`]) and broadcasts each event as an
//! SSE frame; each open page holds a stream of that broadcast. A page that falls more than
//! the broadcast's capacity behind is told to `resync` (it re-renders), never blocks the
//! others.

use std::convert::Infallible;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use deploykit_core::Notification;
use deploykit_core::event::JournalFollower;
use http::{Response, StatusCode, header};
use http_body_util::BodyExt;
use hyper::body::Frame;
use tokio::sync::{broadcast, mpsc, watch};

use crate::Body;

/// How often the journals are read.
const POLL: Duration = Duration::from_millis(300);
/// A comment sent this often keeps proxies and the browser from closing a quiet stream.
const KEEPALIVE: Duration = Duration::from_secs(15);

/// The SSE frame of one event: `event: deployment`, its [`Notification`] as JSON.
pub(crate) fn frame(event: &deploykit_core::Event) -> Bytes {
    let data = serde_json::to_string(&Notification::from(event)).unwrap_or_default();
    Bytes::from(format!("event: deployment\ndata: {data}\n\n"))
}

/// Follows the journals until `stop`, broadcasting a frame per event.
pub(crate) async fn feed(
    mut follower: JournalFollower,
    events: broadcast::Sender<Bytes>,
    mut stop: watch::Receiver<bool>,
) {
    let mut failing = false;
    loop {
        match follower.poll().await {
            Ok(batch) => {
                failing = false;
                for event in &batch {
                    // No receiver (no page open) is not an error.
                    let _ = events.send(frame(event));
                }
            }
            Err(e) if !failing => {
                failing = true;
                tracing::warn!(error = %e.chain(), "dashboard: cannot read the journal");
            }
            Err(_) => {}
        }
        tokio::select! {
            () = tokio::time::sleep(POLL) => {}
            _ = stop.wait_for(|s| *s) => return,
        }
    }
}

/// A response body fed from a channel, one frame per message.
struct ChannelBody(mpsc::Receiver<Bytes>);

impl hyper::body::Body for ChannelBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        self.0.poll_recv(cx).map(|m| m.map(|b| Ok(Frame::data(b))))
    }
}

/// `/events`: a stream of the broadcast for one page, until it goes away or `stop`.
pub(crate) fn stream(
    mut events: broadcast::Receiver<Bytes>,
    mut stop: watch::Receiver<bool>,
) -> Response<Body> {
    let (tx, rx) = mpsc::channel::<Bytes>(64);
    tokio::spawn(async move {
        if tx
            .send(Bytes::from_static(b"retry: 2000\n: connected\n\n"))
            .await
            .is_err()
        {
            return;
        }
        loop {
            let frame = tokio::select! {
                received = events.recv() => match received {
                    Ok(frame) => frame,
                    Err(broadcast::error::RecvError::Lagged(_)) => {
                        Bytes::from_static(b"event: resync\ndata: {}\n\n")
                    }
                    Err(broadcast::error::RecvError::Closed) => return,
                },
                () = tokio::time::sleep(KEEPALIVE) => Bytes::from_static(b": keepalive\n\n"),
                _ = stop.wait_for(|s| *s) => return,
            };
            if tx.send(frame).await.is_err() {
                return;
            }
        }
    });
    let mut r = Response::new(ChannelBody(rx).boxed());
    *r.status_mut() = StatusCode::OK;
    let h = r.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("text/event-stream"),
    );
    h.insert(
        header::CACHE_CONTROL,
        header::HeaderValue::from_static("no-store"),
    );
    r
}
