//! Benchmark: parse JSON + filter `level == "error"` + redact + write JSON lines, against
//! `jq -c 'select(.level=="error")'` and `grep '"level":"error"'` on the same generated file.
//!
//! ```text
//! CARGO_TARGET_DIR=/work/target-bench cargo run --release -p deploykit-logs --example logs_bench -- \
//!     [--size-mib 1024] [--dir /work/target-bench/logs-bench] [--multiline | --level-last]
//! ```
//!
//! Prints a Markdown table: lines/s per core (lines over the CPU time the tool used), wall time
//! and peak RSS of each tool. Not run in CI.

use std::fs::File;
use std::io::{BufRead, BufReader, BufWriter, Read, Write};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::Instant;

use deploykit_logs::{FileForwarder, Pipeline, PipelineConfig, Record, Source, Stream, Verdict};

const SECRETS: [&str; 3] = [
    "sk_live_51HbX9q2eZvKYlo2C8kq",
    "pg-pass-7f3a9c2e41d8",
    "ghp_R2d2C3poBb8yT6vQ1wZx",
];

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut size_mib: u64 = 1024;
    let mut dir = PathBuf::from("/work/target-bench/logs-bench");
    let mut multiline = false;
    let mut level_last = false;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--size-mib" => size_mib = args.next().ok_or("--size-mib needs a value")?.parse()?,
            "--dir" => dir = args.next().ok_or("--dir needs a value")?.into(),
            "--multiline" => multiline = true,
            "--level-last" => level_last = true,
            other => return Err(format!("unknown argument {other}").into()),
        }
    }
    std::fs::create_dir_all(&dir)?;
    let input = dir.join(if multiline {
        "input-multiline.log"
    } else if level_last {
        "input-level-last.jsonl"
    } else {
        "input.jsonl"
    });
    let wanted = size_mib * 1024 * 1024;
    if std::fs::metadata(&input)
        .map(|m| m.len() < wanted)
        .unwrap_or(true)
    {
        let started = Instant::now();
        let lines = generate(&input, wanted, multiline, level_last)?;
        eprintln!(
            "generated {} ({lines} lines, {:.1} s)",
            input.display(),
            started.elapsed().as_secs_f64()
        );
    }
    let bytes = std::fs::metadata(&input)?.len();
    let lines = count_lines(&input)?;

    let ours = run_ours(&input, &dir.join("out"), multiline)?;
    if std::env::var_os("LOGS_BENCH_ONLY_OURS").is_some() {
        println!(
            "{:.2} s CPU, {}",
            ours.cpu_seconds,
            ours.extra.unwrap_or_default()
        );
        return Ok(());
    }
    // jq cannot read the text variant; grep counts the error lines (not their traces).
    let jq = if multiline {
        None
    } else {
        Some(run_tool(
            "jq",
            &["-c", r#"select(.level=="error")"#],
            &input,
        )?)
    };
    let grep_pattern = if multiline {
        " ERROR "
    } else {
        r#""level":"error""#
    };
    let grep = run_tool("grep", &[grep_pattern], &input)?;

    println!(
        "input: {} lines, {:.2} GiB{}",
        lines,
        bytes as f64 / (1u64 << 30) as f64,
        if multiline {
            " (with multi-line stack traces)"
        } else {
            ""
        }
    );
    println!();
    println!(
        "| tool | matched | wall | CPU | lines/s per core | MB/s per core | peak RSS | vs jq |"
    );
    println!("|---|---:|---:|---:|---:|---:|---:|---:|");
    let jq_rate = jq.as_ref().map(|jq| lines as f64 / jq.cpu_seconds);
    let mut rows = vec![(
        if multiline {
            "deploykit-logs (join multi-line + parse regex + filter + redact + write JSON lines)"
        } else {
            "deploykit-logs (parse JSON + filter + redact + write JSON lines)"
        },
        &ours,
    )];
    if let Some(jq) = &jq {
        rows.push(("`jq -c 'select(.level==\"error\")'`", jq));
    }
    rows.push((
        if multiline {
            "`grep ' ERROR '`"
        } else {
            "`grep '\"level\":\"error\"'`"
        },
        &grep,
    ));
    for (name, result) in rows {
        let rate = lines as f64 / result.cpu_seconds;
        println!(
            "| {name} | {} | {:.2} s | {:.2} s | {:.0} | {:.0} | {:.1} MB | {} |",
            result.matched.map_or("-".to_string(), |m| m.to_string()),
            result.wall_seconds,
            result.cpu_seconds,
            rate,
            bytes as f64 / result.cpu_seconds / 1e6,
            result.peak_rss_kb as f64 / 1024.0,
            jq_rate.map_or("-".to_string(), |jq_rate| format!("{:.1}×", rate / jq_rate)),
        );
    }
    if let Some(extra) = &ours.extra {
        println!();
        println!("{extra}");
    }
    Ok(())
}

/// Reads a file in 1 MiB chunks of whole lines, validating UTF-8 once per chunk.
struct ChunkReader {
    file: File,
    buffer: Vec<u8>,
    filled: usize,
    consumed: usize,
}

impl ChunkReader {
    fn open(path: &Path) -> std::io::Result<Self> {
        Ok(ChunkReader {
            file: File::open(path)?,
            buffer: vec![0; 1 << 20],
            filled: 0,
            consumed: 0,
        })
    }

    /// The next run of complete lines (the last line of the file may lack its newline).
    fn next_chunk(&mut self) -> Result<Option<&str>, Box<dyn std::error::Error>> {
        self.buffer.copy_within(self.consumed..self.filled, 0);
        self.filled -= self.consumed;
        self.consumed = 0;
        loop {
            if self.filled == self.buffer.len() {
                self.buffer.resize(self.buffer.len() * 2, 0);
            }
            let read = self.file.read(&mut self.buffer[self.filled..])?;
            self.filled += read;
            let end = if read == 0 {
                if self.filled == 0 {
                    return Ok(None);
                }
                self.filled
            } else {
                match self.buffer[..self.filled]
                    .iter()
                    .rposition(|&byte| byte == b'\n')
                {
                    Some(last) => last + 1,
                    None => continue,
                }
            };
            self.consumed = end;
            return Ok(Some(std::str::from_utf8(&self.buffer[..end])?));
        }
    }
}

struct Measured {
    matched: Option<u64>,
    wall_seconds: f64,
    cpu_seconds: f64,
    peak_rss_kb: u64,
    extra: Option<String>,
}

/// A small deterministic generator (xorshift64*), so every run measures the same file.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// JSON lines (`time`, `level`, `msg`, … in that order, or with `level` last), or the text
/// variant with stack traces.
fn generate(path: &Path, wanted: u64, multiline: bool, level_last: bool) -> std::io::Result<u64> {
    let mut out = BufWriter::with_capacity(1 << 20, File::create(path)?);
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let paths = [
        "/api/v1/items",
        "/api/v1/users",
        "/healthz",
        "/api/v1/orders",
        "/login",
    ];
    let methods = ["GET", "GET", "GET", "POST", "PUT", "DELETE"];
    let mut written = 0u64;
    let mut lines = 0u64;
    let mut line = String::with_capacity(512);
    let base_ns: u64 = 1_764_936_000_000_000_000;
    while written < wanted {
        line.clear();
        let roll = rng.below(100);
        let level = match roll {
            0..=19 => "debug",
            20..=79 => "info",
            80..=92 => "warn",
            _ => "error",
        };
        let ts = base_ns + lines * 137_000;
        let secs = ts / 1_000_000_000;
        let nanos = ts % 1_000_000_000;
        let (h, m, s) = ((secs / 3600) % 24, (secs / 60) % 60, secs % 60);
        let request = rng.next();
        let path_index = rng.below(paths.len() as u64) as usize;
        let msg = match level {
            "error" => "request failed",
            "warn" => "slow request",
            "debug" => "cache lookup",
            _ => "request served",
        };
        use std::fmt::Write as _;
        if multiline {
            // The text variant: `<time> <LEVEL> <message> key=value…`, and a Java stack trace
            // after one error in four.
            let _ = write!(
                line,
                "2025-12-05T{h:02}:{m:02}:{s:02}.{nanos:09}Z {} {msg} method={} path={}/{} status={} request_id={request:016x}",
                level.to_ascii_uppercase(),
                methods[rng.below(methods.len() as u64) as usize],
                paths[path_index],
                rng.below(100_000),
                if level == "error" { 500 } else { 200 },
            );
            if rng.below(50) == 0 {
                let secret = SECRETS[rng.below(SECRETS.len() as u64) as usize];
                let _ = write!(line, " detail=\"upstream rejected credentials {secret}\"");
            }
            line.push('\n');
            if level == "error" && rng.below(4) == 0 {
                line.push_str("java.lang.IllegalStateException: connection reset\n");
                for depth in 0..(3 + rng.below(12)) {
                    let _ = writeln!(
                        line,
                        "\tat com.example.api.Handler.step{depth}(Handler.java:{})",
                        40 + depth
                    );
                }
                line.push_str("Caused by: java.io.IOException: broken pipe\n");
                line.push_str("\t... 12 more\n");
            }
            out.write_all(line.as_bytes())?;
            written += line.len() as u64;
            lines += 1;
            continue;
        }
        let _ = write!(
            line,
            r#"{{"time":"2025-12-05T{h:02}:{m:02}:{s:02}.{nanos:09}Z",{}"msg":"{msg}","method":"{}","path":"{}/{}","status":{},"duration_ms":{}.{},"request_id":"{request:016x}","instance":"api-{}""#,
            if level_last {
                String::new()
            } else {
                format!(r#""level":"{level}","#)
            },
            methods[rng.below(methods.len() as u64) as usize],
            paths[path_index],
            rng.below(100_000),
            if level == "error" { 500 } else { 200 },
            rng.below(900),
            rng.below(10),
            rng.below(8),
        );
        // About 2 % of lines carry a secret value the deployment resolved.
        if rng.below(50) == 0 {
            let secret = SECRETS[rng.below(SECRETS.len() as u64) as usize];
            let _ = write!(
                line,
                r#","detail":"upstream rejected credentials {secret}""#
            );
        }
        if level_last {
            let _ = write!(line, r#","level":"{level}""#);
        }
        line.push_str("}\n");
        out.write_all(line.as_bytes())?;
        written += line.len() as u64;
        lines += 1;
    }
    out.flush()?;
    Ok(lines)
}

fn count_lines(path: &Path) -> std::io::Result<u64> {
    let mut reader = BufReader::with_capacity(1 << 20, File::open(path)?);
    let mut count = 0u64;
    loop {
        let buffer = reader.fill_buf()?;
        if buffer.is_empty() {
            return Ok(count);
        }
        count += buffer.iter().filter(|&&b| b == b'\n').count() as u64;
        let length = buffer.len();
        reader.consume(length);
    }
}

/// CPU time (user + system) of this process so far, from /proc/self/stat, in seconds.
fn own_cpu_seconds() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    let after_name = stat.rsplit_once(')').map_or("", |(_, rest)| rest);
    let fields: Vec<&str> = after_name.split_whitespace().collect();
    // Fields 14 and 15 of the whole line are utime and stime; after the name they are 12, 13.
    let ticks: u64 = fields.get(11).and_then(|v| v.parse().ok()).unwrap_or(0)
        + fields.get(12).and_then(|v| v.parse().ok()).unwrap_or(0);
    ticks as f64 / 100.0
}

fn own_peak_rss_kb() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmHWM:"))
        .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

fn run_ours(
    input: &Path,
    out_dir: &Path,
    multiline: bool,
) -> Result<Measured, Box<dyn std::error::Error>> {
    if out_dir.exists() {
        std::fs::remove_dir_all(out_dir)?;
    }
    let config = PipelineConfig::from_toml_str(if multiline {
        r#"
        memory_limit_bytes = 16777216
        [multiline]
        start = '^\d{4}-\d\d-\d\dT'
        max_lines = 200
        [[stages]]
        type = "parse_regex"
        pattern = '^(?P<time>\S+) (?P<level>[A-Z]+) '
        [[stages]]
        type = "filter"
        level = "error"
        "#
    } else {
        r#"
        memory_limit_bytes = 16777216
        [[stages]]
        type = "parse_json"
        [[stages]]
        type = "filter"
        level = "error"
        "#
    })?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let cpu_before = own_cpu_seconds();
    let started = Instant::now();
    let (stats, files) = runtime.block_on(async {
        let forwarder = Arc::new(FileForwarder::create(out_dir, "errors", 256 << 20)?);
        let pipeline = Pipeline::start(&config, SECRETS, forwarder.clone())?;
        let sender = pipeline.input();
        let mut joiner = sender.line_joiner();
        let source = Source::new("api", "production", "r42", "api-1");
        let mut reader = ChunkReader::open(input)?;
        let mut record = Record::new(
            source.clone(),
            Stream::Stdout,
            0,
            String::with_capacity(4096),
        );
        let mut timestamp_ns = 0i64;
        while let Some(chunk) = reader.next_chunk()? {
            for text in chunk.split_terminator('\n') {
                timestamp_ns += 1;
                let Some(joiner) = joiner.as_mut() else {
                    // The fast path: one record, its line buffer reused for every line.
                    record.set_line(timestamp_ns, text);
                    if sender.process(&mut record) == Verdict::Keep {
                        sender.enqueue(record.clone()).await?;
                    }
                    continue;
                };
                let next = Record::new(source.clone(), Stream::Stdout, timestamp_ns, text);
                if let Some(mut complete) = joiner.push(next, Instant::now())
                    && sender.process(&mut complete) == Verdict::Keep
                {
                    sender.enqueue(complete).await?;
                }
            }
        }
        if let Some(mut complete) = joiner.as_mut().and_then(|joiner| joiner.finish())
            && sender.process(&mut complete) == Verdict::Keep
        {
            sender.enqueue(complete).await?;
        }
        let stats = pipeline.close().await?;
        Ok::<_, Box<dyn std::error::Error>>((stats, forwarder.files()?))
    })?;
    let wall_seconds = started.elapsed().as_secs_f64();
    let cpu_seconds = own_cpu_seconds() - cpu_before;
    // Check the output: every line written, no secret anywhere.
    let mut written = 0u64;
    let mut leaked = 0u64;
    for file in &files {
        let reader = BufReader::new(File::open(file)?);
        for line in reader.lines() {
            let line = line?;
            written += 1;
            if SECRETS.iter().any(|secret| line.contains(secret)) {
                leaked += 1;
            }
        }
    }
    let extra = format!(
        "deploykit-logs counters: in {}, out {}, dropped by filter {}, dropped by overflow {}, redactions {}, peak queued {:.1} MB; {} JSON lines written in {} file(s), {} containing a secret.",
        stats.records_in,
        stats.records_out,
        stats.dropped_by_filter,
        stats.dropped_by_overflow,
        stats.redactions,
        stats.peak_queued_bytes as f64 / 1e6,
        written,
        files.len(),
        leaked
    );
    Ok(Measured {
        matched: Some(stats.records_out),
        wall_seconds,
        cpu_seconds: cpu_seconds.max(0.01),
        peak_rss_kb: own_peak_rss_kb(),
        extra: Some(extra),
    })
}

fn run_tool(
    tool: &str,
    args: &[&str],
    input: &Path,
) -> Result<Measured, Box<dyn std::error::Error>> {
    let output_path = input.with_extension(format!("{tool}.out"));
    let output = File::create(&output_path)?;
    let timing = Command::new("/usr/bin/time")
        .args(["-f", "%e %U %S %M", tool])
        .args(args)
        .arg(input)
        .stdout(output)
        .output()?;
    let stderr = String::from_utf8_lossy(&timing.stderr);
    let last = stderr.lines().last().unwrap_or_default();
    let numbers: Vec<f64> = last
        .split_whitespace()
        .filter_map(|v| v.parse().ok())
        .collect();
    if numbers.len() != 4 {
        return Err(format!("{tool} failed: {stderr}").into());
    }
    let matched = count_lines(&output_path)?;
    std::fs::remove_file(&output_path)?;
    Ok(Measured {
        matched: Some(matched),
        wall_seconds: numbers[0],
        cpu_seconds: (numbers[1] + numbers[2]).max(0.01),
        peak_rss_kb: numbers[3] as u64,
        extra: None,
    })
}
