//! An alert sink that records what it is sent.

use std::sync::{Arc, Mutex, MutexGuard};

use async_trait::async_trait;
use deploykit_alerting::{AlertNotification, AlertSink};
use deploykit_core::{Error, Result};

#[derive(Debug, Default)]
struct Inner {
    received: Vec<AlertNotification>,
    fail_next: u32,
}

/// An [`AlertSink`] that records every notification it is sent. Clones share the record.
///
/// ```
/// use std::sync::Arc;
/// use deploykit_alerting::{Alerting, Route};
/// use deploykit_testing::RecordingAlertSink;
/// let pager = RecordingAlertSink::new();
/// let alerting = Alerting::builder()
///     .route(Route::builder().receiver("pager").build())
///     .sink("pager", Arc::new(pager.clone()))
///     .build()?;
/// pager.fail_next(1); // the next delivery fails (and is retried at the group's next tick)
/// assert!(pager.notifications().is_empty());
/// # Ok::<(), deploykit_core::Error>(())
/// ```
#[derive(Clone, Debug, Default)]
pub struct RecordingAlertSink {
    inner: Arc<Mutex<Inner>>,
}

impl RecordingAlertSink {
    /// An empty recorder.
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Everything delivered so far, in order.
    pub fn notifications(&self) -> Vec<AlertNotification> {
        self.lock().received.clone()
    }

    /// Everything delivered so far, in order, emptying the record.
    pub fn take(&self) -> Vec<AlertNotification> {
        std::mem::take(&mut self.lock().received)
    }

    /// Make the next `count` deliveries fail with a transient error (they are not recorded).
    pub fn fail_next(&self, count: u32) {
        self.lock().fail_next = count;
    }
}

#[async_trait]
impl AlertSink for RecordingAlertSink {
    async fn deliver(&self, notification: &AlertNotification) -> Result<()> {
        let mut inner = self.lock();
        if inner.fail_next > 0 {
            inner.fail_next -= 1;
            return Err(Error::transient(
                format!("deliver to {}", notification.receiver),
                "injected failure",
            ));
        }
        inner.received.push(notification.clone());
        Ok(())
    }
}
