//! Pod logs: the lines containers wrote (put there by [`FakeApiServer::append_pod_log`]),
//! served by the `log` subresource of pods, and the open `follow` streams that receive lines
//! appended later. A layer-4 module, beside `watch`: it reads the store and observes it (a
//! deleted pod's logs go with it and its follow streams end, as on a real node).
//!
//! [`FakeApiServer::append_pod_log`]: super::FakeApiServer::append_pod_log

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http_body_util::channel::Channel;
use http_body_util::{BodyExt as _, Full};
use serde_json::Value;
use tokio::sync::{mpsc, oneshot};

use super::FakeBody;
use super::patch::meta_str;
use super::request::{Fail, Key, Params, Target};
use super::store::{Event, Observer, Store};

/// Whose lines: one container of one pod, the pod told apart from an earlier one of the same
/// name by its uid.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
struct LogKey {
    namespace: String,
    pod: String,
    uid: String,
    container: String,
}

/// One line as the container runtime keeps it.
struct Line {
    timestamp_ns: i64,
    text: String,
}

impl Line {
    /// The line as a log response carries it: `<RFC 3339 nano> <text>\n` with timestamps,
    /// `<text>\n` without.
    fn render(&self, timestamps: bool) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.text.len() + 32);
        if timestamps {
            out.extend_from_slice(rfc3339_nano(self.timestamp_ns).as_bytes());
            out.push(b' ');
        }
        out.extend_from_slice(self.text.as_bytes());
        out.push(b'\n');
        out
    }
}

/// An open `follow=true` response.
struct Follower {
    key: LogKey,
    timestamps: bool,
    /// What is left of `limitBytes`, if it was given.
    remaining: Option<usize>,
    tx: mpsc::UnboundedSender<Bytes>,
    /// Cuts the stream abruptly (dropped without sending: the stream ends after what was
    /// sent).
    cut: oneshot::Sender<()>,
}

impl Follower {
    /// Sends `line`; false once the follower is gone (hung up, or its byte limit reached).
    fn send(&mut self, line: &Line) -> bool {
        let mut bytes = line.render(self.timestamps);
        if let Some(remaining) = &mut self.remaining {
            bytes.truncate(*remaining);
            *remaining -= bytes.len();
        }
        let sent = self.tx.send(Bytes::from(bytes)).is_ok();
        sent && self.remaining != Some(0)
    }
}

#[derive(Default)]
struct Inner {
    lines: BTreeMap<LogKey, Vec<Line>>,
    followers: Vec<Follower>,
    /// The last timestamp given to an appended line: stamps only go forward.
    last_stamp: i64,
    /// Whether the store observer that forgets deleted pods' logs is registered.
    observing: bool,
}

/// The pod logs of one server. Clones share them (the store observer holds one).
#[derive(Clone, Default)]
pub(super) struct Logs {
    inner: Arc<Mutex<Inner>>,
}

/// The query parameters of a log request (as kube's `LogParams` sends them).
struct LogQuery {
    container: Option<String>,
    follow: bool,
    timestamps: bool,
    since_ns: Option<i64>,
    tail_lines: Option<usize>,
    limit_bytes: Option<usize>,
}

impl LogQuery {
    fn parse(q: &Params) -> Result<Self, Fail> {
        let number = |key: &str| -> Result<Option<i64>, Fail> {
            q.get(key)
                .map(|v| {
                    v.parse::<i64>().map_err(|_| {
                        Fail::bad_request(format!("{key}: invalid value {v:?}: not an integer"))
                    })
                })
                .transpose()
        };
        let since_time = q
            .get("sinceTime")
            .map(|v| {
                deploykit_logs::parse_timestamp_ns(v).ok_or_else(|| {
                    Fail::bad_request(format!(
                        "sinceTime: invalid value {v:?}: not an RFC 3339 time"
                    ))
                })
            })
            .transpose()?;
        let since_seconds = number("sinceSeconds")?;
        if since_time.is_some() && since_seconds.is_some() {
            return Err(Fail::bad_request(
                "at most one of sinceTime or sinceSeconds may be specified",
            ));
        }
        if since_seconds.is_some_and(|s| s < 1) {
            return Err(Fail::bad_request(
                "sinceSeconds: Invalid value: must be greater than 0",
            ));
        }
        let non_negative = |key: &str| -> Result<Option<usize>, Fail> {
            match number(key)? {
                Some(n) if n < 0 => Err(Fail::bad_request(format!(
                    "{key}: Invalid value: {n}: must be greater than or equal to 0"
                ))),
                n => Ok(n.map(|n| usize::try_from(n).unwrap_or(usize::MAX))),
            }
        };
        Ok(LogQuery {
            container: q.get("container").map(str::to_string),
            follow: q.flag("follow"),
            timestamps: q.flag("timestamps"),
            since_ns: since_time.or_else(|| {
                since_seconds.map(|s| now_ns().saturating_sub(s.saturating_mul(1_000_000_000)))
            }),
            tail_lines: non_negative("tailLines")?,
            limit_bytes: non_negative("limitBytes")?,
        })
    }
}

impl Logs {
    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Registers, once, the store observer that drops the logs and ends the follow streams of
    /// deleted pods.
    fn observe_pods(&self, store: &mut Store) {
        let mut inner = self.lock();
        if !inner.observing {
            inner.observing = true;
            drop(inner);
            store.observe(Box::new(PodObserver { logs: self.clone() }));
        }
    }

    /// Appends `lines` to container `container` of pod `namespace`/`pod`, stamped `at` (or
    /// each with the next server time), and sends them to the open follow streams of that
    /// container. A text with newlines is several lines.
    pub(super) fn append(
        &self,
        store: &mut Store,
        namespace: &str,
        pod: &str,
        container: &str,
        at: Option<i64>,
        lines: &[String],
    ) -> Result<(), String> {
        let object = store
            .objects
            .get(&pod_key(namespace, pod))
            .map(|s| s.object.clone())
            .ok_or_else(|| format!("the fake API server has no pod {namespace}/{pod}"))?;
        if !containers(&object).iter().any(|c| c == container) {
            return Err(format!(
                "pod {namespace}/{pod} has no container {container:?} (it has {:?})",
                containers(&object)
            ));
        }
        self.observe_pods(store);
        let key = LogKey {
            namespace: namespace.to_string(),
            pod: pod.to_string(),
            uid: meta_str(&object, "uid").unwrap_or_default().to_string(),
            container: container.to_string(),
        };
        let mut inner = self.lock();
        let inner = &mut *inner;
        for text in lines.iter().flat_map(|l| l.split('\n')) {
            let timestamp_ns = match at {
                Some(at) => {
                    inner.last_stamp = inner.last_stamp.max(at);
                    at
                }
                None => {
                    inner.last_stamp = now_ns().max(inner.last_stamp + 1);
                    inner.last_stamp
                }
            };
            let line = Line {
                timestamp_ns,
                text: text.to_string(),
            };
            inner
                .followers
                .retain_mut(|f| f.key != key || f.send(&line));
            inner.lines.entry(key.clone()).or_default().push(line);
        }
        Ok(())
    }

    /// Ends every open follow stream abruptly, as a dropped connection would: what was not
    /// sent yet is lost, but for the first half of the next chunk (so a line may arrive cut
    /// off, without its newline).
    pub(super) fn cut(&self) {
        for follower in self.lock().followers.drain(..) {
            let _ = follower.cut.send(());
        }
    }

    /// How many follow streams are open (whose client has not hung up).
    pub(super) fn open_streams(&self) -> usize {
        let mut inner = self.lock();
        inner.followers.retain(|f| !f.tx.is_closed());
        inner.followers.len()
    }

    /// Answers `GET .../pods/{name}/log` with query `q`.
    pub(super) fn serve(
        &self,
        store: &mut Store,
        t: &Target,
        name: &str,
        q: &Params,
    ) -> Result<FakeBody, Fail> {
        let pod = store.get(t, name)?;
        let query = LogQuery::parse(q)?;
        let container = pick_container(&pod, name, query.container.as_deref())?;
        check_started(&pod, name, &container)?;
        self.observe_pods(store);
        let key = LogKey {
            namespace: t.namespace.clone().unwrap_or_default(),
            pod: name.to_string(),
            uid: meta_str(&pod, "uid").unwrap_or_default().to_string(),
            container,
        };
        let mut inner = self.lock();
        let kept = inner.lines.get(&key).map(Vec::as_slice).unwrap_or_default();
        let selected: Vec<&Line> = kept
            .iter()
            .filter(|l| query.since_ns.is_none_or(|s| l.timestamp_ns >= s))
            .collect();
        let skip = query
            .tail_lines
            .map_or(0, |n| selected.len().saturating_sub(n));
        let mut history: Vec<u8> = selected[skip..]
            .iter()
            .flat_map(|l| l.render(query.timestamps))
            .collect();
        let mut remaining = query.limit_bytes;
        if let Some(limit) = &mut remaining {
            history.truncate(*limit);
            *limit -= history.len();
        }
        if !query.follow || remaining == Some(0) {
            return Ok(Full::new(Bytes::from(history)).boxed());
        }
        let (tx, rx) = mpsc::unbounded_channel();
        if !history.is_empty() {
            let _ = tx.send(Bytes::from(history));
        }
        let (cut, cut_rx) = oneshot::channel();
        inner.followers.push(Follower {
            key,
            timestamps: query.timestamps,
            remaining,
            tx,
            cut,
        });
        Ok(follow_body(rx, cut_rx))
    }
}

/// A streaming response body carrying what arrives on `rx` until it closes, or until `cut`
/// fires (then it ends at once, after half of the next waiting chunk). When the client drops
/// the body, `rx` is dropped too, so the server sees the stream gone.
fn follow_body(mut rx: mpsc::UnboundedReceiver<Bytes>, mut cut: oneshot::Receiver<()>) -> FakeBody {
    let (mut sender, body) = Channel::<Bytes, Infallible>::new(64);
    let (hangup_tx, mut hangup) = oneshot::channel::<()>();
    tokio::spawn(async move {
        let cut_off = loop {
            let chunk = tokio::select! {
                biased;
                Ok(()) = &mut cut => break rx.try_recv().ok(),
                _ = &mut hangup => return,
                chunk = rx.recv() => chunk,
            };
            let Some(chunk) = chunk else { return };
            tokio::select! {
                _ = &mut hangup => return,
                sent = sender.send_data(chunk) => if sent.is_err() { return },
            }
        };
        if let Some(chunk) = cut_off {
            let half = chunk.slice(..chunk.len() / 2);
            if !half.is_empty() {
                let _ = sender.send_data(half).await;
            }
        }
    });
    body.map_frame(move |frame| {
        // The body owns the hang-up signal: dropping it (the client hung up) ends the task.
        let _owned = &hangup_tx;
        frame
    })
    .boxed()
}

/// Forgets the logs of deleted pods and ends their follow streams.
struct PodObserver {
    logs: Logs,
}

impl Observer for PodObserver {
    fn observe(&mut self, event: &Event) -> bool {
        if event.kind == "DELETED" && event.key.group.is_empty() && event.key.plural == "pods" {
            let uid = meta_str(&event.object, "uid").unwrap_or_default();
            let gone = |k: &LogKey| {
                k.namespace == event.key.namespace && k.pod == event.key.name && k.uid == uid
            };
            let mut inner = self.logs.lock();
            inner.lines.retain(|k, _| !gone(k));
            inner.followers.retain(|f| !gone(&f.key));
        }
        true
    }
}

fn pod_key(namespace: &str, pod: &str) -> Key {
    Key {
        group: String::new(),
        plural: "pods".into(),
        namespace: namespace.to_string(),
        name: pod.to_string(),
    }
}

/// The names of `pod`'s containers.
fn containers(pod: &Value) -> Vec<String> {
    pod.pointer("/spec/containers")
        .and_then(Value::as_array)
        .map(|cs| {
            cs.iter()
                .filter_map(|c| c.get("name")?.as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}

/// The container a log request reads, as the real server picks it: the one asked for (400 if
/// the pod has no such container), else the pod's only container (400 if it has several).
fn pick_container(pod: &Value, name: &str, asked: Option<&str>) -> Result<String, Fail> {
    let all = containers(pod);
    match asked {
        Some(c) if all.iter().any(|have| have == c) => Ok(c.to_string()),
        Some(c) => Err(Fail::bad_request(format!(
            "container {c} is not valid for pod {name}"
        ))),
        None if all.len() == 1 => Ok(all[0].clone()),
        None => Err(Fail::bad_request(format!(
            "a container name must be specified for pod {name}, choose one of: [{}]",
            all.join(" ")
        ))),
    }
}

/// 400 unless `container` of `pod` has started, worded as the kubelet words it.
fn check_started(pod: &Value, name: &str, container: &str) -> Result<(), Fail> {
    let status = pod
        .pointer("/status/containerStatuses")
        .and_then(Value::as_array)
        .and_then(|s| {
            s.iter()
                .find(|c| c.get("name").and_then(Value::as_str) == Some(container))
        });
    let waiting = match status {
        None => Some("ContainerCreating"),
        Some(s) => match s.pointer("/state/waiting") {
            Some(w)
                if s.get("lastState")
                    .and_then(|l| l.get("terminated"))
                    .is_none() =>
            {
                Some(w.get("reason").and_then(Value::as_str).unwrap_or("Waiting"))
            }
            _ => None,
        },
    };
    match waiting {
        Some(reason) => Err(Fail::bad_request(format!(
            "container {container:?} in pod {name:?} is waiting to start: {reason}"
        ))),
        None => Ok(()),
    }
}

/// Nanoseconds since the Unix epoch, by the wall clock.
fn now_ns() -> i64 {
    let since = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    i64::try_from(since.as_nanos()).unwrap_or(i64::MAX)
}

/// `timestamp_ns` as the kubelet writes it: RFC 3339 in UTC with nine fractional digits.
fn rfc3339_nano(timestamp_ns: i64) -> String {
    let secs = timestamp_ns.div_euclid(1_000_000_000);
    let nanos = timestamp_ns.rem_euclid(1_000_000_000);
    let whole = deploykit_core::Timestamp::from_millis(u64::try_from(secs).unwrap_or(0) * 1000);
    let text = whole.to_string();
    let date_time = text.strip_suffix(".000Z").unwrap_or(&text);
    format!("{date_time}.{nanos:09}Z")
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use http_body_util::BodyExt as _;
    use k8s_openapi::api::core::v1::Pod;
    use kube::api::{Api, LogParams, PostParams};
    use serde_json::json;
    use tower::Service as _;

    use super::super::FakeApiServer;
    use super::*;

    const T0: i64 = 1_796_482_800_000_000_000;
    const MS: i64 = 1_000_000;

    #[test]
    fn timestamps_are_written_like_the_kubelet_writes_them() {
        let ns = T0 + 123_456_789;
        assert_eq!(rfc3339_nano(ns), "2026-12-05T15:00:00.123456789Z");
        assert_eq!(
            deploykit_logs::parse_timestamp_ns(&rfc3339_nano(ns)),
            Some(ns)
        );
        assert_eq!(
            rfc3339_nano(1_000_000_007),
            "1970-01-01T00:00:01.000000007Z"
        );
    }

    fn pods(server: &FakeApiServer) -> Api<Pod> {
        Api::namespaced(server.client(), "shop")
    }

    /// Creates pod `name` in `shop` with one container `app`, running.
    async fn running_pod(server: &FakeApiServer, name: &str) {
        let pod = serde_json::from_value(json!({
            "metadata": { "name": name },
            "spec": { "containers": [{ "name": "app", "image": "x" }] },
        }))
        .expect("a valid pod");
        pods(server)
            .create(&PostParams::default(), &pod)
            .await
            .expect("created");
        server.set_pod_status(name, |s| {
            *s = json!({ "phase": "Running", "containerStatuses": [{
                "name": "app", "image": "x", "imageID": "", "ready": true,
                "restartCount": 0, "state": { "running": {} },
            }]});
        });
    }

    /// Sends `GET path` to `server` directly; answers the response body.
    async fn get(server: &FakeApiServer, path: &str) -> FakeBody {
        let request = http::Request::get(path)
            .body(kube::client::Body::from(Vec::new()))
            .expect("a valid request");
        let mut service = server.clone();
        let response = service.call(request).await.expect("infallible");
        assert_eq!(response.status(), 200, "GET {path}");
        response.into_body()
    }

    async fn text(body: FakeBody) -> String {
        let bytes = body.collect().await.expect("infallible").to_bytes();
        String::from_utf8(bytes.to_vec()).expect("UTF-8")
    }

    #[tokio::test]
    async fn the_log_subresource_honours_its_parameters() {
        let server = FakeApiServer::new();
        running_pod(&server, "web-0").await;
        for (i, ms) in [100, 900, 1_500, 2_000].into_iter().enumerate() {
            server.append_pod_log_at("shop", "web-0", "app", T0 + ms * MS, [format!("l{i}")]);
        }
        let read = |params: LogParams| {
            let api = pods(&server);
            async move { api.logs("web-0", &params).await.expect("logs") }
        };
        assert_eq!(read(LogParams::default()).await, "l0\nl1\nl2\nl3\n");
        let stamped = LogParams {
            timestamps: true,
            tail_lines: Some(1),
            ..LogParams::default()
        };
        assert_eq!(read(stamped).await, "2026-12-05T15:00:02.000000000Z l3\n");
        let since = LogParams {
            since_time: Some(k8s_openapi::jiff::Timestamp::from_second(1_796_482_801).unwrap()),
            ..LogParams::default()
        };
        assert_eq!(read(since).await, "l2\nl3\n");
        let limited = LogParams {
            limit_bytes: Some(4),
            ..LogParams::default()
        };
        assert_eq!(read(limited).await, "l0\nl");
        // A text with a newline is two lines; automatic stamps come after the explicit ones.
        server.append_pod_log("shop", "web-0", "app", ["a\nb"]);
        let newest = LogParams {
            tail_lines: Some(2),
            ..LogParams::default()
        };
        assert_eq!(read(newest).await, "a\nb\n");
    }

    #[tokio::test]
    async fn missing_pods_and_containers_and_unstarted_containers_answer_like_the_real_server() {
        let server = FakeApiServer::new();
        running_pod(&server, "web-0").await;
        let api = pods(&server);
        let status = |e: kube::Error| match e {
            kube::Error::Api(s) => (s.code, s.message),
            other => panic!("not an API error: {other}"),
        };
        let missing = api.logs("nobody", &LogParams::default()).await.unwrap_err();
        assert_eq!(status(missing), (404, r#"pods "nobody" not found"#.into()));
        let params = LogParams {
            container: Some("sidecar".into()),
            ..LogParams::default()
        };
        let wrong = api.logs("web-0", &params).await.unwrap_err();
        assert_eq!(
            status(wrong),
            (400, "container sidecar is not valid for pod web-0".into())
        );
        server.set_pod_status("web-0", |s| {
            s["containerStatuses"][0]["state"] =
                json!({ "waiting": { "reason": "ImagePullBackOff" } });
        });
        let waiting = api.logs("web-0", &LogParams::default()).await.unwrap_err();
        assert_eq!(
            status(waiting),
            (
                400,
                r#"container "app" in pod "web-0" is waiting to start: ImagePullBackOff"#.into()
            )
        );
    }

    #[tokio::test]
    async fn a_follow_stream_carries_new_lines_until_it_is_cut() {
        let server = FakeApiServer::new();
        running_pod(&server, "web-0").await;
        server.append_pod_log("shop", "web-0", "app", ["before"]);
        let path = "/api/v1/namespaces/shop/pods/web-0/log?follow=true";
        let mut body = get(&server, path).await;
        assert_eq!(server.open_log_streams(), 1);
        let first = body.frame().await.expect("a frame").expect("infallible");
        assert_eq!(first.into_data().expect("data"), "before\n");
        server.append_pod_log("shop", "web-0", "app", ["after"]);
        let second = body.frame().await.expect("a frame").expect("infallible");
        assert_eq!(second.into_data().expect("data"), "after\n");
        // Cut while a line is on its way: half of it arrives, then the stream ends.
        server.append_pod_log("shop", "web-0", "app", ["cut off"]);
        server.cut_log_streams();
        assert_eq!(server.open_log_streams(), 0);
        assert_eq!(text(body).await, "cut ");
    }

    #[tokio::test]
    async fn hanging_up_or_deleting_the_pod_closes_a_follow_stream() {
        let server = FakeApiServer::new();
        running_pod(&server, "web-0").await;
        let path = "/api/v1/namespaces/shop/pods/web-0/log?follow=true";
        let body = get(&server, path).await;
        assert_eq!(server.open_log_streams(), 1);
        drop(body);
        for _ in 0..200 {
            if server.open_log_streams() == 0 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        assert_eq!(server.open_log_streams(), 0, "the server saw the hang-up");

        server.append_pod_log("shop", "web-0", "app", ["old"]);
        let body = get(&server, path).await;
        pods(&server)
            .delete("web-0", &Default::default())
            .await
            .expect("deleted");
        assert_eq!(server.open_log_streams(), 0);
        assert_eq!(
            text(body).await,
            "old\n",
            "the stream ends after what it sent"
        );
        // A new pod of the same name starts with an empty log.
        running_pod(&server, "web-0").await;
        assert_eq!(
            text(get(&server, path.split('?').next().unwrap()).await).await,
            ""
        );
    }
}
