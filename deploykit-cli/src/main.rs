//! `deploykit`: deploy, roll back and inspect services on this machine from `deploykit.toml`.
//!
//! `deploykit daemon` runs the local environment (supervised processes behind a proxy) and
//! keeps running; every other command drives the orchestrator (journal in
//! `<state>/deploykit.db`) against that daemon. `deploykit demo` needs no daemon and no config:
//! it deploys the sample app three times, the last time a bad version that rolls back by
//! itself.
//!
//! Every command prints for people, or JSON with `-o json`; errors carry their causes and a
//! hint; unknown names are refused with the closest known one. Exit codes (also in `--help`):
//! 0 success, 1 error, 2 bad usage, 3 the deployment was rolled back, aborted or failed.

mod backup;
mod backup_copy;
mod build;
mod commands;
mod context;
mod dashboard;
mod demo;
mod failover;
mod flags;
mod http_get;
mod log_agent;
mod logs;
mod names;
mod notify;
mod out;
mod pg;
mod progress;
mod s3_env;
#[path = "bin/sample_app.rs"]
mod sample_app;
mod warm;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};

/// Exit code: the deployment ended rolled back, aborted or failed.
const EXIT_ROLLED_BACK: u8 = 3;

/// The exit codes, as `--help` shows them.
const EXIT_CODES: &str = "\
Exit codes:
  0  success
  1  error (the message on stderr says what and why; with -o json, {\"error\": ...} on stdout)
  2  bad usage (unknown command, flag or value)
  3  the deployment ended rolled back, aborted or failed
  4  backup status: a backup policy is overdue or its last run failed";

#[derive(Parser, Debug)]
#[command(
    name = "deploykit",
    version,
    about = "Safe deployments and recoverable data, on this machine",
    after_help = EXIT_CODES
)]
struct Cli {
    /// The configuration file.
    #[arg(
        long,
        short,
        global = true,
        default_value = "deploykit.toml",
        env = "DEPLOYKIT_CONFIG"
    )]
    config: PathBuf,
    /// Where the journal, the daemon's state, its socket and instance logs live (default:
    /// `.deploykit` beside the configuration file).
    #[arg(long, global = true, env = "DEPLOYKIT_STATE")]
    state: Option<PathBuf>,
    /// Output for people (with progress) or JSON for tools.
    #[arg(long, short, global = true, value_enum, default_value_t = Output::Text)]
    output: Output,
    /// Who is acting, for access control and the audit log (default: $USER).
    #[arg(long, global = true, env = "DEPLOYKIT_ACTOR")]
    actor: Option<String>,
    /// Log more of what deploykit does, on stderr: warnings always, `-v` every journal event,
    /// `-vv` debug, `-vvv` trace. `RUST_LOG` (e.g. `deploykit_core=debug,kube=info`) overrides.
    #[arg(long, short, global = true, action = clap::ArgAction::Count)]
    verbose: u8,
    #[command(subcommand)]
    command: Command,
}

/// Output format.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum Output {
    /// Human-readable, with progress.
    Text,
    /// JSON on stdout: one document (for `logs`, one per line of output).
    Json,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run the local environment: the proxy and the supervised instances (stays in the
    /// foreground; instances keep running if it dies, and the next daemon adopts them).
    Daemon {
        /// The environment this machine runs (default: the only one, or `production`).
        #[arg(long)]
        env: Option<String>,
        /// Where the proxy listens.
        #[arg(long, default_value = "127.0.0.1:8080", env = "DEPLOYKIT_LISTEN")]
        listen: std::net::SocketAddr,
        /// Keep each client on the revision it first reached, with this cookie (never on a
        /// revision whose weight dropped to 0).
        #[arg(long)]
        sticky_cookie: Option<String>,
        /// Largest request body the proxy accepts, in bytes (default 10 MiB).
        #[arg(long, default_value_t = 10 * 1024 * 1024)]
        max_body_bytes: u64,
        /// Seconds a removed instance may finish in-flight requests before it is stopped.
        #[arg(long, default_value_t = 30)]
        drain_timeout: u64,
        /// Seconds between SIGTERM and SIGKILL when an instance stops.
        #[arg(long, default_value_t = 10)]
        grace: u64,
        /// Serve deploykit's metrics at http://ADDR/metrics: deployments by outcome, rollout
        /// and step durations, rollback latency, analysis results, read from the journal every
        /// `deploykit` command on this state writes (from when the daemon started).
        #[arg(long, value_name = "ADDR")]
        metrics_listen: Option<std::net::SocketAddr>,
        /// Serve the web dashboard at http://ADDR/ (e.g. 127.0.0.1:8090; keep it on loopback):
        /// services, live traffic, rollouts with their analysis, backups, the audit log, and
        /// buttons that act as whoever signed in (`deploykit dashboard` prints the link).
        #[arg(long, value_name = "ADDR", env = "DEPLOYKIT_DASHBOARD_LISTEN")]
        dashboard_listen: Option<std::net::SocketAddr>,
        /// Serve HTTPS on the proxy with a certificate from this machine's own certificate
        /// authority (made once in the state directory's `tls/`; trust its `ca.pem`), for
        /// localhost, 127.0.0.1 and every `<service>.localhost`.
        #[arg(long, conflicts_with = "tls_cert")]
        tls: bool,
        /// Serve HTTPS on the proxy with this certificate chain (PEM, leaf first).
        #[arg(long, value_name = "FILE", requires = "tls_key")]
        tls_cert: Option<PathBuf>,
        /// The private key of `--tls-cert` (PEM).
        #[arg(long, value_name = "FILE", requires = "tls_cert")]
        tls_key: Option<PathBuf>,
        /// Let the members of this group (name or id) connect to the daemon's socket, each held
        /// to their own rights under `[access]` (required); without it the socket is the
        /// daemon's user's alone.
        #[arg(long, value_name = "GROUP")]
        socket_group: Option<String>,
    },
    /// Print a link that signs you in to the daemon's dashboard as `--actor` (default $USER),
    /// valid for 15 minutes.
    Dashboard {
        /// The environment whose daemon serves it (default: the only one, or `production`).
        #[arg(long, short)]
        env: Option<String>,
    },
    /// Stop the daemon, and every instance unless `--keep-instances`.
    Down {
        /// Leave instances running for the next daemon to adopt.
        #[arg(long)]
        keep_instances: bool,
    },
    /// Build a service: its stages (skipping those whose inputs did not change, with the build
    /// cache), its image (`[services.<name>.package]`), pushed to its `image` repository by
    /// digest (credentials in DEPLOYKIT_REGISTRY_USER and DEPLOYKIT_REGISTRY_PASSWORD).
    Build {
        /// The service (from the configuration).
        service: String,
        /// Say why each stage ran (what changed since its last run) or was skipped.
        #[arg(long)]
        explain: bool,
        /// Build the image into the layout (`.deploykit/images`) without pushing it.
        #[arg(long)]
        no_push: bool,
        /// Also tag the pushed image (default: pushed by digest only).
        #[arg(long)]
        tag: Option<String>,
    },
    /// Make an ed25519 key pair to sign builds with: the private key at PATH (PKCS#8 PEM,
    /// mode 0600; `[build] signing_key`) and the public key at PATH.pub (`[build] verify_key`).
    Keygen {
        /// Where to write the private key (refused if something is there).
        path: std::path::PathBuf,
    },
    /// Print the Kubernetes objects that run a service's current build in an environment
    /// (its image pinned by digest, from the service's `image` repository), as YAML to apply.
    Render {
        /// The service (from the configuration).
        service: String,
        /// The environment (default: the only one, or `production`).
        #[arg(long, short)]
        env: Option<String>,
        /// The Kubernetes namespace.
        #[arg(long, short)]
        namespace: String,
        /// The revision's label (default: `build`).
        #[arg(long, short, default_value = "build")]
        label: String,
    },
    /// Deploy a service and follow the rollout to its end.
    Deploy {
        /// The service (from the configuration).
        service: String,
        /// The environment (default: the only one, or `production`).
        #[arg(long, short)]
        env: Option<String>,
        /// A label for humans (default: a timestamp).
        #[arg(long, short)]
        label: Option<String>,
        /// Override a variable for this deployment (`KEY=VALUE`, repeatable).
        #[arg(long = "set", value_name = "KEY=VALUE")]
        set: Vec<String>,
        /// Print its id and return; a background `deploykit resume` drives it (its output goes to
        /// `<state>/resume.log`).
        #[arg(long)]
        no_wait: bool,
    },
    /// Finish every deployment a killed command left in flight.
    Resume,
    /// What runs now, with each service's last deployment (or one deployment, by `--id`).
    Status {
        /// The service (default: every service in the configuration).
        service: Option<String>,
        /// The environment (default: the only one, or `production`).
        #[arg(long, short)]
        env: Option<String>,
        /// One deployment by id.
        #[arg(long)]
        id: Option<String>,
    },
    /// A service's deployments, newest first: revision, how each ended (rollbacks, scales and
    /// stops marked) and who asked for it.
    History {
        /// The service.
        service: String,
        /// The environment (default: the only one, or `production`).
        #[arg(long, short)]
        env: Option<String>,
    },
    /// Promote a blue-green deployment (approve its promotion gate).
    Promote {
        /// The deployment id.
        id: String,
    },
    /// Approve the gate a deployment waits at.
    Approve {
        /// The deployment id.
        id: String,
        /// Why.
        #[arg(long, default_value = "")]
        reason: String,
    },
    /// Abort a deployment: traffic returns to the previous revision at once.
    Abort {
        /// The deployment id.
        id: String,
        /// Why.
        #[arg(long, default_value = "aborted from the command line")]
        reason: String,
    },
    /// Roll a service back to its previous revision (or `--to` an earlier one).
    Rollback {
        /// The service.
        service: String,
        /// The environment (default: the only one, or `production`).
        #[arg(long, short)]
        env: Option<String>,
        /// The revision to return to: its label, its id or the start of its id (see
        /// `history`).
        #[arg(long)]
        to: Option<String>,
    },
    /// Preview environments: one per branch, at `<service>-preview-<branch>.localhost`.
    Preview {
        #[command(subcommand)]
        action: PreviewAction,
    },
    /// Back paths up into an encrypted repository (key from DEPLOYKIT_REPO_PASSWORD); `backup
    /// agent` runs every environment's backup policy, `backup status` shows how it goes.
    Backup(backup::BackupArgs),
    /// Restore a snapshot from a repository.
    Restore(backup::RestoreArgs),
    /// Restore the newest snapshot into a scratch directory, verify it and report RTO/RPO.
    Drill(backup::DrillArgs),
    /// PostgreSQL continuous archiving and point-in-time recovery (key from
    /// DEPLOYKIT_REPO_PASSWORD): wal-push and wal-fetch for archive_command and restore_command,
    /// base backups, restores to a time, LSN or restore point, retention.
    Pg {
        #[command(subcommand)]
        action: pg::PgAction,
    },
    /// Fail an environment over to its standby (`[environments.<env>.standby]`), journaled and
    /// audited; list failovers and print their reports (RTO, RPO, timeline).
    Failover {
        #[command(subcommand)]
        action: failover::FailoverAction,
    },
    /// The audit log.
    Audit {
        #[command(subcommand)]
        action: AuditAction,
    },
    /// Notification channels (`[notifications.<name>]`; the daemon delivers them).
    Notify {
        #[command(subcommand)]
        action: NotifyAction,
    },
    /// Feature flags from the configuration (`flags = "flags.json"` or `[flags]`).
    Flags {
        #[command(subcommand)]
        action: flags::FlagsAction,
    },
    /// The records of a service's instances (or of one instance) merged by time, filtered
    /// (`--since`, `--revision`, `--level`, `--grep`, `--query`), `-f` to follow them, or
    /// counted (`--count-by`, `--count`).
    Logs(crate::logs::LogsArgs),
    /// Check deploykit.toml (and the secrets it names, when DEPLOYKIT_AGE_KEY_FILE is set)
    /// without deploying anything.
    Validate,
    /// Run the serving revision of a service at another size (journaled; the next deploy
    /// sizes from deploykit.toml again).
    Scale {
        /// The service.
        service: String,
        /// How many instances.
        replicas: u32,
        /// The environment (default: the only one, or `production`).
        #[arg(long, short)]
        env: Option<String>,
    },
    /// Stop a service: remove its instances and routes (journaled; `deploy` starts it again).
    Stop {
        /// The service.
        service: String,
        /// The environment (default: the only one, or `production`).
        #[arg(long, short)]
        env: Option<String>,
    },
    /// Deploy the sample app on this machine: v1, v2 by canary, then a bad v3 that rolls back
    /// by itself, under load, with no config, daemon or cluster.
    Demo(demo::DemoArgs),
    /// The sample app the demo deploys (a tiny HTTP server configured by environment
    /// variables; see `deploykit-sample-app`).
    #[command(hide = true)]
    SampleApp,
}

#[derive(Subcommand, Debug)]
enum PreviewAction {
    /// Create or update the preview of a branch.
    Create {
        /// The service.
        service: String,
        /// The branch.
        #[arg(long)]
        branch: String,
        /// A label for humans.
        #[arg(long)]
        label: Option<String>,
    },
    /// Tear a branch's preview down.
    Delete {
        /// The branch.
        branch: String,
    },
    /// List previews.
    List,
}

#[derive(Subcommand, Debug)]
enum NotifyAction {
    /// Send the newest event of the environment's newest deployment through every channel (or
    /// one) now, whatever its filters: does the channel work?
    Test {
        /// Only this channel.
        #[arg(long)]
        channel: Option<String>,
        /// The environment (default: the only one, or `production`).
        #[arg(long, short)]
        env: Option<String>,
    },
}

#[derive(Subcommand, Debug)]
enum AuditAction {
    /// Check the audit log's hash chain.
    Verify,
}

/// Send deploykit's own log (retries, lost leases, backends refusing) to stderr, so it reaches
/// the user instead of being dropped: warnings by default, more with `-v`, or as `RUST_LOG` says.
fn init_logging(verbose: u8) {
    let level = match verbose {
        0 => "warn",
        1 => "info",
        2 => "debug",
        _ => "trace",
    };
    // Other crates (hyper, kube, the AWS SDK) stay at warnings unless RUST_LOG asks for more.
    let ours = [
        "deploykit_core",
        "deploykit_local",
        "deploykit_k8s",
        "deploykit_aws",
        "deploykit_backup",
        "deploykit",
    ]
    .map(|c| format!("{c}={level}"))
    .join(",");
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(format!("warn,{ours}")));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(verbose > 1)
        .try_init();
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Command::SampleApp = cli.command {
        return sample_app::main();
    }
    init_logging(cli.verbose);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("deploykit: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let output = cli.output;
    match runtime.block_on(commands::run(cli)) {
        Ok(code) => code,
        Err(e) => {
            match output {
                Output::Json => out::line(out::report_json(&e)),
                Output::Text => eprintln!("deploykit: {}", out::report(&e)),
            }
            ExitCode::FAILURE
        }
    }
}
