//! The encrypted secrets file: round trips, stable ciphertexts, recipients, rotation, and every
//! way a file can be damaged — each with its exact error, and never partial plaintext.

use std::collections::BTreeMap;

use deploykit_core::Error;
use deploykit_core::secrets::{ExposeSecret, SecretProvider, SecretString};
use deploykit_secrets::{FileSecretProvider, Identity, Recipient, SecretsFile};

const FILE: &str = "secrets.toml";

fn secret(s: &str) -> SecretString {
    SecretString::from(s)
}

/// A passphrase recipient with a small work factor, so tests stay fast.
fn cheap_passphrase(p: &str) -> Recipient {
    Recipient::Passphrase {
        passphrase: secret(p),
        work_factor: 10,
    }
}

fn sample(identity: &Identity) -> SecretsFile {
    let mut file = SecretsFile::create(&[identity.to_recipient()]).unwrap();
    file.set(
        "production.DATABASE_URL",
        secret("postgres://app:hunter2@db/shop"),
    )
    .unwrap();
    file.set("production.API_TOKEN", secret("tok-prod-7f3a"))
        .unwrap();
    file.set("staging.API_TOKEN", secret("tok-staging-19c2"))
        .unwrap();
    file
}

fn contents(file: &SecretsFile) -> BTreeMap<String, String> {
    file.keys()
        .map(|k| {
            (
                k.to_string(),
                file.get(k).unwrap().expose_secret().to_string(),
            )
        })
        .collect()
}

fn secrets_error(err: Error) -> String {
    match err {
        Error::Secrets { file, reason } => {
            assert_eq!(file, FILE);
            reason
        }
        other => panic!("expected a secrets error, got {other:?}"),
    }
}

fn line_of<'a>(text: &'a str, key: &str) -> &'a str {
    text.lines()
        .find(|l| l.starts_with(&format!("{key} = ")))
        .unwrap_or_else(|| panic!("no line for {key} in\n{text}"))
}

#[test]
fn round_trip_for_every_recipient_and_nothing_in_clear() {
    let alice = Identity::generate();
    let ci = Identity::generate();
    let mut file = sample(&alice);
    file.add_recipient(&ci.to_recipient()).unwrap();
    let text = file.to_toml();
    for value in ["hunter2", "tok-prod-7f3a", "tok-staging-19c2"] {
        assert!(!text.contains(value), "{value} in clear in\n{text}");
    }
    // Keys stay readable.
    assert!(text.contains("[production]") && text.contains("DATABASE_URL = \"ENC["));
    for who in [&alice, &ci] {
        let opened = SecretsFile::parse(FILE, &text, who).unwrap();
        assert_eq!(contents(&opened), contents(&file));
    }
    let debug = format!("{file:?} {alice:?} {:?}", cheap_passphrase("pw"));
    assert!(
        !debug.contains("hunter2") && !debug.contains("pw\""),
        "{debug}"
    );
}

#[test]
fn unchanged_values_keep_their_ciphertext() {
    let alice = Identity::generate();
    let mut file = sample(&alice);
    let before = file.to_toml();
    file.set(
        "production.DATABASE_URL",
        secret("postgres://app:hunter2@db/shop"),
    )
    .unwrap();
    assert_eq!(
        file.to_toml(),
        before,
        "setting the same value changes nothing"
    );

    let mut reopened = SecretsFile::parse(FILE, &before, &alice).unwrap();
    reopened
        .set("production.API_TOKEN", secret("tok-prod-rotated"))
        .unwrap();
    let after = reopened.to_toml();
    let changed: Vec<(&str, &str)> = before
        .lines()
        .zip(after.lines())
        .filter(|(a, b)| a != b)
        .collect();
    // The changed value and the MAC; nothing else.
    assert_eq!(changed.len(), 2, "{changed:#?}");
    assert!(changed[0].0.starts_with("API_TOKEN = "));
    assert!(changed[1].0.starts_with("mac = "));
    assert_eq!(
        line_of(&before, "DATABASE_URL"),
        line_of(&after, "DATABASE_URL")
    );
}

#[test]
fn a_ciphertext_moved_under_another_key_does_not_decrypt() {
    let alice = Identity::generate();
    let text = sample(&alice).to_toml();
    // Swap the production and staging API tokens.
    let prod = line_of(&text, "API_TOKEN").to_string();
    let staging = text
        .lines()
        .filter(|l| l.starts_with("API_TOKEN = "))
        .nth(1)
        .unwrap()
        .to_string();
    let swapped = text
        .replacen(&prod, "@@", 1)
        .replacen(&staging, &prod, 1)
        .replacen("@@", &staging, 1);
    let err = SecretsFile::parse(FILE, &swapped, &alice).unwrap_err();
    assert_eq!(
        secrets_error(err),
        "production.API_TOKEN does not decrypt: its value was edited, or moved here from another key"
    );
}

#[test]
fn a_renamed_key_does_not_decrypt() {
    let alice = Identity::generate();
    let text = sample(&alice).to_toml();
    let renamed = text.replace("DATABASE_URL = ", "DB_URL = ");
    let err = SecretsFile::parse(FILE, &renamed, &alice).unwrap_err();
    assert_eq!(
        secrets_error(err),
        "production.DB_URL does not decrypt: its value was edited, or moved here from another key"
    );
}

#[test]
fn a_removed_key_fails_the_mac() {
    let alice = Identity::generate();
    let text = sample(&alice).to_toml();
    let line = line_of(&text, "DATABASE_URL");
    let removed = text.replace(&format!("{line}\n"), "");
    let err = SecretsFile::parse(FILE, &removed, &alice).unwrap_err();
    assert_eq!(
        secrets_error(err),
        "MAC mismatch: a key was added, removed, renamed or its value replaced outside deploykit \
         (or the file was cut short)"
    );
}

#[test]
fn an_edited_value_or_mac_is_detected() {
    let alice = Identity::generate();
    let text = sample(&alice).to_toml();
    let line = line_of(&text, "DATABASE_URL");
    let data_at = line.find("data:").unwrap() + 5;
    let mut edited_line = line.to_string();
    let c = if &line[data_at..=data_at] == "A" {
        "B"
    } else {
        "A"
    };
    edited_line.replace_range(data_at..=data_at, c);
    let err = SecretsFile::parse(FILE, &text.replace(line, &edited_line), &alice).unwrap_err();
    assert_eq!(
        secrets_error(err),
        "production.DATABASE_URL does not decrypt: its value was edited, or moved here from another key"
    );

    let mac = line_of(&text, "mac");
    let edited_mac = format!("mac = \"{}\"", "0".repeat(64));
    let err = SecretsFile::parse(FILE, &text.replace(mac, &edited_mac), &alice).unwrap_err();
    assert!(secrets_error(err).starts_with("MAC mismatch"));
}

/// Every prefix of a file either fails or opens to exactly the full content (only a trailing
/// newline or a second recipient's entry can go without changing what is read).
#[test]
fn a_truncated_file_never_yields_partial_plaintext() {
    let alice = Identity::generate();
    let bob = Identity::generate();
    let mut file = sample(&alice);
    file.add_recipient(&bob.to_recipient()).unwrap();
    let full = contents(&file);
    let text = file.to_toml();
    let mut failures = 0;
    for cut in 0..text.len() {
        if !text.is_char_boundary(cut) {
            continue;
        }
        match SecretsFile::parse(FILE, &text[..cut], &alice) {
            Ok(opened) => assert_eq!(contents(&opened), full, "cut at {cut}"),
            Err(e) => {
                failures += 1;
                let _ = secrets_error(e);
            }
        }
    }
    assert!(failures > text.len() / 2, "{failures} of {}", text.len());
    let meta = text.find("[deploykit]").unwrap();
    let err = SecretsFile::parse(FILE, &text[..meta], &alice).unwrap_err();
    assert!(secrets_error(err).starts_with("no [deploykit] table"));
}

/// Changing any single character either fails or leaves the content as it was (comments,
/// whitespace, the other recipient's entry).
#[test]
fn any_single_edit_is_caught_or_harmless() {
    let alice = Identity::generate();
    let file = sample(&alice);
    let full = contents(&file);
    let text = file.to_toml();
    let bytes = text.as_bytes();
    for i in 0..bytes.len() {
        let mut edited = bytes.to_vec();
        edited[i] = if bytes[i] == b'x' { b'y' } else { b'x' };
        let Ok(edited) = String::from_utf8(edited) else {
            continue;
        };
        if let Ok(opened) = SecretsFile::parse(FILE, &edited, &alice) {
            assert_eq!(
                contents(&opened),
                full,
                "edit at byte {i} changed what was read"
            );
        }
    }
}

#[test]
fn files_that_are_not_secrets_files() {
    let alice = Identity::generate();
    let cases = [
        (
            "[production\nX = 1",
            "not valid TOML (truncated or edited by hand?): line 1, column 12",
        ),
        (
            "[production]\nX = \"ENC[xchacha20poly1305,data:AA,nonce:AA]\"\n",
            "no [deploykit] table: not a deploykit secrets file, or its metadata was cut off",
        ),
        (
            "[deploykit]\nversion = 2\n",
            "format version 2 is not supported (this deploykit reads version 1)",
        ),
        (
            "[deploykit]\nmac = \"00\"\n",
            "[deploykit] has no `version`",
        ),
        (
            "[deploykit]\nversion = 1\nrecipients = []\n",
            "[deploykit] has no `mac`",
        ),
        (
            "[deploykit]\nversion = 1\nmac = \"00\"\n",
            "[deploykit] lists no `recipients`",
        ),
    ];
    for (text, expected) in cases {
        let err = SecretsFile::parse(FILE, text, &alice).unwrap_err();
        let reason = secrets_error(err);
        assert!(reason.starts_with(expected), "{text:?}: {reason}");
    }
    // A value in clear, or not a string, is refused (after the key unwraps).
    let base = sample(&alice).to_toml();
    let plain = base.replacen("[production]\n", "[production]\nPLAIN = \"hello\"\n", 1);
    assert_eq!(
        secrets_error(SecretsFile::parse(FILE, &plain, &alice).unwrap_err()),
        "production.PLAIN holds a value that is not encrypted; set it with deploykit so it is"
    );
    let number = base.replacen("[production]\n", "[production]\nPORT = 5432\n", 1);
    assert_eq!(
        secrets_error(SecretsFile::parse(FILE, &number, &alice).unwrap_err()),
        "production.PORT: expected an encrypted string, found a integer"
    );
}

#[test]
fn only_recipients_open_the_file() {
    let alice = Identity::generate();
    let mallory = Identity::generate();
    let text = sample(&alice).to_toml();
    let err = SecretsFile::parse(FILE, &text, &mallory).unwrap_err();
    let alice_key = alice.to_recipient().label();
    assert_eq!(
        secrets_error(err),
        format!(
            "not encrypted for {}; its recipients are {alice_key}",
            mallory.to_recipient().label()
        )
    );
    // A wrapped key swapped for one made for someone else is refused too.
    let other = SecretsFile::create(&[mallory.to_recipient()])
        .unwrap()
        .to_toml();
    let wrapped = |t: &str| line_of(t, "data_key").to_string();
    let forged = text.replace(&wrapped(&text), &wrapped(&other));
    let err = SecretsFile::parse(FILE, &forged, &alice).unwrap_err();
    assert!(secrets_error(err).starts_with(&format!(
        "the data key does not unwrap with this {alice_key} identity"
    )));
}

#[test]
fn passphrases_open_with_a_bounded_work_factor() {
    let mut file = SecretsFile::create(&[cheap_passphrase("correct horse")]).unwrap();
    file.set("dev.TOKEN", secret("dev-token")).unwrap();
    let text = file.to_toml();
    assert!(text.contains("recipient = \"passphrase\""));

    let right = Identity::passphrase(secret("correct horse"));
    assert_eq!(
        SecretsFile::parse(FILE, &text, &right)
            .unwrap()
            .get("dev.TOKEN")
            .unwrap()
            .expose_secret(),
        "dev-token"
    );
    let wrong = Identity::passphrase(secret("battery staple"));
    assert_eq!(
        secrets_error(SecretsFile::parse(FILE, &text, &wrong).unwrap_err()),
        "the data key does not unwrap with this passphrase identity (wrong passphrase or key, or an edited file)"
    );
    // A file asking for more work than accepted is refused without doing it.
    let stingy = Identity::Passphrase {
        passphrase: secret("correct horse"),
        max_work_factor: 8,
    };
    assert_eq!(
        secrets_error(SecretsFile::parse(FILE, &text, &stingy).unwrap_err()),
        "the passphrase wrapping asks for scrypt work factor 10, above the accepted maximum of 8; \
         refused without trying"
    );
}

#[test]
fn recipients_are_added_and_removed_and_removal_rotates_the_key() {
    let alice = Identity::generate();
    let bob = Identity::generate();
    let mut file = sample(&alice);
    let before = file.to_toml();
    assert!(SecretsFile::parse(FILE, &before, &bob).is_err());

    file.add_recipient(&bob.to_recipient()).unwrap();
    assert!(matches!(
        file.add_recipient(&bob.to_recipient()),
        Err(Error::AlreadyExists { .. })
    ));
    let shared = file.to_toml();
    assert_eq!(
        contents(&SecretsFile::parse(FILE, &shared, &bob).unwrap()),
        contents(&file)
    );
    // Adding a recipient leaves values alone.
    assert_eq!(
        line_of(&before, "DATABASE_URL"),
        line_of(&shared, "DATABASE_URL")
    );

    let bob_key = bob.to_recipient().label();
    file.remove_recipient(&bob_key).unwrap();
    let after = file.to_toml();
    assert!(SecretsFile::parse(FILE, &after, &bob).is_err());
    assert_eq!(
        contents(&SecretsFile::parse(FILE, &after, &alice).unwrap()),
        contents(&file)
    );
    // The data key was rotated: every ciphertext is new.
    assert_ne!(
        line_of(&shared, "DATABASE_URL"),
        line_of(&after, "DATABASE_URL")
    );

    let alice_key = alice.to_recipient().label();
    assert_eq!(
        file.remove_recipient(&alice_key).unwrap_err().to_string(),
        format!(
            "invalid secrets.recipients: {alice_key} is the last recipient; nobody could open the file"
        )
    );
    assert!(matches!(
        file.remove_recipient("age1nobody"),
        Err(Error::NotFound { .. })
    ));
}

#[test]
fn rotation_re_encrypts_everything_and_keeps_every_recipient() {
    let alice = Identity::generate();
    let mut file = sample(&alice);
    file.add_recipient(&cheap_passphrase("team passphrase"))
        .unwrap();
    let before = file.to_toml();
    file.rotate_data_key().unwrap();
    let after = file.to_toml();
    for key in ["DATABASE_URL", "API_TOKEN"] {
        assert_ne!(line_of(&before, key), line_of(&after, key));
    }
    // The passphrase is re-wrapped at the work factor it had (10), not the default.
    let by_passphrase = Identity::Passphrase {
        passphrase: secret("team passphrase"),
        max_work_factor: 10,
    };
    for who in [&alice, &by_passphrase] {
        assert_eq!(
            contents(&SecretsFile::parse(FILE, &after, who).unwrap()),
            contents(&file)
        );
    }
    // Opened by alice, the passphrase is unknown: rotation refuses rather than drop it.
    let mut as_alice = SecretsFile::parse(FILE, &after, &alice).unwrap();
    let err = as_alice.rotate_data_key().unwrap_err();
    assert!(
        err.to_string()
            .contains("open the file with the passphrase"),
        "{err}"
    );
    assert_eq!(
        as_alice.to_toml(),
        after,
        "a refused rotation changes nothing"
    );
}

#[test]
fn bad_keys_are_refused() {
    let alice = Identity::generate();
    let mut file = sample(&alice);
    for (key, reason) in [
        ("", "is not a key path"),
        ("a..b", "is not a key path"),
        ("a b", "is not a key path"),
        ("deploykit.mac", "reserved"),
        (
            "production.DATABASE_URL.user",
            "would nest with the existing key",
        ),
        ("production", "would nest with the existing key"),
    ] {
        let err = file.set(key, secret("v")).unwrap_err().to_string();
        assert!(err.contains(reason), "{key:?}: {err}");
    }
    assert!(file.remove("production.API_TOKEN"));
    assert!(!file.remove("production.API_TOKEN"));
}

#[tokio::test]
async fn the_file_provider_resolves_keys_and_versions_change_with_values() {
    let alice = Identity::generate();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("secrets.toml");
    let mut file = sample(&alice);
    file.save(&path).unwrap();

    let provider = FileSecretProvider::open(&path, &alice).unwrap();
    let token = provider.get("production.API_TOKEN").await.unwrap();
    assert_eq!(token.value.expose_secret(), "tok-prod-7f3a");
    let err = provider.get("production.MISSING").await.unwrap_err();
    assert_eq!(
        err.to_string(),
        format!("secret production.MISSING in {} not found", path.display())
    );

    file.set("production.API_TOKEN", secret("tok-prod-8b4c"))
        .unwrap();
    file.save(&path).unwrap();
    provider.reload(SecretsFile::open(&path, &alice).unwrap());
    let rotated = provider.get("production.API_TOKEN").await.unwrap();
    assert_eq!(rotated.value.expose_secret(), "tok-prod-8b4c");
    assert_ne!(rotated.version, token.version);
    // Versions depend on the key path too, and reveal nothing recognisable.
    let unchanged = provider.get("staging.API_TOKEN").await.unwrap();
    assert_eq!(unchanged.version.len(), 16);
    assert!(!provider.versions().values().any(|v| v.contains("tok")));
}

#[test]
fn saving_is_atomic_and_leaves_no_temporary_files() {
    let alice = Identity::generate();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("secrets.toml");
    sample(&alice).save(&path).unwrap();
    sample(&alice).save(&path).unwrap();
    let names: Vec<String> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(names, ["secrets.toml"]);
    let err = SecretsFile::open(&dir.path().join("absent.toml"), &alice).unwrap_err();
    assert!(matches!(err, Error::Secrets { ref reason, .. } if reason.starts_with("cannot read")));
}

#[test]
fn identities_load_from_age_key_files() {
    let dir = tempfile::tempdir().unwrap();
    let me = Identity::generate();
    let key = me.secret_key().unwrap();
    let write = |name: &str, text: &str| {
        let path = dir.path().join(name);
        std::fs::write(&path, text).unwrap();
        path
    };
    let good = write(
        "me.agekey",
        &format!(
            "# created: today\n# public key: {}\n{}\n",
            me.to_recipient().label(),
            key.expose_secret()
        ),
    );
    let loaded = Identity::from_key_file(&good).unwrap();
    assert_eq!(loaded.to_recipient().label(), me.to_recipient().label());

    let cases = [
        (
            "empty.agekey",
            "# nothing\n".to_string(),
            "holds no identity",
        ),
        (
            "two.agekey",
            format!("{}\n{}\n", key.expose_secret(), key.expose_secret()),
            "holds more than one identity",
        ),
        (
            "bad.agekey",
            "AGE-SECRET-KEY-1NOTAKEY\n".to_string(),
            "its key line is not an age X25519 identity",
        ),
    ];
    for (name, text, expected) in cases {
        let err = Identity::from_key_file(&write(name, &text))
            .unwrap_err()
            .to_string();
        assert!(err.contains(expected), "{name}: {err}");
        assert!(!err.contains(key.expose_secret()), "{err}");
    }
    let missing = Identity::from_key_file(&dir.path().join("absent")).unwrap_err();
    assert!(missing.to_string().contains("cannot read"), "{missing}");
}
