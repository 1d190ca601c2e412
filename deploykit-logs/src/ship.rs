//! The collecting agent: follows the logs of services on a [`LogSource`] and sends every
//! record into a [`Pipeline`](crate::Pipeline) — the link between where logs are kept and where
//! they go.

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};

use deploykit_core::{Error, Result};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::pipeline::PipelineInput;
use crate::source::{LogSelector, LogSource};

/// Follows services' logs into a pipeline, from [`LogShipper::start`] until
/// [`LogShipper::stop`].
///
/// Each selector is followed from its own window (`since_ns`; without it, from the records
/// kept when it starts — a shipper restarted with the time it stopped at ships on without
/// gaps). The pipeline's back-pressure holds the source back; records dropped by the
/// pipeline's policy are counted there.
///
/// ```
/// # #[tokio::main(flavor = "current_thread", start_paused = true)]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// use std::sync::Arc;
/// use deploykit_logs::{FileForwarder, LogSelector, LogShipper, Pipeline, PipelineConfig, Stream};
/// use deploykit_testing::SimLogs;
///
/// let logs = SimLogs::new();
/// let dir = tempfile::tempdir()?;
/// let forwarder = Arc::new(FileForwarder::create(dir.path(), "shipped", 1 << 20)?);
/// let pipeline = Pipeline::start(&PipelineConfig::from_toml_str("")?, ["s3cret"], forwarder.clone())?;
/// let shipper = LogShipper::start(Arc::new(logs.clone()), vec![LogSelector::service("api")], pipeline.input());
/// logs.write("api", "r1", "api-1", Stream::Stdout, ["password is s3cret"]);
/// tokio::time::sleep(std::time::Duration::from_secs(1)).await;
/// assert_eq!(shipper.stop().await?, 1);
/// pipeline.close().await?;
/// let shipped = std::fs::read_to_string(forwarder.current_path())?;
/// assert!(shipped.contains("password is") && !shipped.contains("s3cret"));
/// # Ok(()) }
/// ```
#[derive(Debug)]
pub struct LogShipper {
    stop: watch::Sender<bool>,
    tasks: Vec<JoinHandle<Result<()>>>,
    shipped: Arc<AtomicU64>,
    /// Per selector, the time of the newest record sent.
    through: Arc<Vec<AtomicI64>>,
}

impl LogShipper {
    /// Starts following each of `selectors` (their `follow` is set) on `source` into `input`.
    /// Must be called inside a tokio runtime.
    pub fn start(
        source: Arc<dyn LogSource>,
        selectors: Vec<LogSelector>,
        input: PipelineInput,
    ) -> LogShipper {
        let (stop, stopped) = watch::channel(false);
        let shipped = Arc::new(AtomicU64::new(0));
        let through: Arc<Vec<AtomicI64>> =
            Arc::new(selectors.iter().map(|_| AtomicI64::new(i64::MIN)).collect());
        let tasks = selectors
            .into_iter()
            .enumerate()
            .map(|(index, selector)| {
                let (source, input, shipped) = (source.clone(), input.clone(), shipped.clone());
                let through = through.clone();
                let mut stopped = stopped.clone();
                tokio::spawn(async move {
                    let mut selector = selector;
                    selector.follow = true;
                    selector.until_ns = None;
                    let mut stream = source.logs(&selector).await?;
                    loop {
                        tokio::select! {
                            biased;
                            () = async { let _ = stopped.wait_for(|stop| *stop).await; } => return Ok(()),
                            record = stream.next() => match record {
                                Some(record) => {
                                    let record = record?;
                                    let at = record.timestamp_ns;
                                    input.send(record).await?;
                                    shipped.fetch_add(1, Ordering::Relaxed);
                                    through[index].fetch_max(at, Ordering::Relaxed);
                                }
                                None => return Ok(()),
                            },
                        }
                    }
                })
            })
            .collect();
        LogShipper {
            stop,
            tasks,
            shipped,
            through,
        }
    }

    /// How many records were sent into the pipeline so far.
    pub fn shipped(&self) -> u64 {
        self.shipped.load(Ordering::Relaxed)
    }

    /// For each selector (in the order given), the time of the newest record sent into the
    /// pipeline (`None` before the first). A shipper started again with each selector
    /// `since_ns` its time ships on without a gap (the records of that very nanosecond are
    /// sent again: at least once). Each selector's records arrive in time order, so one time
    /// per selector is enough.
    pub fn shipped_through_ns(&self) -> Vec<Option<i64>> {
        self.through
            .iter()
            .map(|ns| Some(ns.load(Ordering::Relaxed)).filter(|ns| *ns != i64::MIN))
            .collect()
    }

    /// Stops following; returns how many records were shipped, or the first error a source
    /// or the pipeline reported.
    pub async fn stop(self) -> Result<u64> {
        let _ = self.stop.send(true);
        let mut first_error = None;
        for task in self.tasks {
            let outcome = task
                .await
                .map_err(|e| Error::backend("logs.ship", e.to_string()))
                .and_then(|result| result);
            if let Err(error) = outcome {
                first_error.get_or_insert(error);
            }
        }
        match first_error {
            Some(error) => Err(error),
            None => Ok(self.shipped.load(Ordering::Relaxed)),
        }
    }
}
