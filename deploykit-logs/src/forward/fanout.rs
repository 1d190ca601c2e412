//! One pipeline, several destinations.

use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use deploykit_core::{Error, Result};

use super::Forwarder;
use crate::record::Record;

/// Sends every batch to each of several forwarders.
///
/// A batch that one destination refused is sent again (by the pipeline) only to the
/// destinations that have not accepted it yet, so a retry never duplicates records at the
/// others. Wrap destinations that may be down in [`Reliable`](super::Reliable) so that one
/// destination's outage does not hold the others back.
pub struct Fanout {
    destinations: Vec<Arc<dyn Forwarder>>,
    /// The last batch that was not accepted everywhere, and who accepted it.
    pending: Mutex<Option<(u64, Vec<bool>)>>,
}

impl Fanout {
    /// A forwarder to every one of `destinations`, in order.
    pub fn new(destinations: Vec<Arc<dyn Forwarder>>) -> Fanout {
        Fanout {
            destinations,
            pending: Mutex::new(None),
        }
    }
}

/// Identifies a batch well enough to recognise it when it is sent again.
fn fingerprint(batch: &[Record]) -> u64 {
    let mut hash = batch.len() as u64;
    for record in batch {
        hash = hash.rotate_left(5) ^ record.stable_hash() ^ record.timestamp_ns as u64;
    }
    hash
}

#[async_trait]
impl Forwarder for Fanout {
    fn name(&self) -> &str {
        "fanout"
    }

    async fn send(&self, batch: &[Record]) -> Result<()> {
        let id = fingerprint(batch);
        let mut accepted = match self
            .pending
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take()
        {
            Some((pending, accepted)) if pending == id => accepted,
            _ => vec![false; self.destinations.len()],
        };
        let mut errors = Vec::new();
        for (destination, done) in self.destinations.iter().zip(accepted.iter_mut()) {
            if *done {
                continue;
            }
            match destination.send(batch).await {
                Ok(()) => *done = true,
                Err(error) => errors.push(format!("{}: {error}", destination.name())),
            }
        }
        if errors.is_empty() {
            return Ok(());
        }
        *self.pending.lock().unwrap_or_else(|e| e.into_inner()) = Some((id, accepted));
        Err(Error::transient("forward logs", errors.join("; ")))
    }

    async fn flush(&self) -> Result<()> {
        let mut first = None;
        for destination in &self.destinations {
            if let Err(error) = destination.flush().await {
                first.get_or_insert(error);
            }
        }
        first.map_or(Ok(()), Err)
    }
}
