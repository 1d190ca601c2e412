//! A Grafana dashboard for deploykit's own metrics, generated from the metric names the
//! [`Metrics`](crate::metrics::Metrics) registry and the backup agent export.
//!
//! [`dashboard`] returns the dashboard as Grafana's JSON model (schema 39, Grafana 10 and
//! later): a Prometheus data source chosen when it is imported (`${datasource}`), an
//! `environment` variable filled from the metrics' own labels, and three rows: deployments
//! (by outcome, rollout and step durations, rollback latency, analysis results, journal
//! writes), backups and restores (bytes, durations, deduplication, time since the last
//! success: the RPO a restore would have now), and the backup agent (failing, missed and
//! overdue duties, the last successful drill and the recovery time and point it measured).
//! The repository ships it as `docs/grafana/deploykit.json`, kept equal to this function's
//! output by a test; import that file, or write your own with a different title:
//!
//! ```
//! let dashboard = deploykit_telemetry::grafana::dashboard("deploykit");
//! let text = serde_json::to_string_pretty(&dashboard).unwrap();
//! assert!(text.contains("deploykit_deployments_finished_total"));
//! // Every metric a panel queries, for checking against what is exported:
//! let names = deploykit_telemetry::grafana::queried_metrics(&dashboard);
//! assert!(names.contains("deploykit_rollback_latency_seconds_bucket"));
//! ```

use std::collections::BTreeSet;

use serde_json::{Value, json};

/// The environment filter every query carries.
const ENV: &str = r#"environment=~"$environment""#;

/// One panel before it is placed.
struct Panel {
    title: &'static str,
    description: &'static str,
    kind: &'static str,
    unit: &'static str,
    /// (PromQL, legend) per query.
    queries: Vec<(String, &'static str)>,
}

fn panel(
    title: &'static str,
    description: &'static str,
    kind: &'static str,
    unit: &'static str,
    queries: Vec<(String, &'static str)>,
) -> Panel {
    Panel {
        title,
        description,
        kind,
        unit,
        queries,
    }
}

/// p50 and p95 of a histogram, per environment.
fn quantiles(metric: &str) -> Vec<(String, &'static str)> {
    let q = |p: &str| {
        format!(
            "histogram_quantile({p}, sum by (le, environment) (rate({metric}_bucket{{{ENV}}}[$__rate_interval])))"
        )
    };
    vec![
        (q("0.5"), "p50 {{environment}}"),
        (q("0.95"), "p95 {{environment}}"),
    ]
}

fn rows() -> Vec<(&'static str, Vec<Panel>)> {
    let deployments = vec![
        panel(
            "Deployments finished, by outcome",
            "Rollouts that ended in the selected range: succeeded, rolled back, frozen or failed.",
            "barchart",
            "short",
            vec![(
                format!(
                    "sum by (outcome) (increase(deploykit_deployments_finished_total{{{ENV}}}[$__range]))"
                ),
                "{{outcome}}",
            )],
        ),
        panel(
            "Deployments started, by strategy",
            "Rollouts started per hour.",
            "timeseries",
            "short",
            vec![(
                format!(
                    "sum by (strategy) (increase(deploykit_deployments_started_total{{{ENV}}}[1h]))"
                ),
                "{{strategy}}",
            )],
        ),
        panel(
            "Rollout duration",
            "From a deployment's start to its end.",
            "timeseries",
            "s",
            quantiles("deploykit_rollout_duration_seconds"),
        ),
        panel(
            "Step duration",
            "From one canary or blue-green step to the next (pauses and analyses included).",
            "timeseries",
            "s",
            quantiles("deploykit_step_duration_seconds"),
        ),
        panel(
            "Rollback latency",
            "From the rollback decision to the first switch-back applied.",
            "timeseries",
            "s",
            quantiles("deploykit_rollback_latency_seconds"),
        ),
        panel(
            "Analysis measurements, by outcome",
            "Measurements taken by canary and blue-green analyses.",
            "timeseries",
            "short",
            vec![(
                format!(
                    "sum by (outcome) (increase(deploykit_analysis_measurements_total{{{ENV}}}[$__rate_interval]))"
                ),
                "{{outcome}}",
            )],
        ),
        panel(
            "Journal write latency",
            "Appends to the deployment journal (the state store's write path).",
            "timeseries",
            "s",
            vec![(
                "histogram_quantile(0.99, sum by (le) (rate(deploykit_journal_write_seconds_bucket[$__rate_interval])))".to_string(),
                "p99",
            )],
        ),
    ];
    let backups = vec![
        panel(
            "Time since the last successful backup",
            "The recovery point a restore would have now (RPO).",
            "stat",
            "s",
            vec![(
                format!("time() - deploykit_backup_last_success_timestamp_seconds{{{ENV}}}"),
                "{{environment}}",
            )],
        ),
        panel(
            "Backup bytes read and stored",
            "Bytes read from the sources and bytes newly stored after deduplication and \
             compression.",
            "timeseries",
            "Bps",
            vec![
                (
                    format!(
                        "sum by (environment) (rate(deploykit_backup_bytes_read_total{{{ENV}}}[$__rate_interval]))"
                    ),
                    "read {{environment}}",
                ),
                (
                    format!(
                        "sum by (environment) (rate(deploykit_backup_bytes_stored_total{{{ENV}}}[$__rate_interval]))"
                    ),
                    "stored {{environment}}",
                ),
            ],
        ),
        panel(
            "Backup duration",
            "Time of each backup, by environment.",
            "timeseries",
            "s",
            quantiles("deploykit_backup_duration_seconds"),
        ),
        panel(
            "Deduplication ratio",
            "Bytes in the last snapshot over the bytes it newly stored.",
            "stat",
            "none",
            vec![(
                format!("deploykit_backup_dedup_ratio{{{ENV}}}"),
                "{{environment}}",
            )],
        ),
        panel(
            "Restores",
            "Bytes restored per second, and the time restores take.",
            "timeseries",
            "s",
            {
                let mut q = quantiles("deploykit_restore_duration_seconds");
                q.push((
                    format!(
                        "sum by (environment) (rate(deploykit_restore_bytes_total{{{ENV}}}[$__rate_interval]))"
                    ),
                    "bytes/s {{environment}}",
                ));
                q
            },
        ),
    ];
    let agent = vec![
        panel(
            "Backup agent: duties in trouble",
            "Duties whose last run failed, that missed runs, or that are due and have not run \
             (what the shipped alert rules query).",
            "stat",
            "short",
            vec![
                (
                    format!("sum(deploykit_backup_agent_failing_duties{{{ENV}}})"),
                    "failing",
                ),
                (
                    format!("sum(deploykit_backup_agent_missed_duties{{{ENV}}})"),
                    "missed",
                ),
                (
                    format!("sum(deploykit_backup_agent_overdue_duties{{{ENV}}})"),
                    "overdue",
                ),
            ],
        ),
        panel(
            "Backup agent: runs failed and missed",
            "Runs that failed after their retries, and runs missed while the agent was down.",
            "timeseries",
            "short",
            vec![
                (
                    format!(
                        "sum by (duty) (increase(deploykit_backup_agent_failures_total{{{ENV}}}[1h]))"
                    ),
                    "failed {{duty}}",
                ),
                (
                    format!(
                        "sum by (duty) (increase(deploykit_backup_agent_missed_total{{{ENV}}}[1h]))"
                    ),
                    "missed {{duty}}",
                ),
            ],
        ),
        panel(
            "Time since the last successful drill",
            "A drill restores the latest snapshot into scratch space and checks it against the \
             RTO and RPO targets; a drill that misses them fails.",
            "stat",
            "s",
            vec![(
                format!(
                    "time() - max by (environment) (deploykit_backup_agent_last_success_timestamp_seconds{{{ENV}, duty=\"drill\"}})"
                ),
                "{{environment}}",
            )],
        ),
        panel(
            "Last drill: measured recovery time and point",
            "What the last drill measured, whether or not it met its targets: the time to \
             restore and check everything (RTO) and the age of the restored data (RPO).",
            "timeseries",
            "s",
            vec![
                (
                    format!("deploykit_backup_agent_drill_rto_seconds{{{ENV}}}"),
                    "RTO {{environment}}",
                ),
                (
                    format!("deploykit_backup_agent_drill_rpo_seconds{{{ENV}}}"),
                    "RPO {{environment}}",
                ),
            ],
        ),
        panel(
            "Last run duration, by duty",
            "How long the last backup, verify and drill took, retries included.",
            "timeseries",
            "s",
            vec![(
                format!("deploykit_backup_agent_last_run_duration_seconds{{{ENV}}}"),
                "{{duty}} {{environment}}",
            )],
        ),
        panel(
            "Next run due",
            "When each duty next runs.",
            "table",
            "dateTimeAsIso",
            vec![(
                format!("deploykit_backup_agent_next_due_timestamp_seconds{{{ENV}}} * 1000"),
                "{{duty}} {{environment}}",
            )],
        ),
    ];
    vec![
        ("Deployments", deployments),
        ("Backups and restores", backups),
        ("Backup agent", agent),
    ]
}

/// The dashboard, titled `title`, as Grafana's JSON model.
pub fn dashboard(title: &str) -> Value {
    let datasource = json!({ "type": "prometheus", "uid": "${datasource}" });
    let mut panels = Vec::new();
    let mut id = 1;
    let mut y = 0;
    for (row, members) in rows() {
        panels.push(json!({
            "type": "row",
            "id": id,
            "title": row,
            "collapsed": false,
            "gridPos": { "x": 0, "y": y, "w": 24, "h": 1 },
            "panels": [],
        }));
        id += 1;
        y += 1;
        let height = members.len().div_ceil(2) * 8;
        for (i, p) in members.into_iter().enumerate() {
            let targets: Vec<Value> = p
                .queries
                .iter()
                .zip('A'..)
                .map(|((expr, legend), ref_id)| {
                    json!({
                        "datasource": datasource,
                        "expr": expr,
                        "legendFormat": legend,
                        "refId": ref_id.to_string(),
                    })
                })
                .collect();
            panels.push(json!({
                "type": p.kind,
                "id": id,
                "title": p.title,
                "description": p.description,
                "datasource": datasource,
                "gridPos": { "x": (i % 2) * 12, "y": y + (i / 2) * 8, "w": 12, "h": 8 },
                "fieldConfig": { "defaults": { "unit": p.unit }, "overrides": [] },
                "options": {},
                "targets": targets,
            }));
            id += 1;
        }
        y += height;
    }
    json!({
        "title": title,
        "uid": "deploykit-overview",
        "description": "deploykit's deployments, backups, restores and backup agent, from the \
                        metrics deploykit exports (generated by deploykit_telemetry::grafana).",
        "tags": ["deploykit"],
        "schemaVersion": 39,
        "editable": true,
        "refresh": "30s",
        "time": { "from": "now-24h", "to": "now" },
        "templating": { "list": [
            {
                "type": "datasource",
                "name": "datasource",
                "label": "Prometheus",
                "query": "prometheus",
            },
            {
                "type": "query",
                "name": "environment",
                "label": "Environment",
                "datasource": datasource,
                "query": {
                    "query": "label_values(environment)",
                    "refId": "environment",
                },
                "definition": "label_values(environment)",
                "includeAll": true,
                "multi": true,
                "allValue": ".*",
                "refresh": 2,
            },
        ]},
        "panels": panels,
    })
}

/// Every metric name the dashboard's queries use (`deploykit_…`, with the suffix the query
/// names: `_total`, `_bucket`, or none for a gauge).
pub fn queried_metrics(dashboard: &Value) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    for panel in dashboard["panels"].as_array().into_iter().flatten() {
        for target in panel["targets"].as_array().into_iter().flatten() {
            let expr = target["expr"].as_str().unwrap_or_default();
            let mut rest = expr;
            while let Some(at) = rest.find("deploykit_") {
                let name: String = rest[at..]
                    .chars()
                    .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                    .collect();
                rest = &rest[at + name.len()..];
                names.insert(name);
            }
        }
    }
    names
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::Metrics;

    /// The families `text` declares (`# TYPE name kind`), with the sample names each allows.
    fn exported(text: &str) -> BTreeSet<String> {
        let mut names = BTreeSet::new();
        for line in text.lines() {
            let mut words = line.split_whitespace();
            if words.next() != Some("#") || words.next() != Some("TYPE") {
                continue;
            }
            let (Some(name), Some(kind)) = (words.next(), words.next()) else {
                continue;
            };
            match kind {
                "counter" => {
                    names.insert(format!("{name}_total"));
                }
                "histogram" => {
                    for suffix in ["_bucket", "_sum", "_count"] {
                        names.insert(format!("{name}{suffix}"));
                    }
                }
                _ => {
                    names.insert(name.to_string());
                }
            }
        }
        names
    }

    #[test]
    fn every_panel_queries_a_metric_deploykit_exports() {
        let dashboard = dashboard("deploykit");
        let queried = queried_metrics(&dashboard);
        assert!(queried.len() >= 15, "{queried:?}");
        let exported = exported(&Metrics::new().encode());
        // The backup agent's own metrics are checked by deploykit-backup's agent tests.
        let unknown: Vec<_> = queried
            .iter()
            .filter(|n| !n.starts_with("deploykit_backup_agent_") && !exported.contains(*n))
            .collect();
        assert!(unknown.is_empty(), "queried, not exported: {unknown:?}");
        // And no exported family is left off the dashboard.
        let families: BTreeSet<_> = Metrics::new()
            .encode()
            .lines()
            .filter_map(|l| l.strip_prefix("# TYPE "))
            .filter_map(|l| l.split_whitespace().next().map(str::to_string))
            .collect();
        let unshown: Vec<_> = families
            .iter()
            .filter(|f| !queried.iter().any(|q| q.starts_with(f.as_str())))
            .collect();
        assert!(unshown.is_empty(), "exported, on no panel: {unshown:?}");
    }

    #[test]
    fn a_misspelt_metric_is_caught() {
        let mut dashboard = dashboard("deploykit");
        dashboard["panels"][1]["targets"][0]["expr"] =
            json!("sum(deploykit_deployment_finished_total)");
        let exported = exported(&Metrics::new().encode());
        let queried = queried_metrics(&dashboard);
        assert!(!exported.contains("deploykit_deployment_finished_total"));
        assert!(queried.contains("deploykit_deployment_finished_total"));
    }

    #[test]
    fn panels_are_laid_out_without_overlap_and_ids_are_unique() {
        let dashboard = dashboard("deploykit");
        let panels = dashboard["panels"].as_array().unwrap();
        let mut ids = BTreeSet::new();
        let mut cells = BTreeSet::new();
        for p in panels {
            assert!(ids.insert(p["id"].as_u64().unwrap()), "duplicate id: {p}");
            let g = &p["gridPos"];
            let (x, y, w, h) = (
                g["x"].as_u64().unwrap(),
                g["y"].as_u64().unwrap(),
                g["w"].as_u64().unwrap(),
                g["h"].as_u64().unwrap(),
            );
            assert!(x + w <= 24, "{p}");
            for cx in x..x + w {
                for cy in y..y + h {
                    assert!(
                        cells.insert((cx, cy)),
                        "overlap at {cx},{cy}: {}",
                        p["title"]
                    );
                }
            }
        }
    }

    #[test]
    fn the_shipped_file_is_this_dashboard() {
        let path = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../docs/grafana/deploykit.json"
        );
        let expected = serde_json::to_string_pretty(&dashboard("deploykit")).unwrap() + "\n";
        if std::env::var_os("DEPLOYKIT_BLESS").is_some() {
            std::fs::create_dir_all(std::path::Path::new(path).parent().unwrap()).unwrap();
            std::fs::write(path, &expected).unwrap();
        }
        let shipped = std::fs::read_to_string(path).unwrap_or_default();
        assert!(
            shipped == expected,
            "{path} is out of date: regenerate it with DEPLOYKIT_BLESS=1 cargo test -p \
             deploykit-telemetry grafana"
        );
    }
}
