//! An in-memory [`LogSource`]: what simulated instances log, kept and followed.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard};

use async_trait::async_trait;
use deploykit_core::{Clock, Result};
use deploykit_logs::{
    LogSelector, LogSource, LogStream, Record, Redactor, Source, Stream, keep_tail,
};
use tokio::sync::Notify;

use crate::clock::SimClock;

/// The environment name the records of [`SimLogs`] carry.
pub const SIM_ENVIRONMENT: &str = "sim";

/// The logs of simulated instances, kept in memory: a [`LogSource`] that tests script with
/// [`SimLogs::write`]. Clones share the records. [`crate::SimCluster::instance_logs`] is the cluster's.
///
/// Records are stamped with the [`SimClock`]'s time; lines written at the same instant get
/// increasing nanoseconds, so they keep their order when merged by time.
///
/// ```
/// # #[tokio::main(flavor = "current_thread", start_paused = true)]
/// # async fn main() -> deploykit_core::Result<()> {
/// use deploykit_logs::{LogSelector, LogSource, Stream};
/// use deploykit_testing::SimLogs;
///
/// let logs = SimLogs::new();
/// logs.write("api", "r1", "api-1", Stream::Stdout, ["starting", "ready"]);
/// let records = logs.logs(&LogSelector::service("api")).await?.collect().await?;
/// assert_eq!(records.len(), 2);
/// assert_eq!(records[1].line, "ready");
/// # Ok(()) }
/// ```
#[derive(Clone, Debug)]
pub struct SimLogs {
    shared: Arc<Shared>,
    clock: SimClock,
}

#[derive(Default)]
struct Shared {
    /// Every record of each service, in the order written (and so by time).
    services: Mutex<BTreeMap<String, Vec<Record>>>,
    /// The secret values instances were given: replaced in every line written, as a real
    /// backend's capture does.
    redactor: Mutex<Option<Redactor>>,
    secrets: Mutex<Vec<String>>,
    written: Notify,
}

impl std::fmt::Debug for Shared {
    /// Counts only: the records are what tests wrote, and a dump of them helps nobody.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let services = self.services.lock().unwrap_or_else(|p| p.into_inner());
        let counts: BTreeMap<&String, usize> = services.iter().map(|(s, r)| (s, r.len())).collect();
        f.debug_struct("SimLogs")
            .field("records", &counts)
            .finish_non_exhaustive()
    }
}

impl Default for SimLogs {
    fn default() -> Self {
        SimLogs::new()
    }
}

impl SimLogs {
    /// Empty logs on a new [`SimClock`] (call inside the tokio runtime whose time it follows).
    pub fn new() -> Self {
        SimLogs::with_clock(SimClock::new())
    }

    /// Empty logs stamped with `clock`'s time.
    pub fn with_clock(clock: SimClock) -> Self {
        SimLogs {
            shared: Arc::new(Shared::default()),
            clock,
        }
    }

    fn services(&self) -> MutexGuard<'_, BTreeMap<String, Vec<Record>>> {
        self.shared
            .services
            .lock()
            .unwrap_or_else(|p| p.into_inner())
    }

    /// `instance` of `revision` of `service` writes `lines` to `stream`, now.
    pub fn write<L: Into<String>>(
        &self,
        service: &str,
        revision: &str,
        instance: &str,
        stream: Stream,
        lines: impl IntoIterator<Item = L>,
    ) {
        let now_ns = i64::try_from(self.clock.now().as_millis())
            .unwrap_or(i64::MAX / 1_000_000)
            .saturating_mul(1_000_000);
        let source = Source::new(service, SIM_ENVIRONMENT, revision, instance);
        let mut services = self.services();
        let records = services.entry(service.to_string()).or_default();
        for line in lines {
            // Never before the last record: equal instants get the next nanosecond.
            let last = records.last().map_or(i64::MIN, |r| r.timestamp_ns);
            let at = now_ns.max(last.saturating_add(1));
            let mut record = Record::new(source.clone(), stream, at, line);
            if let Some(redactor) = &*self
                .shared
                .redactor
                .lock()
                .unwrap_or_else(|p| p.into_inner())
            {
                redactor.redact_record(&mut record);
            }
            records.push(record);
        }
        drop(services);
        self.shared.written.notify_waiters();
    }

    /// Redacts `values` from every line written from now on, as a real backend's capture
    /// redacts the secret values it gave an instance ([`crate::SimCluster`] calls it when it
    /// resolves a revision's secrets).
    pub fn redact<S: AsRef<str>>(&self, values: impl IntoIterator<Item = S>) {
        let mut secrets = self
            .shared
            .secrets
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        secrets.extend(values.into_iter().map(|v| v.as_ref().to_string()));
        let redactor = Redactor::new(secrets.iter(), Vec::new()).ok();
        *self
            .shared
            .redactor
            .lock()
            .unwrap_or_else(|p| p.into_inner()) = redactor;
    }

    /// How many records `service` has.
    pub fn count(&self, service: &str) -> usize {
        self.services().get(service).map_or(0, Vec::len)
    }

    /// The selected records from position `from` of `service`'s records on, and where the
    /// next read starts.
    fn read(&self, selector: &LogSelector, from: usize) -> (Vec<Record>, usize) {
        let services = self.services();
        let Some(records) = services.get(&selector.service) else {
            return (Vec::new(), from);
        };
        let selected = records[from.min(records.len())..]
            .iter()
            .filter(|r| selector.selects(&r.source.revision, &r.source.instance, r.timestamp_ns))
            .cloned()
            .collect();
        (selected, records.len())
    }
}

#[async_trait]
impl LogSource for SimLogs {
    async fn logs(&self, selector: &LogSelector) -> Result<LogStream> {
        selector.validate()?;
        let (mut kept, next) = self.read(selector, 0);
        keep_tail(&mut kept, selector.tail);
        if !selector.follows() {
            return Ok(LogStream::from_records(kept));
        }
        let (sender, stream) = LogStream::channel();
        let logs = self.clone();
        let selector = selector.clone();
        tokio::spawn(async move {
            let mut next = next;
            let mut batch = kept;
            loop {
                for record in batch {
                    if !sender.send(record).await {
                        return;
                    }
                }
                // Register for the wake-up before reading, so a write in between is not
                // missed.
                let written = logs.shared.written.notified();
                tokio::pin!(written);
                written.as_mut().enable();
                let (more, end) = logs.read(&selector, next);
                next = end;
                if more.is_empty() {
                    tokio::select! {
                        _ = written => {}
                        _ = sender.closed() => return,
                    }
                }
                batch = more;
            }
        });
        Ok(stream)
    }
}
