//! The agent's own metrics in OpenMetrics text, next to what the repositories report into
//! `deploykit_telemetry::metrics::Metrics` (bytes, durations, the last successful backup).
//!
//! | metric | labels |
//! |---|---|
//! | `deploykit_backup_agent_last_success_timestamp_seconds` (gauge) | environment, duty, kind |
//! | `deploykit_backup_agent_last_run_duration_seconds` (gauge) | environment, duty |
//! | `deploykit_backup_agent_next_due_timestamp_seconds` (gauge) | environment, duty |
//! | `deploykit_backup_agent_failures_total` (counter: runs failed after their retries) | environment, duty |
//! | `deploykit_backup_agent_drill_rto_seconds`, `_drill_rpo_seconds` (gauges: what the last drill measured, its targets met or not) | environment, duty |
//! | `deploykit_backup_agent_missed_total` (counter: runs missed while the agent was down) | environment, duty |
//! | `deploykit_backup_agent_failing_duties`, `_missed_duties`, `_overdue_duties` (gauges: duties in that state; what the shipped alert rules query) | environment |

use std::fmt::Write;

use deploykit_core::time::Timestamp;

use super::alerts::{FAILING, MISSED, OVERDUE, gauge};
use super::state::AgentState;

fn seconds(t: Timestamp) -> f64 {
    t.as_millis() as f64 / 1000.0
}

/// Escapes a label value.
fn quote(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// The agent's metrics in OpenMetrics text, without the final `# EOF`.
pub(super) fn encode(state: &AgentState, now: Timestamp) -> String {
    let mut out = String::new();
    let mut family = |name: &str, kind: &str, help: &str, samples: Vec<(String, f64)>| {
        let _ = writeln!(out, "# TYPE {name} {kind}");
        let _ = writeln!(out, "# HELP {name} {help}");
        let sample_name = if kind == "counter" {
            format!("{name}_total")
        } else {
            name.to_string()
        };
        for (labels, value) in samples {
            let _ = writeln!(out, "{sample_name}{{{labels}}} {value}");
        }
    };
    let duties = || {
        state.environments.iter().flat_map(|(env, e)| {
            e.duties.iter().map(move |(duty, d)| {
                (format!("environment=\"{}\",duty=\"{duty}\"", quote(env)), d)
            })
        })
    };
    family(
        "deploykit_backup_agent_last_success_timestamp_seconds",
        "gauge",
        "When the last run of each duty and kind succeeded",
        duties()
            .flat_map(|(labels, d)| {
                d.last_success_by_kind.iter().map(move |(kind, at)| {
                    (format!("{labels},kind=\"{}\"", quote(kind)), seconds(*at))
                })
            })
            .collect(),
    );
    family(
        "deploykit_backup_agent_last_run_duration_seconds",
        "gauge",
        "How long the last run of each duty took, its retries included",
        duties()
            .filter_map(|(labels, d)| {
                let last = [&d.last_success, &d.last_failure]
                    .into_iter()
                    .flatten()
                    .max_by_key(|r| r.finished)?;
                Some((labels, last.finished.since(last.started).as_secs_f64()))
            })
            .collect(),
    );
    family(
        "deploykit_backup_agent_next_due_timestamp_seconds",
        "gauge",
        "When each duty is next due",
        duties()
            .filter_map(|(labels, d)| Some((labels, seconds(d.next_due?))))
            .collect(),
    );
    family(
        "deploykit_backup_agent_failures",
        "counter",
        "Runs that failed after their retries",
        duties()
            .map(|(labels, d)| (labels, d.failures as f64))
            .collect(),
    );
    family(
        "deploykit_backup_agent_missed",
        "counter",
        "Runs missed while the agent was not running",
        duties()
            .map(|(labels, d)| (labels, d.missed as f64))
            .collect(),
    );
    for (name, help, pick) in [
        (
            "deploykit_backup_agent_drill_rto_seconds",
            "The recovery time the last drill measured (restore and check of everything)",
            (|m: &super::state::DrillMeasure| m.rto_ms) as fn(&super::state::DrillMeasure) -> u64,
        ),
        (
            "deploykit_backup_agent_drill_rpo_seconds",
            "The recovery point the last drill measured (age of the restored data)",
            |m| m.rpo_ms,
        ),
    ] {
        family(
            name,
            "gauge",
            help,
            duties()
                .filter_map(|(labels, d)| {
                    let measured = d.last_drill.as_ref()?;
                    Some((labels, pick(measured) as f64 / 1000.0))
                })
                .collect(),
        );
    }
    for (name, help) in [
        (FAILING, "Duties whose last run failed"),
        (
            MISSED,
            "Duties that missed runs not yet followed by a run on time",
        ),
        (OVERDUE, "Duties that are due and have not run"),
    ] {
        let samples = state
            .environments
            .keys()
            .filter_map(|env| {
                Some((
                    format!("environment=\"{}\"", quote(env)),
                    gauge(state, name, env, now)?,
                ))
            })
            .collect();
        family(name, "gauge", help, samples);
    }
    out
}

/// Serve `GET /metrics` with `agent`'s metrics on `listener`, one request per connection.
pub(super) async fn serve(
    listener: tokio::net::TcpListener,
    agent: super::Agent,
) -> std::io::Result<()> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    loop {
        let (mut stream, _) = listener.accept().await?;
        let agent = agent.clone();
        tokio::spawn(async move {
            let mut buf = [0u8; 2048];
            let mut head = Vec::new();
            while !head.windows(4).any(|w| w == b"\r\n\r\n") && head.len() < 16 * 1024 {
                match stream.read(&mut buf).await {
                    Ok(0) | Err(_) => return,
                    Ok(n) => head.extend_from_slice(&buf[..n]),
                }
            }
            let first = String::from_utf8_lossy(&head);
            let first = first.lines().next().unwrap_or("");
            let (status, content_type, body) = if first.starts_with("GET /metrics ") {
                (
                    "200 OK",
                    "application/openmetrics-text; version=1.0.0; charset=utf-8",
                    agent.encode_metrics(),
                )
            } else {
                ("404 Not Found", "text/plain", "try /metrics\n".to_string())
            };
            let response = format!(
                "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
            let _ = stream.write_all(response.as_bytes()).await;
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The shipped Grafana dashboard queries only metrics the agent declares (the
    /// `deploykit_telemetry::grafana` tests check the rest).
    #[test]
    fn the_dashboard_queries_only_metrics_the_agent_exports() {
        let text = encode(&AgentState::default(), Timestamp::from_millis(0));
        let mut exported = std::collections::BTreeSet::new();
        for line in text.lines() {
            if let Some(rest) = line.strip_prefix("# TYPE ") {
                let mut words = rest.split_whitespace();
                if let (Some(name), Some(kind)) = (words.next(), words.next()) {
                    exported.insert(if kind == "counter" {
                        format!("{name}_total")
                    } else {
                        name.to_string()
                    });
                }
            }
        }
        let dashboard = deploykit_telemetry::grafana::dashboard("deploykit");
        let queried: Vec<String> = deploykit_telemetry::grafana::queried_metrics(&dashboard)
            .into_iter()
            .filter(|n| n.starts_with("deploykit_backup_agent_"))
            .collect();
        assert!(queried.len() >= 6, "{queried:?}");
        let unknown: Vec<_> = queried.iter().filter(|n| !exported.contains(*n)).collect();
        assert!(unknown.is_empty(), "queried, not exported: {unknown:?}");
        let unshown: Vec<_> = exported.iter().filter(|n| !queried.contains(n)).collect();
        assert!(unshown.is_empty(), "exported, on no panel: {unshown:?}");
    }
}
