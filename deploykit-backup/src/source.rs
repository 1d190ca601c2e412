//! Byte-stream sources: what is not a directory tree — a database dump, a backend's export of
//! an application's objects — stored as one named file in the snapshot.

use std::io::Read;
use std::process::{Child, Command, Stdio};

use deploykit_core::backup::BackupSource;
use deploykit_core::{Error, Result};

/// The standard output of a command, e.g. `pg_dump --format=custom shop`.
///
/// ```
/// use std::io::Read;
/// use deploykit_backup::{BackupSource, CommandSource};
/// let dump = CommandSource::new("greeting.txt", ["echo", "hello"])?;
/// let mut out = String::new();
/// dump.open()?.read_to_string(&mut out).unwrap();
/// assert_eq!(out, "hello\n");
/// # Ok::<(), deploykit_core::Error>(())
/// ```
#[derive(Clone, Debug)]
pub struct CommandSource {
    name: String,
    argv: Vec<String>,
}

impl CommandSource {
    /// Store the output of `argv` as `name`.
    pub fn new<I, S>(name: impl Into<String>, argv: I) -> Result<Self>
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        let name = name.into();
        let argv: Vec<String> = argv.into_iter().map(Into::into).collect();
        if name.is_empty() || name.contains('/') || name == "." || name == ".." {
            return Err(Error::invalid(
                "backup.source.name",
                format!("{name:?} is not a file name"),
            ));
        }
        if argv.is_empty() {
            return Err(Error::invalid(
                "backup.source.command",
                "a command source needs a program",
            ));
        }
        Ok(CommandSource { name, argv })
    }
}

/// Reads a child's stdout; at the end, fails if the child did not exit 0.
struct ChildReader {
    child: Child,
    argv0: String,
}

impl Read for ChildReader {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let stdout = self.child.stdout.as_mut().expect("stdout is piped");
        let n = stdout.read(buf)?;
        if n == 0 && !buf.is_empty() {
            let status = self.child.wait()?;
            if !status.success() {
                return Err(std::io::Error::other(format!("{} {status}", self.argv0)));
            }
        }
        Ok(n)
    }
}

impl Drop for ChildReader {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

impl BackupSource for CommandSource {
    fn name(&self) -> &str {
        &self.name
    }

    fn open(&self) -> Result<Box<dyn Read + Send>> {
        let child = Command::new(&self.argv[0])
            .args(&self.argv[1..])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .map_err(|e| {
                Error::backend(
                    format!("backup source {}", self.name),
                    format!("cannot start {}: {e}", self.argv[0]),
                )
            })?;
        Ok(Box::new(ChildReader {
            child,
            argv0: self.argv[0].clone(),
        }))
    }
}
