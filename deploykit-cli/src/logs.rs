//! `deploykit logs`: the output of a service's instances, or of one instance, once or followed.

use std::collections::BTreeMap;
use std::process::ExitCode;
use std::time::Duration;

use deploykit_core::{Environment, Error, Result, ServiceId};
use deploykit_local::LocalClient;
use serde_json::json;

use crate::Output;
use crate::context::Context;

/// How often `-f` asks the daemon for new output.
const POLL: Duration = Duration::from_millis(250);
/// How often `-f` looks for instances that started since (a new revision, a restart).
const RESCAN: Duration = Duration::from_secs(2);

/// One followed log: where the next read starts and the unfinished last line.
#[derive(Default)]
struct Cursor {
    next: Option<u64>,
    partial: String,
}

pub(crate) async fn run(
    ctx: &Context,
    name: &str,
    env: Option<&str>,
    follow: bool,
    bytes: usize,
) -> Result<ExitCode> {
    ctx.environment(env)?;
    let client = ctx.daemon().await?;
    let (service, instances) = resolve(ctx, &client, name).await?;
    let prefix = service.is_some();
    let mut cursors: BTreeMap<String, Cursor> = instances
        .into_iter()
        .map(|i| (i, Cursor::default()))
        .collect();
    // The tail of each log first.
    for (instance, cursor) in cursors.iter_mut() {
        let chunk = client.log_chunk(instance, None, bytes).await?;
        cursor.next = Some(chunk.next);
        emit(ctx, instance, prefix, cursor, &chunk.text, !follow);
    }
    if !follow {
        return Ok(ExitCode::SUCCESS);
    }
    let mut poll = tokio::time::interval(POLL);
    let mut rescan = tokio::time::interval(RESCAN);
    let stop = tokio::signal::ctrl_c();
    tokio::pin!(stop);
    loop {
        tokio::select! {
            _ = &mut stop => return Ok(ExitCode::SUCCESS),
            _ = rescan.tick() => if let Some(service) = &service {
                // Instances started since (a new revision, a replacement) are followed from
                // their first byte; those that are gone keep their last lines printed.
                if let Ok(now) = instances_of(&client, service).await {
                    for instance in now {
                        cursors.entry(instance).or_insert_with(|| Cursor {
                            next: Some(0),
                            partial: String::new(),
                        });
                    }
                }
            },
            _ = poll.tick() => {
                for (instance, cursor) in cursors.iter_mut() {
                    match client.log_chunk(instance, cursor.next, 64 * 1024).await {
                        Ok(chunk) => {
                            if chunk.truncated {
                                cursor.partial.clear();
                            }
                            cursor.next = Some(chunk.next);
                            emit(ctx, instance, prefix, cursor, &chunk.text, false);
                        }
                        // An instance removed since: its log is gone with it.
                        Err(Error::NotFound { .. }) => {}
                        Err(e) => return Err(e),
                    }
                }
            }
        }
    }
}

/// The service `name` names (with its instances), or the single instance it names.
async fn resolve(
    ctx: &Context,
    client: &LocalClient,
    name: &str,
) -> Result<(Option<ServiceId>, Vec<String>)> {
    let services: Vec<ServiceId> = ctx.config()?.services().map(|s| s.name.clone()).collect();
    if let Some(service) = services.iter().find(|s| s.as_str() == name) {
        return Ok((Some(service.clone()), instances_of(client, service).await?));
    }
    let mut known: Vec<String> = services.iter().map(ToString::to_string).collect();
    for service in &services {
        let instances = instances_of(client, service).await?;
        if instances.iter().any(|i| i == name) {
            return Ok((None, vec![name.to_string()]));
        }
        known.extend(instances);
    }
    Err(crate::names::unknown(
        "service or instance",
        "services and instances",
        name,
        &known,
        "this environment",
    ))
}

async fn instances_of(client: &LocalClient, service: &ServiceId) -> Result<Vec<String>> {
    let observed = client.observe(service).await?;
    Ok(observed
        .revisions
        .iter()
        .flat_map(|r| r.instances.iter().map(|i| i.name.to_string()))
        .collect())
}

/// Print the complete lines of `text` (after what was left over from the last read), each
/// prefixed with the instance when a whole service is shown; `flush` prints an unfinished
/// last line too.
fn emit(ctx: &Context, instance: &str, prefix: bool, cursor: &mut Cursor, text: &str, flush: bool) {
    cursor.partial.push_str(text);
    let mut lines: Vec<String> = Vec::new();
    while let Some(end) = cursor.partial.find('\n') {
        lines.push(cursor.partial[..end].to_string());
        cursor.partial.drain(..=end);
    }
    if flush && !cursor.partial.is_empty() {
        lines.push(std::mem::take(&mut cursor.partial));
    }
    for line in lines {
        match ctx.output {
            Output::Json => crate::out::line(json!({ "instance": instance, "line": line })),
            Output::Text if prefix => crate::out::line(format_args!("{instance} | {line}")),
            Output::Text => crate::out::line(line),
        }
    }
}
