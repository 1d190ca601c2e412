//! A notifier that records what it is sent.

use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use deploykit_core::notify::Notification;
use deploykit_core::{Event, Notifier, Result};

/// Records every event and notification it is sent. Clones share the record.
#[derive(Clone, Debug, Default)]
pub struct RecordingNotifier {
    events: Arc<Mutex<Vec<Event>>>,
    notifications: Arc<Mutex<Vec<Notification>>>,
}

impl RecordingNotifier {
    /// An empty recorder.
    pub fn new() -> Self {
        Self::default()
    }

    /// Everything received so far, in order.
    pub fn events(&self) -> Vec<Event> {
        self.events
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Every notification received through [`Notifier::deliver`] (failovers), in order.
    pub fn notifications(&self) -> Vec<Notification> {
        self.notifications
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }
}

#[async_trait]
impl Notifier for RecordingNotifier {
    async fn notify(&self, event: &Event) -> Result<()> {
        self.events
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(event.clone());
        Ok(())
    }

    async fn deliver(&self, notification: &Notification) -> Result<()> {
        self.notifications
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(notification.clone());
        Ok(())
    }
}
