//! Runnable examples for deploykit live in `examples/`; this crate holds the timeline printer
//! they share, and its doctests compile and run the README's library snippet.
#![doc = include_str!("../../README.md")]

use std::process::ExitCode;

use deploykit_core::{Event, Timestamp};
use tokio::sync::broadcast;

/// Prints events as a timeline, one line each, with times relative to `start`.
#[derive(Debug)]
pub struct Timeline {
    start: Timestamp,
    events: broadcast::Receiver<Event>,
}

impl Timeline {
    /// A timeline of the events received on `events`, timed from `start`.
    pub fn new(start: Timestamp, events: broadcast::Receiver<Event>) -> Self {
        Timeline { start, events }
    }

    /// Print every event received since the last call.
    pub fn print(&mut self) {
        while let Ok(e) = self.events.try_recv() {
            let ms = e.entry.at.since(self.start).as_millis();
            let at = format!(
                "{:02}:{:02}.{:03}",
                ms / 60_000,
                (ms / 1000) % 60,
                ms % 1000
            );
            let who = format!("{}/{} {}", e.service, e.environment, e.revision);
            println!("{at}  {who:<18} {}", e.description());
        }
    }
}

/// The exit code of an example whose `run` returns whether what it printed holds.
pub fn exit_code(name: &str, result: Result<bool, Box<dyn std::error::Error>>) -> ExitCode {
    match result {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("{name} example failed: {e}");
            ExitCode::FAILURE
        }
    }
}
