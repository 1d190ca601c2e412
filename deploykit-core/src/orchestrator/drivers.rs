//! The driver registry: this orchestrator's deployment drivers, at most one per deployment, the
//! wakers an operator's action rings, and the leases the drivers hold (handed back on
//! shutdown). It knows nothing of what a driver does; [`super::driver`] is the control loop.

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::sync::{Arc, Mutex, MutexGuard};

use tokio::sync::Notify;
use tokio::task::JoinSet;

use crate::model::DeploymentId;
use crate::store::Lease;

/// This orchestrator's deployment drivers and what they share with the rest of it. Every
/// driver runs in its own task; they are aborted when the orchestrator is dropped
/// ([`Drivers::abort_all`]) or shut down ([`Drivers::stop`]).
#[derive(Debug, Default)]
pub(crate) struct Drivers {
    /// The running drivers.
    tasks: Mutex<JoinSet<()>>,
    /// The deployments that have a driver here, so that none gets two. Shared with the
    /// drivers' [`Mark`]s, which take their deployment out when the driver ends.
    driving: Arc<Mutex<HashSet<DeploymentId>>>,
    /// What each driver sleeps on between steps, rung when an operator acts.
    wakers: Mutex<HashMap<DeploymentId, Arc<Notify>>>,
    /// Leases held by the drivers, so that [`Drivers::stop`] can hand them back.
    leases: Mutex<HashMap<DeploymentId, Lease>>,
}

/// A lock that a panicked holder did not poison for good: every map here stays consistent
/// between statements, so its contents are still right.
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|p| p.into_inner())
}

impl Drivers {
    /// Whether a driver here drives `id`.
    pub(crate) fn is_driving(&self, id: &DeploymentId) -> bool {
        lock(&self.driving).contains(id)
    }

    /// Start the driver `driver` makes for `id` in its own task, unless a driver here already
    /// drives `id` (then `driver` is not called). Returns whether one was started. However the
    /// driver ends, even aborted, `id` may then be started again.
    pub(crate) fn start_unless_driven<F>(
        &self,
        id: &DeploymentId,
        driver: impl FnOnce() -> F,
    ) -> bool
    where
        F: Future<Output = ()> + Send + 'static,
    {
        if !lock(&self.driving).insert(id.clone()) {
            return false;
        }
        let mark = Mark {
            driving: Arc::clone(&self.driving),
            id: id.clone(),
        };
        let driver = driver();
        let mut tasks = lock(&self.tasks);
        // Reap finished drivers so the set does not grow without bound.
        while tasks.try_join_next().is_some() {}
        tasks.spawn(async move {
            let _mark = mark;
            driver.await;
        });
        true
    }

    /// What the driver of `id` sleeps on between steps (made on first use).
    pub(crate) fn waker(&self, id: &DeploymentId) -> Arc<Notify> {
        lock(&self.wakers).entry(id.clone()).or_default().clone()
    }

    /// Wake this process's driver of `id`, if it has one (a driver reads the journal when it
    /// starts, so nothing is lost when it has none yet).
    pub(crate) fn wake(&self, id: &DeploymentId) {
        if let Some(waker) = lock(&self.wakers).get(id) {
            waker.notify_one();
        }
    }

    /// Drop the waker of `id` (its driver has ended).
    pub(crate) fn forget_waker(&self, id: &DeploymentId) {
        lock(&self.wakers).remove(id);
    }

    /// Remember that the driver of `id` holds `lease` (replacing the lease it held before).
    pub(crate) fn remember_lease(&self, id: &DeploymentId, lease: &Lease) {
        lock(&self.leases).insert(id.clone(), lease.clone());
    }

    /// Forget the lease of `id`'s driver: it let go of it, or lost it.
    pub(crate) fn forget_lease(&self, id: &DeploymentId) {
        lock(&self.leases).remove(id);
    }

    /// Abort every driver at once, as a crash would: the leases they hold stay until they
    /// expire.
    pub(crate) fn abort_all(&self) {
        lock(&self.tasks).abort_all();
    }

    /// Abort every driver, wait until all have stopped, and hand back the leases they held,
    /// for the caller to release.
    pub(crate) async fn stop(&self) -> Vec<Lease> {
        let mut tasks = std::mem::take(&mut *lock(&self.tasks));
        tasks.abort_all();
        while tasks.join_next().await.is_some() {}
        lock(&self.leases).drain().map(|(_, lease)| lease).collect()
    }
}

/// Marks a deployment as driven here for as long as its driver's task lives.
#[derive(Debug)]
struct Mark {
    driving: Arc<Mutex<HashSet<DeploymentId>>>,
    id: DeploymentId,
}

impl Drop for Mark {
    fn drop(&mut self) {
        lock(&self.driving).remove(&self.id);
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use tokio::sync::oneshot;

    use super::*;
    use crate::time::Timestamp;

    fn id(name: &str) -> DeploymentId {
        DeploymentId::new(name)
    }

    fn lease(key: &str, expires_ms: u64) -> Lease {
        Lease::new(key, "orchestrator-1", Timestamp::from_millis(expires_ms))
    }

    /// A driver that runs until `release` is sent or dropped, and drops `ended` when it stops
    /// (ends or is aborted).
    async fn parked(release: oneshot::Receiver<()>, ended: oneshot::Sender<()>) {
        let _ended = ended;
        let _ = release.await;
    }

    /// Wait (at most a second) until `id` has no driver here.
    async fn until_undriven(drivers: &Drivers, id: &DeploymentId) {
        tokio::time::timeout(Duration::from_secs(1), async {
            while drivers.is_driving(id) {
                tokio::task::yield_now().await;
            }
        })
        .await
        .expect("the driver ended, so its deployment is no longer driven");
    }

    #[tokio::test]
    async fn a_deployment_gets_at_most_one_driver_and_a_new_one_once_it_ends() {
        let drivers = Drivers::default();
        let (release, parked_rx) = oneshot::channel();
        let (ended_tx, ended) = oneshot::channel();
        assert!(drivers.start_unless_driven(&id("web-1"), || parked(parked_rx, ended_tx)));
        assert!(drivers.is_driving(&id("web-1")));

        let mut made = false;
        let started = drivers.start_unless_driven(&id("web-1"), || {
            made = true;
            async {}
        });
        assert!(!started, "a second driver for web-1 was started");
        assert!(!made, "the second driver was made though it is not started");

        // Another deployment gets its own driver meanwhile.
        let (_keep, other_rx) = oneshot::channel();
        let (other_ended, _) = oneshot::channel();
        assert!(drivers.start_unless_driven(&id("api-1"), || parked(other_rx, other_ended)));
        assert!(drivers.is_driving(&id("api-1")));

        release.send(()).unwrap();
        assert!(ended.await.is_err(), "the first driver ended");
        until_undriven(&drivers, &id("web-1")).await;
        assert!(drivers.is_driving(&id("api-1")));
        assert!(drivers.start_unless_driven(&id("web-1"), || async {}));
    }

    #[tokio::test]
    async fn a_wake_reaches_only_a_current_waker() {
        let drivers = Drivers::default();
        let web = id("web-1");
        // Before the driver has a waker, a wake is dropped, not stored for later.
        drivers.wake(&web);
        let waker = drivers.waker(&web);
        assert!(Arc::ptr_eq(&waker, &drivers.waker(&web)));
        let short = Duration::from_millis(50);
        assert!(
            tokio::time::timeout(short, waker.notified()).await.is_err(),
            "a wake before the waker existed was kept"
        );

        drivers.wake(&web);
        assert!(
            tokio::time::timeout(short, waker.notified()).await.is_ok(),
            "the wake did not reach the driver's waker"
        );
        drivers.wake(&id("api-1"));
        assert!(tokio::time::timeout(short, waker.notified()).await.is_err());

        drivers.forget_waker(&web);
        drivers.wake(&web);
        assert!(
            tokio::time::timeout(short, waker.notified()).await.is_err(),
            "a forgotten waker was woken"
        );
        assert!(!Arc::ptr_eq(&waker, &drivers.waker(&web)));
    }

    #[tokio::test]
    async fn stop_aborts_every_driver_and_hands_back_the_leases_still_held() {
        let drivers = Drivers::default();
        let mut ended = Vec::new();
        let mut releases = Vec::new();
        for name in ["web-1", "api-1"] {
            let (release, rx) = oneshot::channel();
            let (tx, end) = oneshot::channel();
            assert!(drivers.start_unless_driven(&id(name), || parked(rx, tx)));
            releases.push(release);
            ended.push(end);
        }
        drivers.remember_lease(&id("web-1"), &lease("web/production", 1_000));
        drivers.remember_lease(&id("api-1"), &lease("api/production", 1_000));
        drivers.remember_lease(&id("web-1"), &lease("web/production", 2_000));
        drivers.forget_lease(&id("api-1"));

        let leases = drivers.stop().await;
        assert_eq!(leases, vec![lease("web/production", 2_000)]);
        for end in ended {
            assert!(end.await.is_err(), "a driver outlived stop");
        }
        assert!(!drivers.is_driving(&id("web-1")));
        assert!(!drivers.is_driving(&id("api-1")));
        assert_eq!(
            drivers.stop().await,
            Vec::new(),
            "leases were handed back twice"
        );
        drop(releases);
    }

    #[tokio::test]
    async fn abort_all_stops_every_driver_without_handing_back_leases() {
        let drivers = Drivers::default();
        let (_release, rx) = oneshot::channel();
        let (tx, ended) = oneshot::channel();
        assert!(drivers.start_unless_driven(&id("web-1"), || parked(rx, tx)));
        drivers.remember_lease(&id("web-1"), &lease("web/production", 1_000));

        drivers.abort_all();
        tokio::time::timeout(Duration::from_secs(1), ended)
            .await
            .expect("the aborted driver stopped")
            .unwrap_err();
        until_undriven(&drivers, &id("web-1")).await;
        assert_eq!(drivers.stop().await, vec![lease("web/production", 1_000)]);
    }
}
