//! What the command prints: lines on stdout that survive a closed pipe, and errors with their
//! causes and a hint.

use std::io::{IsTerminal, Write};
use std::sync::atomic::{AtomicBool, Ordering};

use deploykit_core::Error;

/// Set once stdout's reader went away (`deploykit history web | head -1`): later output is
/// dropped, and the command carries on to its end and its exit code.
static STDOUT_CLOSED: AtomicBool = AtomicBool::new(false);

/// Print one line on stdout. A closed pipe is not an error: the rest of the output is dropped
/// and the command goes on (a deployment being followed is not abandoned because `head` quit).
pub(crate) fn line(text: impl std::fmt::Display) {
    if STDOUT_CLOSED.load(Ordering::Relaxed) {
        return;
    }
    let mut stdout = std::io::stdout().lock();
    if writeln!(stdout, "{text}")
        .and_then(|()| stdout.flush())
        .is_err()
    {
        STDOUT_CLOSED.store(true, Ordering::Relaxed);
    }
}

/// Whether a person watches stderr (the spinner is drawn only then).
pub(crate) fn interactive() -> bool {
    std::io::stderr().is_terminal()
}

/// The error, then each cause on a line of its own, then a hint when one is known:
///
/// ```text
/// bind the proxy to 127.0.0.1:8080 failed
///   caused by: Address already in use (os error 98)
///   hint: another process listens on 127.0.0.1:8080: stop it, or pass --listen
/// ```
pub(crate) fn report(e: &Error) -> String {
    let mut text = e.to_string();
    for cause in causes(e) {
        text.push_str("\n  caused by: ");
        text.push_str(&cause);
    }
    if let Some(hint) = hint(e) {
        text.push_str("\n  hint: ");
        text.push_str(&hint);
    }
    text
}

/// The error as JSON: `{"error": …, "causes": […], "hint": …}`.
pub(crate) fn report_json(e: &Error) -> serde_json::Value {
    serde_json::json!({
        "error": e.to_string(),
        "causes": causes(e),
        "hint": hint(e),
    })
}

fn causes(e: &Error) -> Vec<String> {
    let mut out = Vec::new();
    let mut source = std::error::Error::source(e);
    while let Some(cause) = source {
        let text = cause.to_string();
        // Wrapped errors often repeat their source's text: say each thing once.
        if out.last() != Some(&text) {
            out.push(text);
        }
        source = cause.source();
    }
    out
}

/// What to do about well-known failures, judged from the error and its causes.
fn hint(e: &Error) -> Option<String> {
    let all = std::iter::once(e.to_string())
        .chain(causes(e))
        .collect::<Vec<_>>()
        .join("\n");
    if all.contains("Address already in use") {
        return Some(
            "another process listens on that address (an earlier daemon?): stop it, or pass \
             --listen with a free address"
                .into(),
        );
    }
    if all.contains("Permission denied") && all.contains("bind") {
        return Some("ports below 1024 need privileges: pass --listen with a higher port".into());
    }
    if all.contains("DEPLOYKIT_REPO_PASSWORD") {
        return Some("export DEPLOYKIT_REPO_PASSWORD with the repository's passphrase".into());
    }
    None
}

/// `println!` through [`line()`]: a closed stdout ends the output, not the command.
#[macro_export]
macro_rules! outln {
    ($($arg:tt)*) => {
        $crate::out::line(format_args!($($arg)*))
    };
}
