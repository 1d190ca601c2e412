//! The tamper-evident audit log: every record is hash-chained to the one before it, and signed
//! checkpoints (record count + head hash, ed25519) can be kept outside the log.
//!
//! [`verify`] finds any edited, removed or reordered record and names the first bad one; given
//! a checkpoint, it also finds a truncated tail and a rewritten history (same count, different
//! head).

use std::fmt;

use ed25519_dalek::{Signature, Signer, SigningKey, Verifier, VerifyingKey};
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::journal::Actor;
use crate::model::{DeploymentId, EnvironmentName, ServiceId};
use crate::time::Timestamp;

/// An operator action, for the audit log.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum AuditAction {
    /// Deploy a revision.
    Deploy,
    /// Roll back by hand to a kept revision.
    Rollback,
    /// Abort a deployment.
    Abort,
    /// Pause a deployment.
    Pause,
    /// Resume a paused deployment.
    Resume,
    /// Approve a gate.
    Approve,
    /// Reject a gate (the deployment rolls back).
    Reject,
    /// Tear a preview environment down.
    Teardown,
    /// Grant a role.
    Grant,
    /// Take a backup (by hand or by the backup agent).
    Backup,
    /// Restore a backup.
    Restore,
    /// Run a disaster-recovery drill.
    Drill,
    /// Forget snapshots by retention and prune the data no snapshot needs.
    Prune,
    /// Fail an environment over to its standby (or back).
    Failover,
}

impl fmt::Display for AuditAction {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            AuditAction::Deploy => "deploy",
            AuditAction::Rollback => "rollback",
            AuditAction::Abort => "abort",
            AuditAction::Pause => "pause",
            AuditAction::Resume => "resume",
            AuditAction::Approve => "approve",
            AuditAction::Reject => "reject",
            AuditAction::Teardown => "teardown",
            AuditAction::Grant => "grant",
            AuditAction::Backup => "backup",
            AuditAction::Restore => "restore",
            AuditAction::Drill => "drill",
            AuditAction::Prune => "prune",
            AuditAction::Failover => "failover",
        })
    }
}

/// Who did what to which deployment, and when.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct AuditRecord {
    /// When.
    pub at: Timestamp,
    /// Who.
    pub actor: Actor,
    /// What.
    pub action: AuditAction,
    /// Whether it was carried out, or refused (by the access policy or the artifact verifier).
    #[serde(default)]
    pub outcome: AuditOutcome,
    /// Which deployment (none for a refused request that created none).
    pub deployment: Option<DeploymentId>,
    /// Its service.
    pub service: ServiceId,
    /// Its environment.
    pub environment: EnvironmentName,
    /// Free text: the revision, the reason.
    pub detail: String,
}

/// Whether an audited action went ahead.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AuditOutcome {
    /// Carried out.
    #[default]
    Allowed,
    /// Refused: by the access policy, or by the orchestrator's artifact verifier (an image
    /// without a valid signature).
    Denied,
}

impl AuditRecord {
    /// An audit record.
    pub fn new(
        at: Timestamp,
        actor: Actor,
        action: AuditAction,
        deployment: DeploymentId,
        service: ServiceId,
        environment: EnvironmentName,
        detail: impl Into<String>,
    ) -> Self {
        AuditRecord {
            at,
            actor,
            action,
            outcome: AuditOutcome::Allowed,
            deployment: Some(deployment),
            service,
            environment,
            detail: detail.into(),
        }
    }

    /// The same record, marked as refused by the access policy.
    pub fn denied(mut self) -> Self {
        self.outcome = AuditOutcome::Denied;
        self
    }
}

/// The `prev_hash` of the first record.
pub const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// One record of the chained audit log.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct AuditEntry {
    /// Position in the log, from 0.
    pub seq: u64,
    /// The hash of the record before (or [`GENESIS`]).
    pub prev_hash: String,
    /// BLAKE3 over `seq`, `prev_hash` and the record's canonical JSON.
    pub hash: String,
    /// What happened.
    pub record: AuditRecord,
}

impl AuditEntry {
    /// The entry that follows `prev` (or starts the log) with `record`.
    pub fn chain(prev: Option<&AuditEntry>, record: AuditRecord) -> Self {
        let (seq, prev_hash) = match prev {
            Some(p) => (p.seq + 1, p.hash.clone()),
            None => (0, GENESIS.to_string()),
        };
        let hash = digest(seq, &prev_hash, &record);
        AuditEntry {
            seq,
            prev_hash,
            hash,
            record,
        }
    }
}

fn digest(seq: u64, prev_hash: &str, record: &AuditRecord) -> String {
    let mut h = blake3::Hasher::new();
    h.update(&seq.to_le_bytes());
    h.update(prev_hash.as_bytes());
    h.update(&serde_json::to_vec(record).unwrap_or_default());
    h.finalize().to_hex().to_string()
}

/// How far the log went at one moment.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct Checkpoint {
    /// Records in the log.
    pub count: u64,
    /// The hash of the last one.
    pub head: String,
    /// When the checkpoint was taken.
    pub at: Timestamp,
}

/// A checkpoint signed with an ed25519 key, to keep outside the log (a ticket, another store,
/// a printout).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct SignedCheckpoint {
    /// The checkpoint.
    pub checkpoint: Checkpoint,
    /// The signer's public key, hex.
    pub public_key: String,
    /// The signature over the checkpoint's canonical JSON, hex.
    pub signature: String,
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex<const N: usize>(s: &str, what: &str) -> Result<[u8; N]> {
    let bad = || Error::invalid(what, format!("expected {} hex digits", N * 2));
    if s.len() != N * 2 {
        return Err(bad());
    }
    let mut out = [0u8; N];
    for (i, chunk) in s.as_bytes().chunks(2).enumerate() {
        let text = std::str::from_utf8(chunk).map_err(|_| bad())?;
        out[i] = u8::from_str_radix(text, 16).map_err(|_| bad())?;
    }
    Ok(out)
}

impl SignedCheckpoint {
    /// A checkpoint of `entries` (the whole log) at `at`, signed with `key`.
    pub fn sign(entries: &[AuditEntry], at: Timestamp, key: &SigningKey) -> Self {
        let checkpoint = Checkpoint {
            count: entries.len() as u64,
            head: entries
                .last()
                .map_or_else(|| GENESIS.to_string(), |e| e.hash.clone()),
            at,
        };
        let message = serde_json::to_vec(&checkpoint).unwrap_or_default();
        SignedCheckpoint {
            public_key: hex(key.verifying_key().as_bytes()),
            signature: hex(&key.sign(&message).to_bytes()),
            checkpoint,
        }
    }

    /// Check the signature against a key you trust (not the one carried in the checkpoint).
    pub fn verify_signature(&self, trusted: &VerifyingKey) -> Result<()> {
        let bad = |why: &str| Error::AuditTampered {
            seq: self.checkpoint.count,
            reason: format!("checkpoint: {why}"),
        };
        if self.public_key != hex(trusted.as_bytes()) {
            return Err(bad("signed by another key"));
        }
        let signature =
            Signature::from_bytes(&unhex::<64>(&self.signature, "checkpoint.signature")?);
        let message = serde_json::to_vec(&self.checkpoint).unwrap_or_default();
        trusted
            .verify(&message, &signature)
            .map_err(|_| bad("the signature does not match its content"))
    }
}

/// What a successful verification saw.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct Verified {
    /// Records checked.
    pub records: u64,
    /// The hash of the last one.
    pub head: String,
}

/// Check that `entries` (a verified chain) extend checkpoint `c`: at least as long, and the same
/// record at its head. `what` names the checkpoint in errors.
fn extends(entries: &[AuditEntry], c: &Checkpoint, what: &str) -> Result<()> {
    let tampered = |seq: u64, reason: String| Error::AuditTampered { seq, reason };
    let len = entries.len() as u64;
    if len < c.count {
        return Err(tampered(
            len,
            format!(
                "the log was truncated or rolled back: {what} of {} covers {} records, the log \
                 has {len}",
                c.at, c.count
            ),
        ));
    }
    let at = match c.count {
        0 => GENESIS,
        n => entries[n as usize - 1].hash.as_str(),
    };
    if at != c.head {
        return Err(tampered(
            c.count.saturating_sub(1),
            format!(
                "history was rewritten: record {} no longer matches {what} of {}",
                c.count.saturating_sub(1),
                c.at
            ),
        ));
    }
    Ok(())
}

/// Check the chain of `entries` (the whole log, oldest first) and, if given, that it extends a
/// signed checkpoint made with `trusted`'s key. The error names the first bad record.
///
/// On its own this cannot tell an old copy of the log from the current one: an attacker who
/// swaps in an older log together with an older checkpoint passes. Verifiers that come back
/// should keep a [`Witness`], as Certificate Transparency clients keep the largest tree head
/// they have seen.
pub fn verify(
    entries: &[AuditEntry],
    checkpoint: Option<(&SignedCheckpoint, &VerifyingKey)>,
) -> Result<Verified> {
    let tampered = |seq: u64, reason: String| Error::AuditTampered { seq, reason };
    for (i, e) in entries.iter().enumerate() {
        let i = i as u64;
        if e.seq != i {
            return Err(tampered(
                i,
                format!(
                    "record {i} is missing or out of order (found record {} there)",
                    e.seq
                ),
            ));
        }
        let expected_prev = match i {
            0 => GENESIS,
            _ => entries[i as usize - 1].hash.as_str(),
        };
        if e.prev_hash != expected_prev {
            return Err(tampered(
                i,
                format!("record {i} does not follow record {}", i.saturating_sub(1)),
            ));
        }
        if digest(e.seq, &e.prev_hash, &e.record) != e.hash {
            return Err(tampered(
                i,
                format!("record {i} was changed after it was written"),
            ));
        }
    }
    if let Some((signed, key)) = checkpoint {
        signed.verify_signature(key)?;
        extends(entries, &signed.checkpoint, "the checkpoint")?;
    }
    Ok(Verified {
        records: entries.len() as u64,
        head: entries
            .last()
            .map_or_else(|| GENESIS.to_string(), |e| e.hash.clone()),
    })
}

/// The largest audit log a verifier has seen, kept in a file between verifications, so that a
/// log rolled back to an older copy (with its older, genuinely signed checkpoint) is caught:
/// every later log must extend it. The same idea as a Certificate Transparency client keeping
/// the largest signed tree head it has seen.
///
/// ```
/// use deploykit_core::audit::{AuditEntry, Witness};
/// # fn main() -> deploykit_core::Result<()> {
/// let dir = tempfile::tempdir().expect("temp dir");
/// let mut witness = Witness::open(dir.path().join("audit-witness.json"))?;
/// let log: Vec<AuditEntry> = Vec::new(); // the log, as a store returns it
/// let verified = witness.check(&log, None, deploykit_core::Timestamp::from_millis(0))?;
/// assert_eq!(verified.records, 0);
/// # Ok(()) }
/// ```
#[derive(Debug)]
pub struct Witness {
    path: std::path::PathBuf,
    largest: Option<Checkpoint>,
}

impl Witness {
    /// The witness kept in `path` (none seen yet if the file does not exist).
    pub fn open(path: impl Into<std::path::PathBuf>) -> Result<Self> {
        let path = path.into();
        let largest = match std::fs::read(&path) {
            Ok(bytes) => Some(serde_json::from_slice(&bytes).map_err(|e| {
                Error::invalid(
                    path.display().to_string(),
                    format!("not an audit witness file: {e}"),
                )
            })?),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
            Err(e) => {
                return Err(Error::backend(
                    format!("read {}", path.display()),
                    e.to_string(),
                ));
            }
        };
        Ok(Witness { path, largest })
    }

    /// The largest log seen so far.
    pub fn largest(&self) -> Option<&Checkpoint> {
        self.largest.as_ref()
    }

    /// [`verify`] `entries` (and the signed checkpoint, if given), check they extend the
    /// largest log seen before, then remember this one (written to a temporary file and renamed
    /// over the witness, so a crash never leaves half a file).
    pub fn check(
        &mut self,
        entries: &[AuditEntry],
        checkpoint: Option<(&SignedCheckpoint, &VerifyingKey)>,
        now: Timestamp,
    ) -> Result<Verified> {
        let verified = verify(entries, checkpoint)?;
        if let Some(largest) = &self.largest {
            extends(entries, largest, "the largest log seen before")?;
        }
        let grew = self
            .largest
            .as_ref()
            .is_none_or(|l| verified.records > l.count);
        if grew {
            let seen = Checkpoint {
                count: verified.records,
                head: verified.head.clone(),
                at: now,
            };
            let bytes = serde_json::to_vec_pretty(&seen)
                .map_err(|e| Error::backend("encode the audit witness", e.to_string()))?;
            let tmp = self.path.with_extension("tmp");
            let io = |what: &str, e: std::io::Error| {
                Error::backend(format!("{what} {}", self.path.display()), e.to_string())
            };
            std::fs::write(&tmp, bytes).map_err(|e| io("write", e))?;
            std::fs::rename(&tmp, &self.path).map_err(|e| io("replace", e))?;
            self.largest = Some(seen);
        }
        Ok(verified)
    }
}
