//! Keys of a backup repository: a random master key (encryption key, blob-id key, config MAC
//! key), wrapped by a passphrase-derived key (Argon2id) or a raw key file; and the sealing of
//! objects and blobs with XChaCha20-Poly1305.

use std::fmt;
use std::path::Path;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use chacha20poly1305::aead::{
    Aead, AeadCore, AeadInPlace, KeyInit, OsRng, Payload, rand_core::RngCore,
};
use chacha20poly1305::{Key, XChaCha20Poly1305, XNonce};
use secrecy::{ExposeSecret, SecretBox, SecretString};
use serde::{Deserialize, Serialize};

use deploykit_core::time::Timestamp;
use deploykit_core::{Error, Result};

const NONCE: usize = 24;
/// Bytes of a Poly1305 tag.
const TAG: usize = 16;

/// Argon2id cost of new passphrase keys: 64 MiB, 3 passes (OWASP's recommendation).
const DEFAULT_M_COST_KIB: u32 = 64 * 1024;
const DEFAULT_T_COST: u32 = 3;
/// The most a key file may ask for (1 GiB, 10 passes): a hostile file cannot stall opening.
const MAX_M_COST_KIB: u32 = 1024 * 1024;
const MAX_T_COST: u32 = 10;

/// How a repository is opened: a passphrase, or a raw key file.
#[derive(Clone)]
pub enum RepoKey {
    /// A passphrase, stretched with Argon2id.
    Passphrase(SecretString),
    /// 32 random bytes from a key file ([`RepoKey::generate_file`]).
    KeyFile(std::sync::Arc<SecretBox<[u8; 32]>>),
}

impl fmt::Debug for RepoKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RepoKey::Passphrase(_) => f.write_str("RepoKey::Passphrase([REDACTED])"),
            RepoKey::KeyFile(_) => f.write_str("RepoKey::KeyFile([REDACTED])"),
        }
    }
}

const KEY_FILE_PREFIX: &str = "deploykit-backup-key-v1:";

impl RepoKey {
    /// A passphrase key.
    pub fn passphrase(passphrase: impl Into<String>) -> Self {
        RepoKey::Passphrase(SecretString::from(passphrase.into()))
    }

    /// Write a new random key file at `path` (created exclusively, mode 0600) and return it.
    pub fn generate_file(path: &Path) -> Result<Self> {
        let mut raw = [0u8; 32];
        OsRng.fill_bytes(&mut raw);
        let text = format!("{KEY_FILE_PREFIX}{}\n", hex(&raw));
        let mut options = std::fs::OpenOptions::new();
        options.write(true).create_new(true);
        #[cfg(unix)]
        std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
        let mut file = options.open(path).map_err(|e| {
            Error::invalid(
                format!("key file {}", path.display()),
                format!("cannot create: {e}"),
            )
        })?;
        std::io::Write::write_all(&mut file, text.as_bytes())
            .and_then(|()| file.sync_all())
            .map_err(|e| {
                Error::backend(format!("write key file {}", path.display()), e.to_string())
            })?;
        Ok(RepoKey::KeyFile(std::sync::Arc::new(SecretBox::new(
            Box::new(raw),
        ))))
    }

    /// Read a key file written by [`RepoKey::generate_file`]. Errors never show its content.
    pub fn from_file(path: &Path) -> Result<Self> {
        let bad = |reason: &str| Error::invalid(format!("key file {}", path.display()), reason);
        let text = SecretString::from(
            std::fs::read_to_string(path).map_err(|e| bad(&format!("cannot read: {e}")))?,
        );
        let hex_key = text
            .expose_secret()
            .trim()
            .strip_prefix(KEY_FILE_PREFIX)
            .ok_or_else(|| bad("not a deploykit backup key file"))?;
        let raw = unhex(hex_key)
            .filter(|b| b.len() == 32)
            .ok_or_else(|| bad("its key is not 64 hex digits"))?;
        let mut key = [0u8; 32];
        key.copy_from_slice(&raw);
        Ok(RepoKey::KeyFile(std::sync::Arc::new(SecretBox::new(
            Box::new(key),
        ))))
    }

    fn kind(&self) -> &'static str {
        match self {
            RepoKey::Passphrase(_) => "passphrase",
            RepoKey::KeyFile(_) => "keyfile",
        }
    }
}

/// Argon2id parameters as stored in a key object.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct Kdf {
    m_cost_kib: u32,
    t_cost: u32,
    p_cost: u32,
    salt: String,
}

/// A key object (`keys/<id>`): the master keys wrapped by one passphrase or key file.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct KeyObject {
    pub(super) kind: String,
    pub(super) created: Timestamp,
    pub(super) kdf: Option<Kdf>,
    /// nonce ‖ ciphertext of the master keys, base64.
    pub(super) wrapped: String,
    /// BLAKE3 of the fields above, so a damaged key object is told apart from a wrong key.
    pub(super) check: String,
}

impl KeyObject {
    fn checksum(&self) -> String {
        let mut h = blake3::Hasher::new();
        h.update(self.kind.as_bytes());
        h.update(&self.created.as_millis().to_le_bytes());
        if let Some(k) = &self.kdf {
            h.update(&k.m_cost_kib.to_le_bytes());
            h.update(&k.t_cost.to_le_bytes());
            h.update(&k.p_cost.to_le_bytes());
            h.update(k.salt.as_bytes());
        }
        h.update(self.wrapped.as_bytes());
        h.finalize().to_hex().to_string()
    }
}

/// The repository's master keys.
pub(super) struct MasterKeys {
    cipher: XChaCha20Poly1305,
    /// Keys blob ids: chunk contents are not fingerprintable without it.
    pub(super) id_key: [u8; 32],
    /// Keys the config's MAC.
    pub(super) mac_key: [u8; 32],
    raw: SecretBox<[u8; 96]>,
}

impl fmt::Debug for MasterKeys {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("MasterKeys([REDACTED])")
    }
}

fn kek(key: &RepoKey, kdf: Option<&Kdf>) -> std::result::Result<[u8; 32], String> {
    match (key, kdf) {
        (RepoKey::KeyFile(raw), None) => Ok(blake3::derive_key(
            "deploykit backup key file v1",
            raw.expose_secret(),
        )),
        (RepoKey::Passphrase(p), Some(k)) => {
            if k.m_cost_kib > MAX_M_COST_KIB || k.t_cost > MAX_T_COST || k.p_cost > 16 {
                return Err(format!(
                    "asks for Argon2id cost m={} KiB t={} p={}, above the accepted maximum \
                     (m={MAX_M_COST_KIB} KiB, t={MAX_T_COST}, p=16); refused without trying",
                    k.m_cost_kib, k.t_cost, k.p_cost
                ));
            }
            let salt = BASE64
                .decode(&k.salt)
                .map_err(|_| "its salt is not base64".to_string())?;
            let params = argon2::Params::new(k.m_cost_kib, k.t_cost, k.p_cost, Some(32))
                .map_err(|e| format!("invalid Argon2id parameters: {e}"))?;
            let argon =
                argon2::Argon2::new(argon2::Algorithm::Argon2id, argon2::Version::V0x13, params);
            let mut out = [0u8; 32];
            argon
                .hash_password_into(p.expose_secret().as_bytes(), &salt, &mut out)
                .map_err(|e| format!("Argon2id failed: {e}"))?;
            Ok(out)
        }
        _ => Err("is for another kind of key".to_string()),
    }
}

impl MasterKeys {
    pub(super) fn generate() -> Self {
        let mut raw = [0u8; 96];
        OsRng.fill_bytes(&mut raw);
        Self::from_raw(raw)
    }

    fn from_raw(raw: [u8; 96]) -> Self {
        let mut id_key = [0u8; 32];
        let mut mac_key = [0u8; 32];
        id_key.copy_from_slice(&raw[32..64]);
        mac_key.copy_from_slice(&raw[64..96]);
        MasterKeys {
            cipher: XChaCha20Poly1305::new(Key::from_slice(&raw[..32])),
            id_key,
            mac_key,
            raw: SecretBox::new(Box::new(raw)),
        }
    }

    /// Wrap these keys for `key`. Tests use a cheap KDF through `cost`.
    pub(super) fn wrap(
        &self,
        key: &RepoKey,
        now: Timestamp,
        cost: Option<(u32, u32)>,
    ) -> Result<KeyObject> {
        let kdf = match key {
            RepoKey::Passphrase(_) => {
                let mut salt = [0u8; 16];
                OsRng.fill_bytes(&mut salt);
                let (m, t) = cost.unwrap_or((DEFAULT_M_COST_KIB, DEFAULT_T_COST));
                Some(Kdf {
                    m_cost_kib: m,
                    t_cost: t,
                    p_cost: 1,
                    salt: BASE64.encode(salt),
                })
            }
            RepoKey::KeyFile(_) => None,
        };
        let kek = kek(key, kdf.as_ref()).map_err(|e| Error::invalid("backup.key", e))?;
        let cipher = XChaCha20Poly1305::new(Key::from_slice(&kek));
        let sealed = seal_with(&cipher, self.raw.expose_secret(), b"deploykit master keys")?;
        let mut object = KeyObject {
            kind: key.kind().to_string(),
            created: now,
            kdf,
            wrapped: BASE64.encode(sealed),
            check: String::new(),
        };
        object.check = object.checksum();
        Ok(object)
    }

    /// Unwrap `object` with `key`; `Err` says why in words (damaged, wrong key, too costly).
    pub(super) fn unwrap(object: &KeyObject, key: &RepoKey) -> std::result::Result<Self, String> {
        if object.check != object.checksum() {
            return Err("is damaged (its checksum does not match)".to_string());
        }
        if object.kind != key.kind() {
            return Err(format!("is for a {}, not a {}", object.kind, key.kind()));
        }
        let kek = kek(key, object.kdf.as_ref())?;
        let cipher = XChaCha20Poly1305::new(Key::from_slice(&kek));
        let sealed = BASE64
            .decode(&object.wrapped)
            .map_err(|_| "is damaged (not base64)".to_string())?;
        let raw = open_with(&cipher, &sealed, b"deploykit master keys")
            .map_err(|()| format!("does not open with this {}", key.kind()))?;
        let raw: [u8; 96] = raw
            .try_into()
            .map_err(|_| "holds keys of the wrong length".to_string())?;
        Ok(Self::from_raw(raw))
    }

    /// nonce ‖ ciphertext of `plain`, bound to `ad`.
    pub(super) fn seal(&self, plain: &[u8], ad: &[u8]) -> Result<Vec<u8>> {
        seal_with(&self.cipher, plain, ad)
    }

    /// [`seal`](Self::seal), appended to `out` and encrypted in place there: the same bytes
    /// (nonce, ciphertext, tag) without a copy of its own.
    pub(super) fn seal_into(&self, plain: &[u8], ad: &[u8], out: &mut Vec<u8>) -> Result<()> {
        let nonce = XChaCha20Poly1305::generate_nonce(&mut OsRng);
        let at = out.len();
        out.extend_from_slice(&nonce);
        out.extend_from_slice(plain);
        match self
            .cipher
            .encrypt_in_place_detached(&nonce, ad, &mut out[at + NONCE..])
        {
            Ok(tag) => {
                out.extend_from_slice(&tag);
                Ok(())
            }
            Err(_) => {
                out.truncate(at);
                Err(Error::backend("encrypt", "AEAD failure"))
            }
        }
    }

    /// The plaintext of `sealed`, if it is authentic for `ad`.
    pub(super) fn open(&self, sealed: &[u8], ad: &[u8]) -> std::result::Result<Vec<u8>, ()> {
        open_with(&self.cipher, sealed, ad)
    }

    /// [`open`](Self::open) in place: decrypts `sealed` where it is, if it is authentic for
    /// `ad`, and returns where the plaintext is in it.
    pub(super) fn open_in_place(
        &self,
        sealed: &mut [u8],
        ad: &[u8],
    ) -> std::result::Result<std::ops::Range<usize>, ()> {
        if sealed.len() < NONCE + TAG {
            return Err(());
        }
        let end = sealed.len() - TAG;
        let (nonce, rest) = sealed.split_at_mut(NONCE);
        let (body, tag) = rest.split_at_mut(end - NONCE);
        self.cipher
            .decrypt_in_place_detached(
                XNonce::from_slice(nonce),
                ad,
                body,
                chacha20poly1305::Tag::from_slice(tag),
            )
            .map_err(|_| ())?;
        Ok(NONCE..end)
    }

    /// The id of a blob with content `plain`: BLAKE3 keyed with the repository's id key.
    pub(super) fn blob_id(&self, plain: &[u8]) -> String {
        blake3::keyed_hash(&self.id_key, plain).to_hex().to_string()
    }
}

fn seal_with(cipher: &XChaCha20Poly1305, plain: &[u8], ad: &[u8]) -> Result<Vec<u8>> {
    let nonce = XChaCha20Poly1305::generate_nonce(&mut OsRng);
    let ct = cipher
        .encrypt(
            &nonce,
            Payload {
                msg: plain,
                aad: ad,
            },
        )
        .map_err(|_| Error::backend("encrypt", "AEAD failure"))?;
    let mut out = Vec::with_capacity(NONCE + ct.len());
    out.extend_from_slice(&nonce);
    out.extend_from_slice(&ct);
    Ok(out)
}

fn open_with(
    cipher: &XChaCha20Poly1305,
    sealed: &[u8],
    ad: &[u8],
) -> std::result::Result<Vec<u8>, ()> {
    if sealed.len() < NONCE + 16 {
        return Err(());
    }
    cipher
        .decrypt(
            XNonce::from_slice(&sealed[..NONCE]),
            Payload {
                msg: &sealed[NONCE..],
                aad: ad,
            },
        )
        .map_err(|_| ())
}

/// Lower-case hex of `bytes`.
pub(super) fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok())
        .collect()
}

/// A random id: 32 bytes of hex.
pub(super) fn random_id() -> String {
    let mut raw = [0u8; 32];
    OsRng.fill_bytes(&mut raw);
    hex(&raw)
}
