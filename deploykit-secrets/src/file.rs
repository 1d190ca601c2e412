//! The encrypted secrets file, in the manner of sops: keys stay readable, every value is
//! encrypted on its own, a MAC covers the whole file, and the data key is wrapped with `age`
//! for each recipient.
//!
//! ```toml
//! [production]
//! DATABASE_URL = "ENC[xchacha20poly1305,data:…,nonce:…]"
//!
//! [deploykit]
//! version = 1
//! mac = "…"
//!
//! [[deploykit.recipients]]
//! recipient = "age1…"
//! data_key = "…"
//! ```
//!
//! - Each value is XChaCha20-Poly1305 with a random nonce and the value's key path
//!   (`production.DATABASE_URL`) as associated data, so a ciphertext moved under another key
//!   does not decrypt.
//! - A value that did not change keeps its ciphertext, so diffs show what changed.
//! - The MAC is keyed BLAKE3 over every (key path, value) pair. Unlike sops' MAC, which
//!   covers values only, it also catches renamed, removed and added keys — and a file cut
//!   short at a table boundary.
//! - The 256-bit data key is wrapped for every recipient separately with `age`: X25519
//!   public keys (each person and CI decrypt with their own identity) or a passphrase
//!   (scrypt, with a bounded work factor so a hostile file cannot stall the loader).
//!
//! Opening decrypts and checks everything before returning anything: a truncated or
//! tampered file is an [`Error::Secrets`], never partial plaintext.

use std::collections::BTreeMap;
use std::fmt;
use std::io::Write as _;
use std::path::Path;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use chacha20poly1305::aead::{Aead, AeadCore, KeyInit, OsRng, Payload};
use chacha20poly1305::{Key, XChaCha20Poly1305, XNonce};
use secrecy::{ExposeSecret, SecretBox, SecretString};

use deploykit_core::{Error, Result};

/// The file format version this code reads and writes.
pub const FORMAT_VERSION: i64 = 1;

/// The scrypt work factor (log2 N) used when wrapping for a passphrase: age's usual 18
/// (256 MiB, about a second).
pub const DEFAULT_WORK_FACTOR: u8 = 18;

/// The highest scrypt work factor a passphrase identity accepts by default (20: 1 GiB,
/// a few seconds). A file asking for more is refused at once instead of stalling.
pub const MAX_WORK_FACTOR: u8 = 20;

const META: &str = "deploykit";
const PASSPHRASE: &str = "passphrase";
const PREFIX: &str = "ENC[xchacha20poly1305,";

/// Someone a secrets file's data key is wrapped for.
#[derive(Clone)]
pub enum Recipient {
    /// An age X25519 public key (`age1…`).
    X25519(age::x25519::Recipient),
    /// A passphrase, wrapped with age's scrypt at `work_factor` (log2 N).
    Passphrase {
        /// The passphrase.
        passphrase: SecretString,
        /// scrypt work factor used when wrapping.
        work_factor: u8,
    },
}

impl Recipient {
    /// An X25519 recipient from its `age1…` public key.
    pub fn x25519(public_key: &str) -> Result<Self> {
        public_key
            .trim()
            .parse()
            .map(Recipient::X25519)
            .map_err(|e| {
                Error::invalid(
                    "secrets.recipient",
                    format!("{public_key:?} is not an age X25519 public key (age1…): {e}"),
                )
            })
    }

    /// A passphrase recipient with the default work factor.
    pub fn passphrase(passphrase: SecretString) -> Self {
        Recipient::Passphrase {
            passphrase,
            work_factor: DEFAULT_WORK_FACTOR,
        }
    }

    /// The name this recipient is listed under in the file: its public key, or `passphrase`.
    pub fn label(&self) -> String {
        match self {
            Recipient::X25519(r) => r.to_string(),
            Recipient::Passphrase { .. } => PASSPHRASE.to_string(),
        }
    }

    fn wrap(&self, key: &DataKey) -> Result<String> {
        let wrapped = match self {
            Recipient::X25519(r) => age::encrypt(r, key.expose_secret()),
            Recipient::Passphrase {
                passphrase,
                work_factor,
            } => {
                let mut r = age::scrypt::Recipient::new(passphrase.clone());
                r.set_work_factor(*work_factor);
                age::encrypt(&r, key.expose_secret())
            }
        }
        .map_err(|e| Error::backend("wrap the secrets data key", e.to_string()))?;
        Ok(BASE64.encode(wrapped))
    }
}

impl fmt::Debug for Recipient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Recipient::X25519(r) => write!(f, "X25519({r})"),
            Recipient::Passphrase { work_factor, .. } => {
                write!(f, "Passphrase([REDACTED], work factor {work_factor})")
            }
        }
    }
}

/// What opens a secrets file: an X25519 identity or a passphrase.
pub enum Identity {
    /// An age X25519 identity (`AGE-SECRET-KEY-1…`).
    X25519(age::x25519::Identity),
    /// A passphrase; files asking for an scrypt work factor above `max_work_factor` are
    /// refused before any work is done.
    Passphrase {
        /// The passphrase.
        passphrase: SecretString,
        /// Highest accepted scrypt work factor (log2 N).
        max_work_factor: u8,
    },
}

impl Identity {
    /// A fresh X25519 identity.
    pub fn generate() -> Self {
        Identity::X25519(age::x25519::Identity::generate())
    }

    /// An X25519 identity from its `AGE-SECRET-KEY-1…` text. The error does not repeat it.
    pub fn x25519(secret_key: &SecretString) -> Result<Self> {
        secret_key
            .expose_secret()
            .trim()
            .parse()
            .map(Identity::X25519)
            .map_err(|_| {
                Error::invalid(
                    "secrets.identity",
                    "not an age X25519 identity (AGE-SECRET-KEY-1…)",
                )
            })
    }

    /// The X25519 identity in an age key file (as `age-keygen` writes it: `#` comment lines
    /// and one `AGE-SECRET-KEY-1…` line). Errors name the file, never its content.
    pub fn from_key_file(path: &Path) -> Result<Self> {
        let fail =
            |reason: String| Error::invalid(format!("identity file {}", path.display()), reason);
        let text = SecretString::from(
            std::fs::read_to_string(path).map_err(|e| fail(format!("cannot read: {e}")))?,
        );
        let mut keys = text
            .expose_secret()
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty() && !l.starts_with('#'));
        match (keys.next(), keys.next()) {
            (Some(key), None) => Self::x25519(&SecretString::from(key)).map_err(|_| {
                fail("its key line is not an age X25519 identity (AGE-SECRET-KEY-1…)".into())
            }),
            (None, _) => Err(fail("holds no identity".into())),
            (Some(_), Some(_)) => Err(fail(
                "holds more than one identity; give one per file".into(),
            )),
        }
    }

    /// A passphrase identity accepting work factors up to [`MAX_WORK_FACTOR`].
    pub fn passphrase(passphrase: SecretString) -> Self {
        Identity::Passphrase {
            passphrase,
            max_work_factor: MAX_WORK_FACTOR,
        }
    }

    /// The recipient that this identity opens files for.
    pub fn to_recipient(&self) -> Recipient {
        match self {
            Identity::X25519(i) => Recipient::X25519(i.to_public()),
            Identity::Passphrase { passphrase, .. } => Recipient::passphrase(passphrase.clone()),
        }
    }

    /// The identity's secret text (`AGE-SECRET-KEY-1…`), for writing a key file; `None` for
    /// a passphrase.
    pub fn secret_key(&self) -> Option<SecretString> {
        match self {
            Identity::X25519(i) => Some(i.to_string()),
            Identity::Passphrase { .. } => None,
        }
    }

    fn label(&self) -> String {
        match self {
            Identity::X25519(i) => i.to_public().to_string(),
            Identity::Passphrase { .. } => PASSPHRASE.to_string(),
        }
    }
}

impl fmt::Debug for Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Identity::X25519(i) => write!(f, "X25519([REDACTED] for {})", i.to_public()),
            Identity::Passphrase {
                max_work_factor, ..
            } => write!(
                f,
                "Passphrase([REDACTED], max work factor {max_work_factor})"
            ),
        }
    }
}

type DataKey = SecretBox<[u8; 32]>;

fn new_data_key() -> DataKey {
    let key = XChaCha20Poly1305::generate_key(&mut OsRng);
    SecretBox::new(Box::new(key.into()))
}

struct Entry {
    value: SecretString,
    ciphertext: String,
}

struct Wrapped {
    recipient: String,
    data_key: String,
}

/// An opened secrets file: every value decrypted and verified.
///
/// `Debug` shows key paths and recipients, never values.
///
/// ```
/// use deploykit_secrets::{Identity, SecretsFile};
/// use deploykit_core::secrets::{ExposeSecret, SecretString};
///
/// let alice = Identity::generate();
/// let mut file = SecretsFile::create(&[alice.to_recipient()])?;
/// file.set("production.DATABASE_URL", SecretString::from("postgres://app:hunter2@db/shop"))?;
/// let text = file.to_toml();
/// assert!(text.contains("DATABASE_URL = \"ENC[xchacha20poly1305,"));
/// assert!(!text.contains("hunter2"));
///
/// let opened = SecretsFile::parse("secrets.toml", &text, &alice)?;
/// assert_eq!(
///     opened.get("production.DATABASE_URL").unwrap().expose_secret(),
///     "postgres://app:hunter2@db/shop",
/// );
/// # Ok::<(), deploykit_core::Error>(())
/// ```
pub struct SecretsFile {
    key: DataKey,
    values: BTreeMap<String, Entry>,
    wrapped: Vec<Wrapped>,
    mac: String,
    /// A passphrase known in this session and its work factor, to re-wrap a passphrase
    /// recipient on rotation.
    passphrase: Option<(SecretString, u8)>,
}

impl fmt::Debug for SecretsFile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SecretsFile")
            .field("keys", &self.values.keys().collect::<Vec<_>>())
            .field(
                "recipients",
                &self
                    .wrapped
                    .iter()
                    .map(|w| &w.recipient)
                    .collect::<Vec<_>>(),
            )
            .finish()
    }
}

/// Key paths are dot-separated segments of letters, digits, `_` and `-`.
fn check_key_path(path: &str) -> Result<()> {
    let ok = !path.is_empty()
        && path.split('.').all(|segment| {
            !segment.is_empty()
                && segment
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
        });
    if !ok {
        return Err(Error::invalid(
            "secrets.key",
            format!(
                "{path:?} is not a key path: dot-separated segments of letters, digits, `_` and `-`"
            ),
        ));
    }
    if path == META || path.starts_with("deploykit.") {
        return Err(Error::invalid(
            "secrets.key",
            format!("{path:?}: `{META}` is reserved for the file's metadata"),
        ));
    }
    Ok(())
}

impl SecretsFile {
    /// A new, empty file with a fresh data key wrapped for each of `recipients`.
    pub fn create(recipients: &[Recipient]) -> Result<Self> {
        if recipients.is_empty() {
            return Err(Error::invalid(
                "secrets.recipients",
                "a secrets file needs at least one recipient",
            ));
        }
        let mut file = SecretsFile {
            key: new_data_key(),
            values: BTreeMap::new(),
            wrapped: Vec::new(),
            mac: String::new(),
            passphrase: None,
        };
        for r in recipients {
            file.add_recipient(r)?;
        }
        file.mac = file.compute_mac();
        Ok(file)
    }

    /// Read and open the file at `path`.
    pub fn open(path: &Path, identity: &Identity) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::Secrets {
            file: path.display().to_string(),
            reason: format!("cannot read: {e}"),
        })?;
        Self::parse(&path.display().to_string(), &text, identity)
    }

    /// Open the file whose content is `text`; `file` names it in errors.
    pub fn parse(file: &str, text: &str, identity: &Identity) -> Result<Self> {
        let bad = |reason: String| Error::Secrets {
            file: file.to_string(),
            reason,
        };
        let mut table: toml::Table = text.parse().map_err(|e: toml::de::Error| {
            let at = e
                .span()
                .map(|s| {
                    let before = &text[..s.start.min(text.len())];
                    let line = before.matches('\n').count() + 1;
                    let column = before.len() - before.rfind('\n').map_or(0, |i| i + 1) + 1;
                    format!("line {line}, column {column}: ")
                })
                .unwrap_or_default();
            bad(format!(
                "not valid TOML (truncated or edited by hand?): {at}{}",
                e.message()
            ))
        })?;
        let meta = match table.remove(META) {
            Some(toml::Value::Table(meta)) => meta,
            _ => {
                return Err(bad(format!(
                    "no [{META}] table: not a deploykit secrets file, or its metadata was cut off"
                )));
            }
        };
        match meta.get("version") {
            Some(toml::Value::Integer(FORMAT_VERSION)) => {}
            Some(other) => {
                return Err(bad(format!(
                    "format version {other} is not supported (this deploykit reads version {FORMAT_VERSION})"
                )));
            }
            None => return Err(bad(format!("[{META}] has no `version`"))),
        }
        let mac = match meta.get("mac") {
            Some(toml::Value::String(mac)) => mac.clone(),
            _ => return Err(bad(format!("[{META}] has no `mac`"))),
        };
        let mut wrapped = Vec::new();
        let Some(toml::Value::Array(entries)) = meta.get("recipients") else {
            return Err(bad(format!("[{META}] lists no `recipients`")));
        };
        for (i, entry) in entries.iter().enumerate() {
            let field = |name: &str| {
                entry
                    .get(name)
                    .and_then(toml::Value::as_str)
                    .map(str::to_string)
                    .ok_or_else(|| bad(format!("{META}.recipients[{i}] has no `{name}`")))
            };
            wrapped.push(Wrapped {
                recipient: field("recipient")?,
                data_key: field("data_key")?,
            });
        }
        let key = unwrap_key(&wrapped, identity).map_err(bad)?;
        let mut ciphertexts = BTreeMap::new();
        flatten(&table, "", &mut ciphertexts).map_err(bad)?;
        let cipher = XChaCha20Poly1305::new(Key::from_slice(key.expose_secret()));
        let mut values = BTreeMap::new();
        for (path, ciphertext) in ciphertexts {
            let value = decrypt_value(&cipher, &path, &ciphertext).map_err(bad)?;
            values.insert(path, Entry { value, ciphertext });
        }
        let passphrase = match identity {
            Identity::Passphrase { passphrase, .. } => {
                let work_factor = wrapped
                    .iter()
                    .find(|w| w.recipient == PASSPHRASE)
                    .and_then(|w| scrypt_work_factor(&w.data_key))
                    .unwrap_or(DEFAULT_WORK_FACTOR);
                Some((passphrase.clone(), work_factor))
            }
            Identity::X25519(_) => None,
        };
        let opened = SecretsFile {
            key,
            values,
            wrapped,
            mac,
            passphrase,
        };
        let expected = opened.compute_mac();
        // `blake3::Hash` compares in constant time.
        let matches = blake3::Hash::from_hex(&opened.mac)
            .is_ok_and(|stored| stored == blake3::Hash::from_hex(&expected).expect("own hex"));
        if !matches {
            return Err(bad(
                "MAC mismatch: a key was added, removed, renamed or its value replaced outside \
                 deploykit (or the file was cut short)"
                    .to_string(),
            ));
        }
        Ok(opened)
    }

    /// The value at `key`, if there is one.
    pub fn get(&self, key: &str) -> Option<&SecretString> {
        self.values.get(key).map(|e| &e.value)
    }

    /// Every key path, in order.
    pub fn keys(&self) -> impl Iterator<Item = &str> {
        self.values.keys().map(String::as_str)
    }

    /// A version of the value at `key`: keyed BLAKE3 of path and value under a key derived
    /// from the data key, so it changes when the value does but reveals nothing about it.
    pub fn version(&self, key: &str) -> Option<String> {
        let entry = self.values.get(key)?;
        let k = blake3::derive_key(
            "deploykit secrets v1 value version",
            self.key.expose_secret(),
        );
        let mut h = blake3::Hasher::new_keyed(&k);
        absorb(&mut h, key.as_bytes());
        absorb(&mut h, entry.value.expose_secret().as_bytes());
        Some(h.finalize().to_hex()[..16].to_string())
    }

    /// Set `key` to `value`. An unchanged value keeps its ciphertext.
    pub fn set(&mut self, key: &str, value: SecretString) -> Result<()> {
        check_key_path(key)?;
        let conflict = self.values.keys().find(|existing| {
            existing.starts_with(&format!("{key}.")) || key.starts_with(&format!("{existing}."))
        });
        if let Some(existing) = conflict {
            return Err(Error::invalid(
                "secrets.key",
                format!("{key:?} would nest with the existing key {existing:?}"),
            ));
        }
        if let Some(entry) = self.values.get(key)
            && entry.value.expose_secret() == value.expose_secret()
        {
            return Ok(());
        }
        let cipher = self.cipher();
        let ciphertext = encrypt_value(&cipher, key, value.expose_secret())?;
        self.values
            .insert(key.to_string(), Entry { value, ciphertext });
        self.mac = self.compute_mac();
        Ok(())
    }

    /// Remove `key`; whether it was there.
    pub fn remove(&mut self, key: &str) -> bool {
        let removed = self.values.remove(key).is_some();
        if removed {
            self.mac = self.compute_mac();
        }
        removed
    }

    /// The recipients the data key is wrapped for: public keys, and `passphrase`.
    pub fn recipients(&self) -> impl Iterator<Item = &str> {
        self.wrapped.iter().map(|w| w.recipient.as_str())
    }

    /// Wrap the data key for one more recipient.
    pub fn add_recipient(&mut self, recipient: &Recipient) -> Result<()> {
        let label = recipient.label();
        if self.wrapped.iter().any(|w| w.recipient == label) {
            return Err(Error::AlreadyExists {
                what: format!("secrets recipient {label}"),
            });
        }
        let data_key = recipient.wrap(&self.key)?;
        if let Recipient::Passphrase {
            passphrase,
            work_factor,
        } = recipient
        {
            self.passphrase = Some((passphrase.clone(), *work_factor));
        }
        self.wrapped.push(Wrapped {
            recipient: label,
            data_key,
        });
        Ok(())
    }

    /// Remove a recipient (by public key, or `passphrase`) and rotate the data key, so what
    /// the removed recipient may have kept no longer opens the file's future versions.
    /// The last recipient cannot be removed.
    pub fn remove_recipient(&mut self, label: &str) -> Result<()> {
        let Some(index) = self.wrapped.iter().position(|w| w.recipient == label) else {
            return Err(Error::not_found(format!("secrets recipient {label}")));
        };
        if self.wrapped.len() == 1 {
            return Err(Error::invalid(
                "secrets.recipients",
                format!("{label} is the last recipient; nobody could open the file"),
            ));
        }
        let removed = self.wrapped.remove(index);
        if label == PASSPHRASE {
            self.passphrase = None;
        }
        if let Err(e) = self.rotate_data_key() {
            self.wrapped.insert(index, removed);
            return Err(e);
        }
        Ok(())
    }

    /// Replace the data key: every value is re-encrypted and the key re-wrapped for every
    /// recipient. A passphrase recipient needs its passphrase known in this session (the file
    /// was opened or the recipient added with it); otherwise nothing changes and the error
    /// says so.
    pub fn rotate_data_key(&mut self) -> Result<()> {
        let mut recipients = Vec::new();
        for w in &self.wrapped {
            if w.recipient == PASSPHRASE {
                let Some((passphrase, work_factor)) = &self.passphrase else {
                    return Err(Error::invalid(
                        "secrets.recipients",
                        "rotating the data key re-wraps it for the passphrase recipient: open the \
                         file with the passphrase, or remove that recipient first",
                    ));
                };
                recipients.push(Recipient::Passphrase {
                    passphrase: passphrase.clone(),
                    work_factor: *work_factor,
                });
            } else {
                recipients.push(Recipient::x25519(&w.recipient)?);
            }
        }
        let key = new_data_key();
        let cipher = XChaCha20Poly1305::new(Key::from_slice(key.expose_secret()));
        let mut values = BTreeMap::new();
        for (path, entry) in &self.values {
            let ciphertext = encrypt_value(&cipher, path, entry.value.expose_secret())?;
            values.insert(
                path.clone(),
                Entry {
                    value: entry.value.clone(),
                    ciphertext,
                },
            );
        }
        let mut wrapped = Vec::new();
        for r in &recipients {
            wrapped.push(Wrapped {
                recipient: r.label(),
                data_key: r.wrap(&key)?,
            });
        }
        self.key = key;
        self.values = values;
        self.wrapped = wrapped;
        self.mac = self.compute_mac();
        Ok(())
    }

    /// The file's text: readable keys, encrypted values, then the `[deploykit]` metadata.
    pub fn to_toml(&self) -> String {
        let mut root = toml::Table::new();
        for (path, entry) in &self.values {
            let mut table = &mut root;
            let segments: Vec<&str> = path.split('.').collect();
            for segment in &segments[..segments.len() - 1] {
                table = table
                    .entry(segment.to_string())
                    .or_insert_with(|| toml::Value::Table(toml::Table::new()))
                    .as_table_mut()
                    .expect("key paths never nest under a value: `set` refuses it");
            }
            table.insert(
                segments[segments.len() - 1].to_string(),
                toml::Value::String(entry.ciphertext.clone()),
            );
        }
        let mut meta = toml::Table::new();
        meta.insert("version".into(), toml::Value::Integer(FORMAT_VERSION));
        meta.insert("mac".into(), toml::Value::String(self.mac.clone()));
        let recipients = self
            .wrapped
            .iter()
            .map(|w| {
                let mut t = toml::Table::new();
                t.insert("recipient".into(), toml::Value::String(w.recipient.clone()));
                t.insert("data_key".into(), toml::Value::String(w.data_key.clone()));
                toml::Value::Table(t)
            })
            .collect();
        meta.insert("recipients".into(), toml::Value::Array(recipients));
        let body = toml::to_string(&root).expect("a table of strings serialises");
        let mut meta_root = toml::Table::new();
        meta_root.insert(META.into(), toml::Value::Table(meta));
        let meta = toml::to_string(&meta_root).expect("metadata serialises");
        format!(
            "# deploykit secrets: values are encrypted, keys are not. Edit with deploykit.\n{body}\n{meta}"
        )
    }

    /// Write the file to `path` atomically (temporary file, fsync, rename).
    pub fn save(&self, path: &Path) -> Result<()> {
        let fail = |e: std::io::Error| Error::Secrets {
            file: path.display().to_string(),
            reason: format!("cannot write: {e}"),
        };
        let dir = path
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        let mut tmp = tempfile_in(dir).map_err(fail)?;
        tmp.1.write_all(self.to_toml().as_bytes()).map_err(fail)?;
        tmp.1.sync_all().map_err(fail)?;
        std::fs::rename(&tmp.0, path).map_err(fail)?;
        if let Ok(d) = std::fs::File::open(dir) {
            let _ = d.sync_all();
        }
        Ok(())
    }

    fn cipher(&self) -> XChaCha20Poly1305 {
        XChaCha20Poly1305::new(Key::from_slice(self.key.expose_secret()))
    }

    fn compute_mac(&self) -> String {
        let k = blake3::derive_key("deploykit secrets v1 file mac", self.key.expose_secret());
        let mut h = blake3::Hasher::new_keyed(&k);
        h.update(&FORMAT_VERSION.to_le_bytes());
        for (path, entry) in &self.values {
            absorb(&mut h, path.as_bytes());
            absorb(&mut h, entry.value.expose_secret().as_bytes());
        }
        h.finalize().to_hex().to_string()
    }
}

/// A new file next to the target, created exclusively.
fn tempfile_in(dir: &Path) -> std::io::Result<(std::path::PathBuf, std::fs::File)> {
    for attempt in 0..100u32 {
        let name = dir.join(format!(
            ".deploykit-secrets.{}.{attempt}.tmp",
            std::process::id()
        ));
        match std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&name)
        {
            Ok(f) => return Ok((name, f)),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(e),
        }
    }
    Err(std::io::Error::other("no free temporary file name"))
}

/// The work factor in an age scrypt stanza (`-> scrypt <salt> <log2 N>`), so rotation
/// re-wraps a passphrase at the strength it had.
fn scrypt_work_factor(data_key: &str) -> Option<u8> {
    let blob = BASE64.decode(data_key).ok()?;
    let header = String::from_utf8_lossy(&blob[..blob.len().min(200)]).into_owned();
    let stanza = header.lines().find(|l| l.starts_with("-> scrypt "))?;
    stanza.split(' ').nth(3)?.trim().parse().ok()
}

/// Length-prefixed, so (`ab`, `c`) and (`a`, `bc`) hash differently.
fn absorb(h: &mut blake3::Hasher, bytes: &[u8]) {
    h.update(&(bytes.len() as u64).to_le_bytes());
    h.update(bytes);
}

fn unwrap_key(wrapped: &[Wrapped], identity: &Identity) -> std::result::Result<DataKey, String> {
    let label = identity.label();
    let listed: Vec<&str> = wrapped.iter().map(|w| w.recipient.as_str()).collect();
    let Some(entry) = wrapped.iter().find(|w| w.recipient == label) else {
        return Err(format!(
            "not encrypted for {label}; its recipients are {}",
            listed.join(", ")
        ));
    };
    let blob = BASE64
        .decode(&entry.data_key)
        .map_err(|e| format!("the data key wrapped for {label} is not base64: {e}"))?;
    let plain = match identity {
        Identity::X25519(i) => age::decrypt(i, &blob),
        Identity::Passphrase {
            passphrase,
            max_work_factor,
        } => {
            let mut i = age::scrypt::Identity::new(passphrase.clone());
            i.set_max_work_factor(*max_work_factor);
            age::decrypt(&i, &blob)
        }
    }
    .map_err(|e| match e {
        age::DecryptError::ExcessiveWork { required, .. } => format!(
            "the passphrase wrapping asks for scrypt work factor {required}, above the accepted \
             maximum of {}; refused without trying",
            match identity {
                Identity::Passphrase {
                    max_work_factor, ..
                } => *max_work_factor,
                Identity::X25519(_) => 0,
            }
        ),
        age::DecryptError::DecryptionFailed | age::DecryptError::NoMatchingKeys => {
            format!("the data key does not unwrap with this {label} identity (wrong passphrase or key, or an edited file)")
        }
        other => format!("the data key wrapped for {label} is damaged: {other}"),
    })?;
    let key: [u8; 32] = plain
        .as_slice()
        .try_into()
        .map_err(|_| format!("the data key wrapped for {label} has the wrong length"))?;
    Ok(SecretBox::new(Box::new(key)))
}

fn flatten(
    table: &toml::Table,
    prefix: &str,
    out: &mut BTreeMap<String, String>,
) -> std::result::Result<(), String> {
    for (k, v) in table {
        let path = if prefix.is_empty() {
            k.clone()
        } else {
            format!("{prefix}.{k}")
        };
        match v {
            toml::Value::Table(t) => flatten(t, &path, out)?,
            toml::Value::String(s) if s.starts_with(PREFIX) => {
                check_key_path(&path).map_err(|e| e.to_string())?;
                out.insert(path, s.clone());
            }
            toml::Value::String(_) => {
                return Err(format!(
                    "{path} holds a value that is not encrypted; set it with deploykit so it is"
                ));
            }
            other => {
                return Err(format!(
                    "{path}: expected an encrypted string, found a {}",
                    other.type_str()
                ));
            }
        }
    }
    Ok(())
}

fn encrypt_value(cipher: &XChaCha20Poly1305, path: &str, value: &str) -> Result<String> {
    let nonce = XChaCha20Poly1305::generate_nonce(&mut OsRng);
    let data = cipher
        .encrypt(
            &nonce,
            Payload {
                msg: value.as_bytes(),
                aad: path.as_bytes(),
            },
        )
        .map_err(|_| Error::backend("encrypt a secret value", "AEAD failure"))?;
    Ok(format!(
        "{PREFIX}data:{},nonce:{}]",
        BASE64.encode(data),
        BASE64.encode(nonce)
    ))
}

fn decrypt_value(
    cipher: &XChaCha20Poly1305,
    path: &str,
    text: &str,
) -> std::result::Result<SecretString, String> {
    let malformed = || format!("{path}: malformed encrypted value");
    let inner = text
        .strip_prefix(PREFIX)
        .and_then(|t| t.strip_suffix(']'))
        .ok_or_else(malformed)?;
    let mut data = None;
    let mut nonce = None;
    for part in inner.split(',') {
        match part.split_once(':') {
            Some(("data", v)) => data = BASE64.decode(v).ok(),
            Some(("nonce", v)) => nonce = BASE64.decode(v).ok(),
            _ => return Err(malformed()),
        }
    }
    let (Some(data), Some(nonce)) = (data, nonce) else {
        return Err(malformed());
    };
    if nonce.len() != 24 {
        return Err(malformed());
    }
    let plain = cipher
        .decrypt(
            XNonce::from_slice(&nonce),
            Payload {
                msg: &data,
                aad: path.as_bytes(),
            },
        )
        .map_err(|_| {
            format!("{path} does not decrypt: its value was edited, or moved here from another key")
        })?;
    String::from_utf8(plain)
        .map(SecretString::from)
        .map_err(|_| format!("{path} decrypts to bytes that are not UTF-8"))
}
