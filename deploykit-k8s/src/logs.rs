//! [`KubeLogs`]: deploykit's [`LogSource`] on Kubernetes — the pod logs of a service's
//! instances, read through the API server's `log` subresource of pods.

use std::collections::HashSet;
use std::fmt;
use std::sync::Arc;

use async_trait::async_trait;
use deploykit_core::retry::{Backoff, KeyedBackoff, RetryError};
use deploykit_core::{Error, Result};
use deploykit_logs::{
    LogSelector, LogSender, LogSource, LogStream, Record, Source, Stream, keep_tail,
    parse_timestamp_ns, sort_by_time,
};
use futures::io::AsyncBufRead;
use futures::{AsyncBufReadExt as _, StreamExt as _};
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::jiff;
use kube::api::{Api, ListParams, LogParams, ResourceExt as _};
use kube::runtime::{WatchStreamExt as _, watcher};
use tokio::task::JoinSet;

use crate::RetryPolicy;
use crate::render::{LABEL_MANAGED_BY, LABEL_NAME, LABEL_REVISION, MANAGED_BY};
use crate::retry::{classify, kube_error};

/// deploykit's [`LogSource`] for one Kubernetes namespace: the logs of the pods deploykit runs
/// for a service (label selector `app.kubernetes.io/name=<service>,
/// app.kubernetes.io/managed-by=deploykit`, plus `deploykit.dev/revision=<revision>` when the
/// selector names a revision), read with `GET .../pods/{pod}/log?timestamps=true`.
///
/// Each record carries the service, the environment name (by default the namespace, see
/// [`environment`](Self::environment)), the pod's `deploykit.dev/revision` label and the pod's
/// name as its instance; its timestamp is the one the kubelet prefixes the line with (when the
/// container runtime received it). The API serves one stream per container with standard
/// output and standard error merged, so every record says [`Stream::Stdout`]. Pods with
/// several containers are read container by container, every container's lines under the
/// pod's name.
///
/// **Kept records.** Every pod's log in the selector's window (`sinceTime` is sent rounded
/// down to the second, the API's precision, and the window applied exactly here), merged by
/// time, the newest [`LogSelector::tail`] of them (sent as `tailLines` when that is exact:
/// no window end, no start within a second, not following). A pod whose container has not
/// started yet has no records.
///
/// **Following.** After the kept records, each pod's container is followed (`follow=true`)
/// from just after its last kept line; a watch of the service's pods (of the revision, if
/// selected) starts following pods that appear later, such as a new revision's, from their
/// first line (waiting, with the retry policy's delays, while their container is still
/// starting). When a follow stream ends while its pod still exists — a dropped connection, an
/// API server restart, a restarted container — it is opened again from the second of the
/// last line delivered, and the lines at or before that line are dropped (of lines that share
/// its timestamp, as many as were already delivered), so each line arrives exactly once. A
/// line cut off by a dropped connection is read again whole. Following stops when the pod is
/// gone or finished (phase `Succeeded`/`Failed`), and everything stops when the
/// [`LogStream`] is dropped.
///
/// **Errors.** API calls are retried per the [`RetryPolicy`] (429 respecting
/// `retryAfterSeconds`, 5xx and connection failures), with a backoff per pod container; other
/// failures, and retries used up, fail the call (or end the stream) with an error naming the
/// pod and what the API said.
///
/// ```no_run
/// # async fn run() -> deploykit_core::Result<()> {
/// use deploykit_k8s::KubeLogs;
/// use deploykit_logs::{LogSelector, LogSource};
///
/// let client = kube::Client::try_default()
///     .await
///     .map_err(|e| deploykit_core::Error::backend("connect to the cluster", e.to_string()))?;
/// let logs = KubeLogs::new(client, "shop").environment("production");
/// let mut stream = logs.logs(&LogSelector::service("web").tail(100).follow()).await?;
/// while let Some(record) = stream.next().await {
///     let record = record?;
///     println!("{} {}", record.source.instance, record.line);
/// }
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct KubeLogs {
    client: kube::Client,
    namespace: String,
    environment: String,
    backoff: Arc<KeyedBackoff>,
}

impl fmt::Debug for KubeLogs {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KubeLogs")
            .field("namespace", &self.namespace)
            .field("environment", &self.environment)
            .field("retry", self.backoff.policy())
            .finish_non_exhaustive()
    }
}

impl KubeLogs {
    /// The logs of namespace `namespace`, read through `client`, with the default
    /// [`RetryPolicy`]; records name the namespace as their environment.
    pub fn new(client: kube::Client, namespace: impl Into<String>) -> Self {
        let namespace = namespace.into();
        KubeLogs {
            client,
            environment: namespace.clone(),
            namespace,
            backoff: Arc::new(KeyedBackoff::new(RetryPolicy::default())),
        }
    }

    /// These logs with records naming `environment` as their environment (e.g. the
    /// `EnvironmentSpec`'s name the namespace serves).
    #[must_use]
    pub fn environment(mut self, environment: impl Into<String>) -> Self {
        self.environment = environment.into();
        self
    }

    /// These logs retrying API calls per `policy`.
    #[must_use]
    pub fn retry(mut self, policy: RetryPolicy) -> Self {
        self.backoff = Arc::new(KeyedBackoff::new(policy));
        self
    }

    /// The namespace read.
    pub fn namespace(&self) -> &str {
        &self.namespace
    }

    fn pods(&self) -> Api<Pod> {
        Api::namespaced(self.client.clone(), &self.namespace)
    }

    /// The pods `selector` selects, by label selector `labels` (and instance name).
    async fn list_pods(&self, labels: &str, selector: &LogSelector) -> Result<Vec<Pod>> {
        let api = self.pods();
        let mut params = ListParams::default().labels(labels);
        if let Some(instance) = &selector.instance {
            params = params.fields(&format!("metadata.name={instance}"));
        }
        let key = format!("list pods/{}", self.namespace);
        let pods = self
            .backoff
            .run(&key, classify, || api.list(&params))
            .await
            .map_err(|e| {
                kube_error(
                    format!(
                        "list the pods of service {} in namespace {}",
                        selector.service, self.namespace
                    ),
                    e,
                )
            })?;
        Ok(pods
            .items
            .into_iter()
            .filter(|pod| instance_selected(selector, pod))
            .collect())
    }

    /// Opens the log of `target` from `since_ns` (rounded down to the second), following or
    /// not, retrying transient failures.
    async fn open(
        &self,
        target: &Target,
        since_ns: Option<i64>,
        tail_lines: Option<i64>,
        follow: bool,
    ) -> std::result::Result<impl AsyncBufRead + Unpin + use<>, Opened> {
        let api = self.pods();
        let params = LogParams {
            container: Some(target.container.clone()),
            follow,
            since_time: since_ns.map(whole_second),
            tail_lines,
            timestamps: true,
            ..LogParams::default()
        };
        let key = format!(
            "log pods/{}/{}/{}",
            self.namespace, target.pod, target.container
        );
        match self
            .backoff
            .run(&key, classify, || api.log_stream(&target.pod, &params))
            .await
        {
            Ok(reader) => Ok(Box::pin(reader)),
            Err(e) => Err(Opened::classify(e, || target.describe(&self.namespace))),
        }
    }

    /// The pod of `target` as it is now: `None` once it is gone or replaced (another uid).
    async fn current_pod(&self, target: &Target) -> Result<Option<Pod>> {
        let api = self.pods();
        let key = format!("get pods/{}/{}", self.namespace, target.pod);
        let pod = self
            .backoff
            .run(&key, classify, || api.get_opt(&target.pod))
            .await
            .map_err(|e| {
                kube_error(
                    format!("get pod {} in namespace {}", target.pod, self.namespace),
                    e,
                )
            })?;
        Ok(pod.filter(|p| p.uid().as_deref() == Some(target.uid.as_str())))
    }

    /// The kept records of `target` in `selector`'s window, and where its log was read up to.
    async fn history(
        &self,
        target: &Target,
        selector: &LogSelector,
        tail_lines: Option<i64>,
    ) -> Result<(Vec<Record>, Cursor)> {
        let mut cursor = Cursor::default();
        let mut reader = match self
            .open(target, selector.since_ns, tail_lines, false)
            .await
        {
            Ok(reader) => reader,
            Err(Opened::NotStarted | Opened::Gone) => return Ok((Vec::new(), cursor)),
            Err(Opened::Failed(e)) => return Err(e),
        };
        let mut records = Vec::new();
        let mut buffer = Vec::new();
        loop {
            buffer.clear();
            let read = reader.read_until(b'\n', &mut buffer).await.map_err(|e| {
                Error::backend(
                    format!("read the log of {}", target.describe(&self.namespace)),
                    e.to_string(),
                )
            })?;
            if read == 0 {
                return Ok((records, cursor));
            }
            let (timestamp_ns, line) = split_line(&buffer, cursor.last_timestamp());
            if cursor.admit(timestamp_ns) && selector.in_window(timestamp_ns) {
                records.push(Record::new(
                    target.source.clone(),
                    Stream::Stdout,
                    timestamp_ns,
                    line,
                ));
            }
        }
    }

    /// Follows `target` from `cursor` until its pod is gone or finished, or the reader of
    /// `sender` is: see the type's docs.
    async fn follow(
        &self,
        target: Target,
        mut cursor: Cursor,
        selector: &LogSelector,
        sender: &LogSender,
    ) -> Result<()> {
        let mut idle = Backoff::new(self.backoff.policy());
        loop {
            cursor.reconnect();
            let since = cursor.resume_at().or(selector.since_ns);
            let delivered = match self.open(&target, since, None, true).await {
                Ok(mut reader) => {
                    match self
                        .deliver(&target, &mut reader, &mut cursor, selector, sender)
                        .await
                    {
                        Delivery::ReaderGone => return Ok(()),
                        Delivery::Ended { delivered } => delivered,
                    }
                }
                Err(Opened::Gone) => return Ok(()),
                Err(Opened::NotStarted) => false,
                Err(Opened::Failed(e)) => return Err(e),
            };
            // Gone or replaced: done. Finished: done once a stream brought nothing more.
            match self.current_pod(&target).await? {
                None => return Ok(()),
                Some(pod) if finished(&pod) && !delivered => return Ok(()),
                Some(_) => {}
            }
            if delivered {
                idle.reset();
            } else {
                tokio::select! {
                    _ = sender.closed() => return Ok(()),
                    _ = tokio::time::sleep(idle.next_delay()) => {}
                }
            }
        }
    }

    /// Sends the new lines `reader` brings until it ends or the reader of `sender` is gone.
    async fn deliver(
        &self,
        target: &Target,
        reader: &mut (impl AsyncBufRead + Unpin),
        cursor: &mut Cursor,
        selector: &LogSelector,
        sender: &LogSender,
    ) -> Delivery {
        let mut delivered = false;
        let mut buffer = Vec::new();
        loop {
            buffer.clear();
            let read = tokio::select! {
                _ = sender.closed() => return Delivery::ReaderGone,
                read = reader.read_until(b'\n', &mut buffer) => read,
            };
            match read {
                // A line without its newline was cut off: it is read again whole after the
                // reconnection.
                Ok(_) if buffer.last() != Some(&b'\n') => return Delivery::Ended { delivered },
                Ok(_) => {}
                Err(e) => {
                    tracing::debug!(
                        pod = %target.pod,
                        container = %target.container,
                        error = %e,
                        "log stream broke; reconnecting"
                    );
                    return Delivery::Ended { delivered };
                }
            }
            let (timestamp_ns, line) = split_line(&buffer, cursor.last_timestamp());
            if !cursor.admit(timestamp_ns) || !selector.in_window(timestamp_ns) {
                continue;
            }
            let record = Record::new(target.source.clone(), Stream::Stdout, timestamp_ns, line);
            if !sender.send(record).await {
                return Delivery::ReaderGone;
            }
            delivered = true;
        }
    }
}

#[async_trait]
impl LogSource for KubeLogs {
    async fn logs(&self, selector: &LogSelector) -> Result<LogStream> {
        selector.validate()?;
        check_label_value("logs.selector.service", &selector.service)?;
        if let Some(revision) = &selector.revision {
            check_label_value("logs.selector.revision", revision)?;
        }
        let labels = label_selector(selector);
        let pods = self.list_pods(&labels, selector).await?;
        let targets: Vec<Target> = pods
            .iter()
            .flat_map(|pod| Target::all_of(pod, selector, &self.environment))
            .collect();
        // `tailLines` counts lines from the end of the whole log: exact only when nothing
        // after the window's start is dropped here, and nothing before it is sent.
        let server_tail = selector
            .tail
            .filter(|_| {
                !selector.follows()
                    && selector.until_ns.is_none()
                    && selector
                        .since_ns
                        .is_none_or(|s| s.rem_euclid(1_000_000_000) == 0)
            })
            .map(|t| i64::try_from(t).unwrap_or(i64::MAX));
        let histories = futures::future::try_join_all(
            targets
                .iter()
                .map(|target| self.history(target, selector, server_tail)),
        )
        .await?;
        let mut records = Vec::new();
        let mut started = Vec::new();
        for (target, (kept, cursor)) in targets.into_iter().zip(histories) {
            records.extend(kept);
            started.push((target, cursor));
        }
        sort_by_time(&mut records);
        keep_tail(&mut records, selector.tail);
        if !selector.follows() {
            return Ok(LogStream::from_records(records));
        }
        let (sender, stream) = LogStream::channel();
        let source = self.clone();
        let selector = selector.clone();
        tokio::spawn(async move {
            source
                .follow_all(selector, labels, sender, records, started)
                .await;
        });
        Ok(stream)
    }
}

impl KubeLogs {
    /// The following part of a stream: `kept` first, then every container of `started` from
    /// its cursor, and the containers of pods that appear later, until the reader is gone.
    async fn follow_all(
        self,
        selector: LogSelector,
        labels: String,
        sender: LogSender,
        kept: Vec<Record>,
        started: Vec<(Target, Cursor)>,
    ) {
        for record in kept {
            if !sender.send(record).await {
                return;
            }
        }
        let selector = Arc::new(selector);
        // Dropping the set (when this function returns) aborts every follower.
        let mut followers: JoinSet<Result<()>> = JoinSet::new();
        let mut known: HashSet<(String, String)> = HashSet::new();
        let mut start = |followers: &mut JoinSet<Result<()>>, target: Target, cursor: Cursor| {
            if known.insert((target.uid.clone(), target.container.clone())) {
                let (source, selector, sender) = (self.clone(), selector.clone(), sender.clone());
                followers
                    .spawn(async move { source.follow(target, cursor, &selector, &sender).await });
            }
        };
        for (target, cursor) in started {
            start(&mut followers, target, cursor);
        }
        let mut config = watcher::Config::default().labels(&labels);
        if let Some(instance) = &selector.instance {
            config = config.fields(&format!("metadata.name={instance}"));
        }
        let mut pods = watcher::watcher(self.pods(), config)
            .default_backoff()
            .boxed();
        loop {
            tokio::select! {
                _ = sender.closed() => return,
                event = pods.next() => match event {
                    Some(Ok(watcher::Event::Apply(pod) | watcher::Event::InitApply(pod))) => {
                        if instance_selected(&selector, &pod) {
                            for target in Target::all_of(&pod, &selector, &self.environment) {
                                start(&mut followers, target, Cursor::default());
                            }
                        }
                    }
                    Some(Ok(_)) => {}
                    Some(Err(e)) => tracing::warn!(
                        namespace = %self.namespace,
                        service = %selector.service,
                        error = %e,
                        "watching pods for their logs failed; backing off"
                    ),
                    None => return,
                },
                Some(done) = followers.join_next() => match done {
                    Ok(Ok(())) => {}
                    Ok(Err(e)) => {
                        sender.fail(e).await;
                        return;
                    }
                    Err(e) if e.is_panic() => {
                        sender
                            .fail(Error::backend(
                                format!("follow the logs of service {}", selector.service),
                                format!("a follower panicked: {e}"),
                            ))
                            .await;
                        return;
                    }
                    Err(_) => {}
                },
            }
        }
    }
}

/// Where a container's log was read up to: the timestamp of the last line delivered (or
/// skipped as outside the window), how many lines with that timestamp came so far, and how
/// many of those a reopened stream will bring again.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct Cursor {
    last: Option<(i64, u64)>,
    to_skip: u64,
}

impl Cursor {
    /// The timestamp of the last line read.
    fn last_timestamp(&self) -> Option<i64> {
        self.last.map(|(t, _)| t)
    }

    /// Where a reopened stream starts: the last line's time (the API rounds it down to the
    /// second, so earlier lines of that second come again and are skipped).
    fn resume_at(&self) -> Option<i64> {
        self.last_timestamp()
    }

    /// A stream is (re)opened: the lines with the last timestamp will come again.
    fn reconnect(&mut self) {
        self.to_skip = self.last.map_or(0, |(_, n)| n);
    }

    /// Whether a line stamped `timestamp_ns` is new (and then moves past it).
    fn admit(&mut self, timestamp_ns: i64) -> bool {
        match &mut self.last {
            Some((last, _)) if timestamp_ns < *last => false,
            Some((last, count)) if timestamp_ns == *last => {
                if self.to_skip > 0 {
                    self.to_skip -= 1;
                    false
                } else {
                    *count += 1;
                    true
                }
            }
            _ => {
                self.last = Some((timestamp_ns, 1));
                self.to_skip = 0;
                true
            }
        }
    }
}

/// One container of one pod whose log is read.
#[derive(Clone, Debug)]
struct Target {
    pod: String,
    uid: String,
    container: String,
    source: Arc<Source>,
}

impl Target {
    /// Every container of `pod`.
    fn all_of(pod: &Pod, selector: &LogSelector, environment: &str) -> Vec<Target> {
        let name = pod.name_any();
        let revision = pod
            .labels()
            .get(LABEL_REVISION)
            .cloned()
            .unwrap_or_default();
        let source = Source::new(selector.service.clone(), environment, revision, &name);
        let uid = pod.uid().unwrap_or_default();
        pod.spec
            .iter()
            .flat_map(|spec| &spec.containers)
            .map(|c| Target {
                pod: name.clone(),
                uid: uid.clone(),
                container: c.name.clone(),
                source: source.clone(),
            })
            .collect()
    }

    fn describe(&self, namespace: &str) -> String {
        format!(
            "pod {} (container {}) in namespace {namespace}",
            self.pod, self.container
        )
    }
}

/// How opening a log went wrong.
enum Opened {
    /// The pod is gone (404).
    Gone,
    /// The container has not started yet (400 `... is waiting to start: ...`).
    NotStarted,
    /// Anything else, or retries used up.
    Failed(Error),
}

impl Opened {
    fn classify(e: RetryError<kube::Error>, describe: impl FnOnce() -> String) -> Opened {
        match e.error() {
            kube::Error::Api(status) if status.code == 404 => Opened::Gone,
            kube::Error::Api(status)
                if status.code == 400 && status.message.contains("is waiting to start") =>
            {
                Opened::NotStarted
            }
            _ => Opened::Failed(kube_error(format!("read the log of {}", describe()), e)),
        }
    }
}

/// How a follow stream ended.
enum Delivery {
    /// The reader of the [`LogStream`] is gone.
    ReaderGone,
    /// The stream ended; `delivered` says whether it brought new lines.
    Ended { delivered: bool },
}

/// Splits `<RFC 3339 timestamp> <text>` (with or without its newline); a line without a
/// readable timestamp keeps `fallback_ns` (or 0) and its whole text.
fn split_line(raw: &[u8], fallback_ns: Option<i64>) -> (i64, String) {
    let text = String::from_utf8_lossy(raw);
    let text = text.strip_suffix('\n').unwrap_or(&text);
    let text = text.strip_suffix('\r').unwrap_or(text);
    if let Some((stamp, rest)) = text.split_once(' ')
        && let Some(timestamp_ns) = parse_timestamp_ns(stamp)
    {
        return (timestamp_ns, rest.to_string());
    }
    (fallback_ns.unwrap_or(0), text.to_string())
}

/// `timestamp_ns` rounded down to the second (what `sinceTime` can say).
fn whole_second(timestamp_ns: i64) -> jiff::Timestamp {
    jiff::Timestamp::from_second(timestamp_ns.div_euclid(1_000_000_000))
        .unwrap_or(jiff::Timestamp::UNIX_EPOCH)
}

/// Whether `pod` is done running (its containers will write nothing more).
fn finished(pod: &Pod) -> bool {
    matches!(
        pod.status.as_ref().and_then(|s| s.phase.as_deref()),
        Some("Succeeded" | "Failed")
    )
}

fn instance_selected(selector: &LogSelector, pod: &Pod) -> bool {
    selector
        .instance
        .as_deref()
        .is_none_or(|instance| pod.name_any() == instance)
}

/// The label selector of the pods `selector` reads.
fn label_selector(selector: &LogSelector) -> String {
    let mut labels = format!(
        "{LABEL_NAME}={},{LABEL_MANAGED_BY}={MANAGED_BY}",
        selector.service
    );
    if let Some(revision) = &selector.revision {
        labels.push_str(&format!(",{LABEL_REVISION}={revision}"));
    }
    labels
}

/// Checks that `value` can be a label value (what pods are selected by): at most 63
/// characters, alphanumerics, `-`, `_` and `.`, beginning and ending with an alphanumeric.
fn check_label_value(field: &str, value: &str) -> Result<()> {
    let edges_ok = value
        .chars()
        .next()
        .zip(value.chars().last())
        .is_some_and(|(a, b)| a.is_ascii_alphanumeric() && b.is_ascii_alphanumeric());
    let chars_ok = value
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
    if value.len() > 63 || !edges_ok || !chars_ok {
        return Err(Error::invalid(
            field,
            format!(
                "{value:?} is not a Kubernetes label value (at most 63 alphanumerics, '-', \
                 '_' or '.', beginning and ending with an alphanumeric)"
            ),
        ));
    }
    Ok(())
}

#[async_trait::async_trait]
impl deploykit_logs::LogSource for crate::KubeEnvironment {
    async fn logs(
        &self,
        selector: &deploykit_logs::LogSelector,
    ) -> deploykit_core::Result<deploykit_logs::LogStream> {
        self.log_source().logs(selector).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cursor_skips_what_a_reopened_stream_brings_again() {
        let mut cursor = Cursor::default();
        // First connection: 10, 20, 20.
        assert!(cursor.admit(10) && cursor.admit(20) && cursor.admit(20));
        // Reopened from the second: 10, 20, 20 again, then a third 20 and 30.
        cursor.reconnect();
        let again: Vec<bool> = [10, 20, 20, 20, 30]
            .into_iter()
            .map(|t| cursor.admit(t))
            .collect();
        assert_eq!(again, [false, false, false, true, true]);
        cursor.reconnect();
        let third: Vec<bool> = [20, 20, 20, 30, 30]
            .into_iter()
            .map(|t| cursor.admit(t))
            .collect();
        assert_eq!(third, [false, false, false, false, true]);
    }

    #[test]
    fn lines_split_into_their_timestamp_and_text() {
        let (ts, text) = split_line(b"2026-12-05T15:00:00.123456789Z hello world\n", None);
        assert_eq!(
            (ts, text.as_str()),
            (1_796_482_800_123_456_789, "hello world")
        );
        let (ts, text) = split_line(b"no timestamp here", Some(7));
        assert_eq!((ts, text.as_str()), (7, "no timestamp here"));
        assert_eq!(
            whole_second(1_796_482_800_999_999_999).to_string(),
            "2026-12-05T15:00:00Z"
        );
    }

    #[test]
    fn selectors_become_label_selectors() {
        let selector = LogSelector::service("web").revision("r1");
        assert_eq!(
            label_selector(&selector),
            "app.kubernetes.io/name=web,app.kubernetes.io/managed-by=deploykit,\
             deploykit.dev/revision=r1"
        );
        assert!(check_label_value("f", "web-1.a_b").is_ok());
        for bad in ["", "-web", "web,x=y", "a b", &"x".repeat(64)] {
            assert!(check_label_value("f", bad).is_err(), "{bad:?}");
        }
    }
}
