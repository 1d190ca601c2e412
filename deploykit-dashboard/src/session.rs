//! Who is using the dashboard: signed login links, session cookies and form tokens.
//!
//! The dashboard trusts the same thing the command line does. Whoever can read the state
//! directory can drive deployments as any actor (`deploykit --actor`), so whoever can read the
//! dashboard's key there may mint a login link for an actor (`deploykit dashboard`). The link
//! carries `actor.expiry.signature` (HMAC-SHA256 over the purpose, the actor and the expiry);
//! opening it sets a session cookie of the same form (`HttpOnly`, `SameSite=Strict`), and every
//! form carries a token derived from the session, so another site cannot post as the user.

use std::path::Path;
use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use deploykit_core::{Actor, Error, Result, Timestamp};
use hmac::{Hmac, Mac};
use sha2::Sha256;

type HmacSha256 = Hmac<Sha256>;

/// How long a login link may be opened after it was made.
pub const LOGIN_LINK_VALIDITY: Duration = Duration::from_secs(15 * 60);
/// How long a session lasts after login.
pub const SESSION_VALIDITY: Duration = Duration::from_secs(12 * 60 * 60);

/// The secret that signs login links, sessions and form tokens (32 random bytes).
#[derive(Clone)]
pub struct SessionKey([u8; 32]);

impl std::fmt::Debug for SessionKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SessionKey(..)")
    }
}

/// What a signed token is for: a token made for one purpose is refused for another.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Purpose {
    Login,
    Session,
}

impl Purpose {
    fn as_str(self) -> &'static str {
        match self {
            Purpose::Login => "login",
            Purpose::Session => "session",
        }
    }
}

impl SessionKey {
    /// A new random key.
    pub fn generate() -> Result<Self> {
        let mut key = [0u8; 32];
        getrandom::fill(&mut key)
            .map_err(|e| Error::backend("generate the dashboard's session key", e.to_string()))?;
        Ok(SessionKey(key))
    }

    /// The key in `path`, made (readable by its owner only) if there is none. A file of
    /// another size is an error naming it, never silently replaced: links already handed out
    /// would stop working for a reason nobody could see.
    pub fn load_or_create(path: &Path) -> Result<Self> {
        match std::fs::read(path) {
            Ok(bytes) => {
                let key: [u8; 32] = bytes.as_slice().try_into().map_err(|_| {
                    Error::invalid(
                        path.display().to_string(),
                        format!(
                            "is {} bytes; a dashboard key is 32 (delete it to make a new one, \
                             which ends every session)",
                            bytes.len()
                        ),
                    )
                })?;
                Ok(SessionKey(key))
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let key = Self::generate()?;
                write_private(path, &key.0)?;
                Ok(key)
            }
            Err(e) => Err(Error::backend(
                format!("read the dashboard key {}", path.display()),
                e.to_string(),
            )),
        }
    }

    /// Only the key in `path`; an error saying how to get one if there is none.
    pub fn load(path: &Path) -> Result<Self> {
        if !path.exists() {
            return Err(Error::not_found(format!(
                "dashboard key {} (the daemon makes it when started with --dashboard-listen)",
                path.display()
            )));
        }
        Self::load_or_create(path)
    }

    /// A login link's token for `actor`, valid for [`LOGIN_LINK_VALIDITY`] from `now`.
    pub fn login_token(&self, actor: &Actor, now: Timestamp) -> String {
        self.sign(Purpose::Login, actor, now.plus(LOGIN_LINK_VALIDITY))
    }

    pub(crate) fn session_token(&self, actor: &Actor, now: Timestamp) -> String {
        self.sign(Purpose::Session, actor, now.plus(SESSION_VALIDITY))
    }

    fn sign(&self, purpose: Purpose, actor: &Actor, expires: Timestamp) -> String {
        let actor = URL_SAFE_NO_PAD.encode(actor.as_str());
        let expires = expires.as_millis();
        let mac = self.mac(&format!("{}|{actor}|{expires}", purpose.as_str()));
        format!("{actor}.{expires}.{}", URL_SAFE_NO_PAD.encode(mac))
    }

    fn mac(&self, message: &str) -> Vec<u8> {
        let mut mac = HmacSha256::new_from_slice(&self.0).expect("HMAC takes any key length");
        mac.update(message.as_bytes());
        mac.finalize().into_bytes().to_vec()
    }

    /// The actor a token names, if it is for `purpose`, signed with this key and not expired.
    pub(crate) fn verify(&self, token: &str, purpose: Purpose, now: Timestamp) -> Result<Actor> {
        let refused = |why: &str| Error::invalid("token", why.to_string());
        let mut parts = token.splitn(3, '.');
        let (Some(actor), Some(expires), Some(signature)) =
            (parts.next(), parts.next(), parts.next())
        else {
            return Err(refused("is not a deploykit dashboard token"));
        };
        let signature = URL_SAFE_NO_PAD
            .decode(signature)
            .map_err(|_| refused("has a malformed signature"))?;
        let mut mac = HmacSha256::new_from_slice(&self.0).expect("HMAC takes any key length");
        mac.update(format!("{}|{actor}|{expires}", purpose.as_str()).as_bytes());
        mac.verify_slice(&signature).map_err(|_| {
            refused("is not signed by this dashboard's key (made for another daemon, or altered)")
        })?;
        let expires: u64 = expires
            .parse()
            .map_err(|_| refused("has a malformed expiry"))?;
        if now.as_millis() >= expires {
            return Err(refused(
                "has expired: ask `deploykit dashboard` for a new link",
            ));
        }
        let actor = URL_SAFE_NO_PAD
            .decode(actor)
            .ok()
            .and_then(|a| String::from_utf8(a).ok())
            .filter(|a| !a.trim().is_empty())
            .ok_or_else(|| refused("names no actor"))?;
        Ok(Actor::new(actor))
    }

    /// The token every form of a session carries (hex of HMAC-SHA256 over the session).
    pub(crate) fn form_token(&self, session: &str) -> String {
        self.mac(&format!("form|{session}"))
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect()
    }

    /// Whether `token` is the form token of `session`, compared in constant time.
    pub(crate) fn check_form_token(&self, session: &str, token: &str) -> bool {
        let expected = self.form_token(session);
        expected.len() == token.len()
            && expected
                .bytes()
                .zip(token.bytes())
                .fold(0u8, |acc, (a, b)| acc | (a ^ b))
                == 0
    }
}

/// Writes `bytes` to a new file at `path` readable by its owner only.
fn write_private(path: &Path, bytes: &[u8]) -> Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let io = |e: std::io::Error| {
        Error::backend(
            format!("write the dashboard key {}", path.display()),
            e.to_string(),
        )
    };
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(io)?;
    }
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(io)?;
    file.write_all(bytes).map_err(io)?;
    file.sync_all().map_err(io)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(ms: u64) -> Timestamp {
        Timestamp::from_millis(ms)
    }

    #[test]
    fn a_token_names_its_actor_until_it_expires_and_only_for_its_purpose() {
        let key = SessionKey::generate().unwrap();
        let carol = Actor::new("carol the release manager");
        let login = key.login_token(&carol, at(1_000));
        assert_eq!(
            key.verify(&login, Purpose::Login, at(2_000)).unwrap(),
            carol
        );
        let expired = key
            .verify(
                &login,
                Purpose::Login,
                at(1_000).plus(LOGIN_LINK_VALIDITY + Duration::from_millis(1)),
            )
            .unwrap_err();
        assert!(expired.to_string().contains("expired"), "{expired}");
        let wrong = key.verify(&login, Purpose::Session, at(2_000)).unwrap_err();
        assert!(wrong.to_string().contains("not signed"), "{wrong}");
    }

    #[test]
    fn altered_foreign_and_malformed_tokens_are_refused() {
        let key = SessionKey::generate().unwrap();
        let other = SessionKey::generate().unwrap();
        let token = key.session_token(&Actor::new("carol"), at(0));
        // Another actor's name with carol's signature.
        let (_, rest) = token.split_once('.').unwrap();
        let forged = format!("{}.{rest}", URL_SAFE_NO_PAD.encode("mallory"));
        assert!(key.verify(&forged, Purpose::Session, at(1)).is_err());
        // A later expiry with the old signature.
        let mut parts: Vec<&str> = token.split('.').collect();
        let later = (u64::MAX / 2).to_string();
        parts[1] = &later;
        assert!(
            key.verify(&parts.join("."), Purpose::Session, at(1))
                .is_err()
        );
        assert!(other.verify(&token, Purpose::Session, at(1)).is_err());
        for junk in ["", ".", "..", "a.b.c", "a.1.!!!", &"x".repeat(10_000)] {
            assert!(
                key.verify(junk, Purpose::Session, at(1)).is_err(),
                "{junk:?}"
            );
        }
    }

    #[test]
    fn form_tokens_belong_to_one_session() {
        let key = SessionKey::generate().unwrap();
        let a = key.session_token(&Actor::new("a"), at(0));
        let b = key.session_token(&Actor::new("b"), at(0));
        assert!(key.check_form_token(&a, &key.form_token(&a)));
        assert!(!key.check_form_token(&b, &key.form_token(&a)));
        assert!(!key.check_form_token(&a, ""));
    }

    #[test]
    fn the_key_file_is_private_kept_and_never_replaced_when_damaged() {
        use std::os::unix::fs::PermissionsExt;
        let dir = std::env::temp_dir().join(format!("dk-dash-key-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let path = dir.join("dashboard.key");
        assert!(SessionKey::load(&path).is_err());
        let made = SessionKey::load_or_create(&path).unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        let again = SessionKey::load(&path).unwrap();
        assert_eq!(made.0, again.0);
        std::fs::write(&path, b"short").unwrap();
        let e = SessionKey::load_or_create(&path).unwrap_err();
        assert!(e.to_string().contains("is 5 bytes"), "{e}");
        assert_eq!(std::fs::read(&path).unwrap(), b"short");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
