//! The event bus: where the orchestrator announces every journal entry as an [`Event`], to
//! its subscribers ([`crate::Orchestrator::subscribe`]) and to its notifiers, each of which
//! gets every event, in order, from its own dispatcher task.

use std::sync::{Arc, Mutex, MutexGuard};

use tokio::sync::{broadcast, mpsc};
use tokio::task::JoinSet;

use crate::event::Event;
use crate::notify::Notifier;

/// How many events a subscriber may fall behind before it misses some (it then learns how
/// many it missed: [`broadcast::error::RecvError::Lagged`]).
const SUBSCRIBER_BACKLOG: usize = 1024;

/// The orchestrator's event stream: subscribers, and one queue and dispatcher task per
/// notifier. A notifier that fails is logged, not retried; its later events still go out.
#[derive(Debug)]
pub(crate) struct EventBus {
    /// Subscribers (none is fine).
    subscribers: broadcast::Sender<Event>,
    /// Queues of the dispatchers; emptied by [`EventBus::close`] so they drain and stop.
    queues: Mutex<Vec<mpsc::UnboundedSender<Event>>>,
    /// One task per notifier, delivering its queue in order.
    dispatchers: Mutex<JoinSet<()>>,
}

/// A lock that a panicked holder did not poison for good: the queues and tasks stay
/// consistent between statements.
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|p| p.into_inner())
}

impl EventBus {
    /// A bus delivering to `notifiers`, each from its own task (so it must be opened inside a
    /// Tokio runtime).
    pub(crate) fn open(notifiers: Vec<Arc<dyn Notifier>>) -> Self {
        let (subscribers, _) = broadcast::channel(SUBSCRIBER_BACKLOG);
        let mut dispatchers = JoinSet::new();
        let mut queues = Vec::new();
        for notifier in notifiers {
            let (tx, mut rx) = mpsc::unbounded_channel::<Event>();
            queues.push(tx);
            dispatchers.spawn(async move {
                while let Some(event) = rx.recv().await {
                    if let Err(e) = notifier.notify(&event).await {
                        tracing::warn!(
                            deployment = %event.deployment,
                            error = %e.chain(),
                            "notification not delivered"
                        );
                    }
                }
            });
        }
        EventBus {
            subscribers,
            queues: Mutex::new(queues),
            dispatchers: Mutex::new(dispatchers),
        }
    }

    /// Receive every event published from now on.
    pub(crate) fn subscribe(&self) -> broadcast::Receiver<Event> {
        self.subscribers.subscribe()
    }

    /// Log `event` and send it to every subscriber and, until the bus is closed, to every
    /// notifier's queue.
    pub(crate) fn publish(&self, event: Event) {
        tracing::info!(
            deployment = %event.deployment,
            seq = event.entry.seq,
            phase = %event.phase,
            "{}",
            event.description()
        );
        for queue in lock(&self.queues).iter() {
            // A closed queue means the orchestrator is shutting down.
            let _ = queue.send(event.clone());
        }
        // No subscribers is fine.
        let _ = self.subscribers.send(event);
    }

    /// Stop sending to the notifiers, and wait until each has been given what was already
    /// queued for it. Subscribers still receive what is published afterwards.
    pub(crate) async fn close(&self) {
        lock(&self.queues).clear();
        let mut dispatchers = std::mem::take(&mut *lock(&self.dispatchers));
        // Dispatchers end once their queues are drained.
        while dispatchers.join_next().await.is_some() {}
    }

    /// Stop the dispatchers at once, dropping what is still queued (the orchestrator was
    /// dropped, as in a crash).
    pub(crate) fn abort(&self) {
        lock(&self.dispatchers).abort_all();
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use async_trait::async_trait;

    use super::*;
    use crate::error::{Error, Result};
    use crate::journal::{Actor, DeploymentSpec, DeploymentStatus, JournalEntry, JournalEvent};
    use crate::model::{
        DeploymentId, Digest, EnvironmentKind, EnvironmentSpec, FailurePolicy, Revision,
        ServiceSpec,
    };
    use crate::strategy::StrategySpec;
    use crate::time::Timestamp;

    /// The event of journal entry `seq` of one deployment of `web`.
    fn event(seq: u64) -> Event {
        let service = ServiceSpec::builder().name("web").build().unwrap();
        let environment = EnvironmentSpec::builder()
            .name("production")
            .kind(EnvironmentKind::Production)
            .replicas(1)
            .build()
            .unwrap();
        let revision =
            Revision::new(&service, &environment, Digest::of_bytes(b"web"), "v2").unwrap();
        let spec = DeploymentSpec::builder()
            .id(DeploymentId::new("web-1"))
            .service(revision.service.clone())
            .environment(environment.name.clone())
            .replicas(1)
            .strategy(StrategySpec::default())
            .failure_policy(FailurePolicy::Rollback)
            .progress_deadline(Duration::from_secs(600))
            .requested_by(Actor::new("alice"))
            .target(Arc::new(revision))
            .build();
        let created = JournalEntry::new(
            0,
            Timestamp::from_millis(0),
            JournalEvent::Created {
                spec: Arc::new(spec),
            },
        );
        let status = DeploymentStatus::from_journal(std::slice::from_ref(&created)).unwrap();
        let entry = JournalEntry::new(
            seq,
            Timestamp::from_millis(seq),
            JournalEvent::Started { previous: None },
        );
        Event::new(&status, entry)
    }

    /// Records the sequence numbers it is given, slowly (so a queue builds up), and fails on
    /// those in `fail_on`.
    #[derive(Debug, Default)]
    struct Recorder {
        seen: Mutex<Vec<u64>>,
        fail_on: Vec<u64>,
    }

    impl Recorder {
        fn seen(&self) -> Vec<u64> {
            self.seen.lock().unwrap().clone()
        }
    }

    #[async_trait]
    impl Notifier for Recorder {
        async fn notify(&self, event: &Event) -> Result<()> {
            tokio::time::sleep(Duration::from_millis(5)).await;
            self.seen.lock().unwrap().push(event.entry.seq);
            if self.fail_on.contains(&event.entry.seq) {
                return Err(Error::not_found(format!(
                    "webhook for event {}",
                    event.entry.seq
                )));
            }
            Ok(())
        }
    }

    /// Never finishes a delivery.
    #[derive(Debug)]
    struct Stuck;

    #[async_trait]
    impl Notifier for Stuck {
        async fn notify(&self, _event: &Event) -> Result<()> {
            std::future::pending().await
        }
    }

    #[tokio::test]
    async fn every_notifier_gets_every_event_in_order_and_close_delivers_the_queue() {
        let first = Arc::new(Recorder::default());
        let failing = Arc::new(Recorder {
            fail_on: vec![1],
            ..Recorder::default()
        });
        let bus = EventBus::open(vec![first.clone(), failing.clone()]);
        let mut subscriber = bus.subscribe();
        for seq in 1..=3 {
            bus.publish(event(seq));
        }
        tokio::time::timeout(Duration::from_secs(5), bus.close())
            .await
            .expect("close returns once the queues are delivered");
        assert_eq!(first.seen(), vec![1, 2, 3]);
        // A failed delivery is not retried, and does not stop the ones after it.
        assert_eq!(failing.seen(), vec![1, 2, 3]);
        for seq in 1..=3 {
            assert_eq!(subscriber.recv().await.unwrap().entry.seq, seq);
        }
    }

    #[tokio::test]
    async fn after_close_only_subscribers_receive_events() {
        let recorder = Arc::new(Recorder::default());
        let bus = EventBus::open(vec![recorder.clone()]);
        bus.close().await;
        let mut subscriber = bus.subscribe();
        bus.publish(event(7));
        assert_eq!(subscriber.recv().await.unwrap().entry.seq, 7);
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert_eq!(recorder.seen(), Vec::<u64>::new());
        // Publishing without subscribers is fine.
        drop(subscriber);
        bus.publish(event(8));
    }

    #[tokio::test]
    async fn abort_stops_the_dispatchers_without_delivering_their_queues() {
        let recorder = Arc::new(Recorder::default());
        let bus = EventBus::open(vec![Arc::new(Stuck), recorder.clone()]);
        bus.publish(event(1));
        bus.abort();
        tokio::time::timeout(Duration::from_secs(1), bus.close())
            .await
            .expect("close returns at once: the stuck dispatcher was aborted");
        assert_eq!(recorder.seen(), Vec::<u64>::new());
    }
}
