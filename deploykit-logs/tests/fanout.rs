//! A fan-out to several forwarders: a retry after one destination failed does not duplicate
//! records at the destinations that had accepted the batch.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use deploykit_core::{Error, Result};
use deploykit_logs::{Fanout, Forwarder, Record, Source, Stream};

#[derive(Default)]
struct Counting {
    lines: Mutex<Vec<String>>,
    fail_next: AtomicU32,
}

#[async_trait]
impl Forwarder for Counting {
    fn name(&self) -> &str {
        "counting"
    }

    async fn send(&self, batch: &[Record]) -> Result<()> {
        if self.fail_next.load(Ordering::SeqCst) > 0 {
            self.fail_next.fetch_sub(1, Ordering::SeqCst);
            return Err(Error::transient("counting", "down"));
        }
        let mut lines = self.lines.lock().unwrap();
        lines.extend(batch.iter().map(|r| r.line.clone()));
        Ok(())
    }
}

fn batch(lines: &[&str]) -> Vec<Record> {
    let source = Source::new("api", "prod", "r1", "api-1");
    lines
        .iter()
        .enumerate()
        .map(|(i, l)| Record::new(source.clone(), Stream::Stdout, i as i64, *l))
        .collect()
}

#[tokio::test]
async fn a_retry_reaches_only_the_destinations_that_missed_the_batch() {
    let (a, b) = (Arc::new(Counting::default()), Arc::new(Counting::default()));
    b.fail_next.store(2, Ordering::SeqCst);
    let fanout = Fanout::new(vec![a.clone(), b.clone()]);
    let first = batch(&["one", "two"]);
    let error = format!("{:?}", fanout.send(&first).await.unwrap_err());
    assert!(error.contains("counting: "), "{error}");
    assert!(fanout.send(&first).await.is_err());
    fanout.send(&first).await.unwrap();
    // The next batch goes everywhere.
    fanout.send(&batch(&["three"])).await.unwrap();
    fanout.flush().await.unwrap();
    assert_eq!(*a.lines.lock().unwrap(), ["one", "two", "three"]);
    assert_eq!(*b.lines.lock().unwrap(), ["one", "two", "three"]);
}
