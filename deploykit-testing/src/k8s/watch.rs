//! Watches: the stream of events a `?watch=true` request answers, first from the store's
//! history (for a watch that resumes from a `resourceVersion`), then live, each open watch
//! being an [`Observer`] of the store.

use std::convert::Infallible;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::BodyExt as _;
use serde_json::{Value, json};

use super::FakeBody;
use super::request::{Fail, Params, Target};
use super::select::Selector;
use super::store::{Event, Observer, Store};

/// One open watch: sends the changes to the collection it watches down its response stream.
struct Watcher {
    target: Target,
    selector: Selector,
    tx: tokio::sync::mpsc::UnboundedSender<Bytes>,
}

impl Observer for Watcher {
    fn observe(&mut self, event: &Event) -> bool {
        if !self.target.covers(&event.key) || !self.selector.matches(&event.object) {
            return !self.tx.is_closed();
        }
        let mut v = event.object.clone();
        v["apiVersion"] = Value::String(self.target.api_version());
        self.tx.send(event_line(event.kind, &v)).is_ok()
    }
}

/// Answers watch request `q` on collection `t`: the events it asks for up to now, then every
/// change `store` makes, until `timeoutSeconds` pass or the client hangs up.
pub(super) fn watch(store: &mut Store, t: &Target, q: &Params) -> Result<FakeBody, Fail> {
    let selector = Selector::from_params(q)?;
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<Bytes>();
    let from: Option<u64> = q
        .get("resourceVersion")
        .filter(|v| !v.is_empty())
        .and_then(|v| v.parse().ok());
    let mut register = true;
    let initial = q.flag("sendInitialEvents");
    if initial || from.is_none_or(|rv| rv == 0) {
        for (_, v) in store.matching(t, q)? {
            let _ = tx.send(event_line("ADDED", &store.present(t, &v)));
        }
        if initial {
            let bookmark = json!({
                "apiVersion": t.api_version(),
                "kind": store.kind_for(t),
                "metadata": {
                    "resourceVersion": store.rv.to_string(),
                    "annotations": { "k8s.io/initial-events-end": "true" },
                },
            });
            let _ = tx.send(event_line("BOOKMARK", &bookmark));
        }
    } else if let Some(rv) = from {
        match store.changes_since(rv) {
            Err(oldest) => {
                let gone = Fail::new(
                    410,
                    "Expired",
                    format!("too old resource version: {rv} ({oldest})"),
                );
                let _ = tx.send(event_line("ERROR", &gone.status()));
                register = false;
            }
            Ok(changes) => {
                for e in changes {
                    if t.covers(&e.key) && selector.matches(&e.object) {
                        let _ = tx.send(event_line(e.kind, &store.present(t, &e.object)));
                    }
                }
            }
        }
    }
    if register {
        store.observe(Box::new(Watcher {
            target: t.clone(),
            selector,
            tx,
        }));
    } else {
        drop(tx);
    }
    let timeout = q
        .get("timeoutSeconds")
        .and_then(|s| s.parse().ok())
        .unwrap_or(1800u64);
    let (mut sender, body) = http_body_util::channel::Channel::<Bytes, Infallible>::new(64);
    tokio::spawn(async move {
        let deadline = tokio::time::sleep(Duration::from_secs(timeout));
        tokio::pin!(deadline);
        loop {
            tokio::select! {
                _ = &mut deadline => break,
                line = rx.recv() => match line {
                    Some(line) => {
                        if sender.send_data(line).await.is_err() {
                            break;
                        }
                    }
                    None => break,
                },
            }
        }
    });
    Ok(body.boxed())
}

fn event_line(kind: &str, object: &Value) -> Bytes {
    let mut line =
        serde_json::to_vec(&json!({ "type": kind, "object": object })).expect("JSON serialises");
    line.push(b'\n');
    Bytes::from(line)
}
