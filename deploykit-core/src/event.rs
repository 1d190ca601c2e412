//! The event stream: one [`Event`] per journal entry, for timelines, notifications and metrics.

use std::fmt;

use crate::journal::{
    DeploymentKind, DeploymentStatus, JournalEntry, JournalEvent, Outcome, Phase,
};
use crate::model::{DeploymentId, EnvironmentName, RevisionId, ServiceId, StrategySpec};
use crate::time::Timestamp;

/// Something that happened to a deployment: a journal entry with its context.
///
/// Subscribe with [`crate::Orchestrator::subscribe`]. `Display` renders one timeline line:
/// `web/production v3: rolling back to v2: 3 of 3 new instances failed readiness: …`.
#[derive(Clone, Debug, PartialEq)]
#[non_exhaustive]
pub struct Event {
    /// The deployment.
    pub deployment: DeploymentId,
    /// Its service.
    pub service: ServiceId,
    /// Its environment.
    pub environment: EnvironmentName,
    /// The label of the revision it rolls out.
    pub revision: String,
    /// The id of the revision it rolls out.
    pub revision_id: RevisionId,
    /// The phase after this entry.
    pub phase: Phase,
    /// The journal entry.
    pub entry: JournalEntry,
    /// The revision being returned to on rollback, if known.
    pub previous: Option<String>,
    /// The deployment's strategy: `rolling`, `blue_green` or `canary`.
    pub strategy: &'static str,
    /// When the deployment was created (for durations measured from its start).
    pub created_at: Timestamp,
}

impl Event {
    pub(crate) fn new(status: &DeploymentStatus, entry: JournalEntry) -> Self {
        Event {
            deployment: status.spec.id.clone(),
            service: status.spec.service.clone(),
            environment: status.spec.environment.clone(),
            revision: status.spec.target.label.clone(),
            revision_id: status.spec.target.id.clone(),
            phase: status.phase,
            entry,
            previous: status.previous.as_ref().map(|r| r.label.clone()),
            strategy: match status.spec.strategy {
                StrategySpec::Rolling(_) => "rolling",
                StrategySpec::BlueGreen(_) => "blue_green",
                StrategySpec::Canary(_) => "canary",
            },
            created_at: status.created_at,
        }
    }

    /// What happened, without the service prefix.
    pub fn description(&self) -> String {
        let previous = self.previous.as_deref().unwrap_or("nothing");
        match &self.entry.event {
            JournalEvent::Created { spec } => match &spec.kind {
                DeploymentKind::Deploy => {
                    format!(
                        "deploy requested by {} ({} replicas)",
                        spec.requested_by, spec.replicas
                    )
                }
                DeploymentKind::Rollback => {
                    format!("manual rollback requested by {}", spec.requested_by)
                }
                DeploymentKind::Preview { branch, expires_at } => format!(
                    "preview of {branch} requested by {} (expires {expires_at})",
                    spec.requested_by
                ),
                DeploymentKind::Teardown => format!("teardown requested by {}", spec.requested_by),
                DeploymentKind::Scale { replicas } => {
                    format!("scale to {replicas} requested by {}", spec.requested_by)
                }
            },
            JournalEvent::Started { previous } => match previous {
                Some(p) if p.id == self.revision_id => format!(
                    "{} already serves: nothing to roll out, only checking it runs at full size \
                     with all traffic",
                    p.label
                ),
                Some(p) => format!("started, replacing {}", p.label),
                None => "started (first deployment)".to_string(),
            },
            JournalEvent::Applied { desired, observed } => {
                format!("scale to {} (was: {observed})", desired.summary())
            }
            JournalEvent::StepReached { step } => format!("step {step} reached"),
            JournalEvent::Measured { measurement: m } => format!(
                "analysis {}: {} {}: {}",
                m.run, m.metric, m.outcome, m.detail
            ),
            JournalEvent::ApprovalRequested { gate, reason } => {
                format!("waiting for approval of {gate}: {reason}")
            }
            JournalEvent::Approved { gate, by, reason } => {
                format!("{gate} approved by {by}: {reason}")
            }
            JournalEvent::ReadyToPromote => {
                "ready to promote; waiting for the rest of the release".to_string()
            }
            JournalEvent::Promoted => format!("promoted: all traffic to {}", self.revision),
            JournalEvent::Paused { by, reason } => format!("paused by {by}: {reason}"),
            JournalEvent::Resumed { by } => format!("resumed by {by}"),
            JournalEvent::AbortRequested { by, reason } => {
                format!("abort requested by {by}: {reason}")
            }
            JournalEvent::RollbackStarted { reason, .. } => {
                format!("rolling back to {previous}: {reason}")
            }
            JournalEvent::Finished { outcome } => match outcome {
                Outcome::Succeeded => format!("succeeded: {} serving", self.revision),
                Outcome::RolledBack { verification } => {
                    format!("rolled back, verified: {verification}")
                }
                Outcome::Frozen { reason } => format!("frozen where it stands: {reason}"),
                Outcome::Failed { reason } => format!("failed: {reason}"),
            },
        }
    }
}

impl fmt::Display for Event {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}/{} {}: {}",
            self.service,
            self.environment,
            self.revision,
            self.description()
        )
    }
}

/// The event stream of every deployment in a [`StateStore`](crate::StateStore), read from
/// the journals: for a process that does not run the orchestrator (a daemon serving
/// metrics, a dashboard) but shares its store. Each [`poll`](Self::poll) returns the events
/// of the entries written since the previous one, in journal order per deployment; every
/// entry is seen once, whichever process wrote it. Deployments that have ended are not read
/// again.
///
/// ```
/// # async fn f(store: std::sync::Arc<dyn deploykit_core::StateStore>) -> deploykit_core::Result<()> {
/// use deploykit_core::event::JournalFollower;
/// // Only what happens from now on: the history already in the store is skipped.
/// let mut follower = JournalFollower::from_now(store).await?;
/// loop {
///     for event in follower.poll().await? {
///         println!("{event}");
///     }
///     tokio::time::sleep(std::time::Duration::from_secs(1)).await;
/// }
/// # }
/// ```
pub struct JournalFollower {
    store: std::sync::Arc<dyn crate::StateStore>,
    /// Every deployment seen, folded up to the entries already returned.
    seen: std::collections::HashMap<DeploymentId, DeploymentStatus>,
    /// Deployments whose journal cannot be folded, with why: skipped from then on.
    unreadable: std::collections::BTreeMap<DeploymentId, String>,
    /// Where an earlier follower stood, for deployments seen for the first time.
    resumed: Option<FollowerCursor>,
    /// The time of the newest entry read, once a poll ran (the epoch if there was none).
    polled_at: Option<Timestamp>,
}

/// Where a [`JournalFollower`] stands, to be saved and given to
/// [`JournalFollower::from_cursor`] by the next process, so that what happened while none ran
/// is delivered, and nothing before it again.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct FollowerCursor {
    /// The next entry of each deployment that had not ended (or ended in the last ten
    /// minutes).
    pub next: std::collections::BTreeMap<DeploymentId, u64>,
    /// The time of the newest entry the follower had read (as its writers' clocks tell):
    /// deployments created after it are new. `None`: no follower ever polled.
    pub at: Option<Timestamp>,
}

/// Clocks of several processes disagree a little: a deployment created this long before a
/// cursor's time, and not in it, is delivered anyway (at least once, never lost).
const CURSOR_SKEW: std::time::Duration = std::time::Duration::from_secs(2);

/// Ended deployments stay in a cursor this long after their last entry.
const CURSOR_RECENT: std::time::Duration = std::time::Duration::from_secs(600);

impl fmt::Debug for JournalFollower {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("JournalFollower")
            .field("deployments", &self.seen.len())
            .field("unreadable", &self.unreadable)
            .finish_non_exhaustive()
    }
}

impl JournalFollower {
    /// A follower whose first poll returns every entry already in the store.
    pub fn from_start(store: std::sync::Arc<dyn crate::StateStore>) -> Self {
        JournalFollower {
            store,
            seen: std::collections::HashMap::new(),
            unreadable: std::collections::BTreeMap::new(),
            resumed: None,
            polled_at: None,
        }
    }

    /// A follower that goes on where the one that saved `cursor` ([`cursor`](Self::cursor))
    /// stopped: its first poll returns the entries written since (of deployments in flight
    /// then, and of every deployment created after it), and nothing older. Without a time in
    /// the cursor (none was ever saved), it is [`from_now`](Self::from_now).
    pub async fn from_cursor(
        store: std::sync::Arc<dyn crate::StateStore>,
        cursor: FollowerCursor,
    ) -> crate::Result<Self> {
        if cursor.at.is_none() {
            return Self::from_now(store).await;
        }
        let mut follower = Self::from_start(store);
        // A follower that then reads nothing new still stands where this one did.
        follower.polled_at = cursor.at;
        follower.resumed = Some(cursor);
        Ok(follower)
    }

    /// Where this follower stands, for [`from_cursor`](Self::from_cursor).
    pub fn cursor(&self) -> FollowerCursor {
        FollowerCursor {
            next: self
                .seen
                .iter()
                // Ended ones too, while recent: one created just before the cursor's time is
                // not taken for new (see CURSOR_SKEW) and sent again.
                .filter(|(_, s)| {
                    !s.phase.is_terminal()
                        || self
                            .polled_at
                            .is_none_or(|at| s.updated_at.plus(CURSOR_RECENT) >= at)
                })
                .map(|(id, s)| (id.clone(), s.next_seq))
                .collect(),
            at: self.polled_at,
        }
    }

    /// A follower that skips what the store holds now: its polls return only entries
    /// written after this call.
    pub async fn from_now(store: std::sync::Arc<dyn crate::StateStore>) -> crate::Result<Self> {
        let mut follower = Self::from_start(store);
        follower.poll().await?;
        Ok(follower)
    }

    /// The events of the entries written since the last poll. An error is the store's (it
    /// could not list or load); a journal that cannot be folded (an entry its deployment's
    /// phase does not allow, a gap) leaves out that deployment from then on, after the events
    /// of its entries before the damage, and is listed by [`unreadable`](Self::unreadable):
    /// one damaged journal does not stop the stream of the others.
    pub async fn poll(&mut self) -> crate::Result<Vec<Event>> {
        let mut events = Vec::new();
        for (service, environment) in self.store.list_environments().await? {
            for id in self.store.list_deployments(&service, &environment).await? {
                if self.unreadable.contains_key(&id) {
                    continue;
                }
                let from = match self.seen.get(&id) {
                    Some(status) if status.phase.is_terminal() => continue,
                    Some(status) => status.next_seq,
                    None => 0,
                };
                let Some(entries) = self.store.load_from(&id, from).await? else {
                    continue;
                };
                if let Err(e) = self.fold(&id, entries, &mut events) {
                    tracing::warn!(deployment = %id, error = %e.chain(), "a journal that cannot be read is left out of the event stream");
                    self.seen.remove(&id);
                    self.unreadable.insert(id, e.chain());
                }
            }
        }
        // The newest entry read so far (in the writers' clock): what is created after it is new.
        let newest = events.iter().map(|e| e.entry.at).max();
        self.polled_at = Some(
            self.polled_at
                .into_iter()
                .chain(newest)
                .max()
                .unwrap_or_default(),
        );
        Ok(events)
    }

    /// The deployments left out because their journal cannot be folded, with why.
    pub fn unreadable(&self) -> impl Iterator<Item = (&DeploymentId, &str)> {
        self.unreadable.iter().map(|(id, why)| (id, why.as_str()))
    }

    /// Folds `entries` (from the deployment's next sequence number) into its status, pushing
    /// one event per entry.
    fn fold(
        &mut self,
        id: &DeploymentId,
        entries: Vec<JournalEntry>,
        events: &mut Vec<Event>,
    ) -> crate::Result<()> {
        let mut entries = entries.into_iter();
        let mut skip_below = 0;
        let status = match self.seen.entry(id.clone()) {
            std::collections::hash_map::Entry::Occupied(seen) => seen.into_mut(),
            std::collections::hash_map::Entry::Vacant(new) => {
                let Some(first) = entries.next() else {
                    return Ok(());
                };
                // Seen for the first time after a resume: from where the cursor stood, all of
                // it if created since, none of it if it was history already.
                skip_below = match &self.resumed {
                    Some(c) => match c.next.get(id) {
                        Some(next) => *next,
                        None if c.at.is_some_and(|at| first.at.plus(CURSOR_SKEW) >= at) => 0,
                        None => u64::MAX,
                    },
                    None => 0,
                };
                let status = DeploymentStatus::from_journal(std::slice::from_ref(&first))?;
                if first.seq >= skip_below {
                    events.push(Event::new(&status, first));
                }
                new.insert(status)
            }
        };
        for entry in entries {
            status.apply(&entry).map_err(|e| crate::Error::Corrupt {
                what: format!("journal of {id} at entry {}", entry.seq),
                source: e.chain().into(),
            })?;
            if entry.seq >= skip_below {
                events.push(Event::new(status, entry));
            }
        }
        Ok(())
    }
}

/// The events of a whole journal, one per entry, each with the phase after it: a deployment's
/// timeline (what a dashboard or a report shows). The journal is checked as it is folded; a
/// damaged one is an error naming the entry.
///
/// ```
/// # async fn f(orchestrator: &deploykit_core::Orchestrator, id: &deploykit_core::DeploymentId) -> deploykit_core::Result<()> {
/// for event in deploykit_core::event::timeline(&orchestrator.journal(id).await?)? {
///     println!("{} {}", event.entry.at, event.description());
/// }
/// # Ok(()) }
/// ```
pub fn timeline(entries: &[JournalEntry]) -> crate::Result<Vec<Event>> {
    let Some((first, rest)) = entries.split_first() else {
        return Ok(Vec::new());
    };
    let mut status = DeploymentStatus::from_journal(std::slice::from_ref(first))?;
    let mut events = Vec::with_capacity(entries.len());
    events.push(Event::new(&status, first.clone()));
    for entry in rest {
        status.apply(entry).map_err(|e| crate::Error::Corrupt {
            what: format!("journal of {} at entry {}", status.spec.id, entry.seq),
            source: e.chain().into(),
        })?;
        events.push(Event::new(&status, entry.clone()));
    }
    Ok(events)
}
