//! Watches: the stream of events a `?watch=true` request answers, and the history that
//! watches resuming from a `resourceVersion` replay.

use std::convert::Infallible;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::BodyExt as _;
use serde_json::{Value, json};

use super::request::{Fail, Params, Target};
use super::routes::Reply;
use super::select::{
    FieldReq, LabelReq, fields_match, labels_match, parse_field_selector, parse_label_selector,
};
use super::store::{Key, State};

/// How many watch events are remembered for watches that resume from a `resourceVersion`.
const HISTORY: usize = 256;

pub(super) struct Event {
    pub(super) rv: u64,
    pub(super) kind: &'static str,
    pub(super) key: Key,
    pub(super) object: Value,
}

pub(super) struct Watcher {
    pub(super) group: String,
    pub(super) plural: String,
    pub(super) namespace: Option<String>,
    pub(super) api_version: String,
    pub(super) labels: Vec<LabelReq>,
    pub(super) fields: Vec<FieldReq>,
    pub(super) tx: tokio::sync::mpsc::UnboundedSender<Bytes>,
}

impl State {
    pub(super) fn emit(&mut self, kind: &'static str, key: &Key, object: Value) {
        let rv = self.rv;
        self.watchers.retain(|w| {
            if w.group != key.group
                || w.plural != key.plural
                || w.namespace.as_ref().is_some_and(|ns| *ns != key.namespace)
                || !labels_match(&object, &w.labels)
                || !fields_match(&object, &w.fields)
            {
                return !w.tx.is_closed();
            }
            let mut v = object.clone();
            v["apiVersion"] = Value::String(w.api_version.clone());
            w.tx.send(event_line(kind, &v)).is_ok()
        });
        self.history.push_back(Event {
            rv,
            kind,
            key: key.clone(),
            object,
        });
        while self.history.len() > HISTORY {
            if let Some(e) = self.history.pop_front() {
                self.history_floor = e.rv;
            }
        }
    }

    pub(super) fn watch(&mut self, t: &Target, q: &Params) -> Result<Reply, Fail> {
        let labels = parse_label_selector(q.get("labelSelector").unwrap_or(""))?;
        let fields = parse_field_selector(q.get("fieldSelector").unwrap_or(""))?;
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<Bytes>();
        let from: Option<u64> = q
            .get("resourceVersion")
            .filter(|v| !v.is_empty())
            .and_then(|v| v.parse().ok());
        let in_scope = |k: &Key| {
            k.group == t.group
                && k.plural == t.plural
                && t.namespace.as_ref().is_none_or(|ns| *ns == k.namespace)
        };
        let mut register = true;
        let initial = q.flag("sendInitialEvents");
        if initial || from.is_none_or(|rv| rv == 0) {
            for (_, v) in self.matching(t, q)? {
                let _ = tx.send(event_line("ADDED", &self.present(t, &v)));
            }
            if initial {
                let bookmark = json!({
                    "apiVersion": t.api_version(),
                    "kind": self.kind_for(t),
                    "metadata": {
                        "resourceVersion": self.rv.to_string(),
                        "annotations": { "k8s.io/initial-events-end": "true" },
                    },
                });
                let _ = tx.send(event_line("BOOKMARK", &bookmark));
            }
        } else if let Some(rv) = from {
            if rv < self.history_floor {
                let gone = Fail::new(
                    410,
                    "Expired",
                    format!(
                        "too old resource version: {rv} ({})",
                        self.history_floor + 1
                    ),
                );
                let _ = tx.send(event_line("ERROR", &gone.status()));
                register = false;
            } else {
                for e in self
                    .history
                    .iter()
                    .filter(|e| e.rv > rv && in_scope(&e.key))
                {
                    if labels_match(&e.object, &labels) && fields_match(&e.object, &fields) {
                        let _ = tx.send(event_line(e.kind, &self.present(t, &e.object)));
                    }
                }
            }
        }
        if register {
            self.watchers.push(Watcher {
                group: t.group.clone(),
                plural: t.plural.clone(),
                namespace: t.namespace.clone(),
                api_version: t.api_version(),
                labels,
                fields,
                tx,
            });
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
        Ok(Reply::Stream(body.boxed()))
    }
}

fn event_line(kind: &str, object: &Value) -> Bytes {
    let mut line =
        serde_json::to_vec(&json!({ "type": kind, "object": object })).expect("JSON serialises");
    line.push(b'\n');
    Bytes::from(line)
}
