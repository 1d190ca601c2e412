//! Conformance suite for [`LogSource`] backends.
//!
//! A backend's test implements [`LogWorld`] — the source under test and a way to make one of
//! its instances write lines — and calls [`log_source`]. The suite checks the rules
//! [`LogSource`] documents: records carry their service, environment, revision, instance and
//! stream; kept records come merged by time and honour the revision, instance, window and tail
//! of the selector; a follower sees every later line exactly once and in order, including
//! lines of instances started after it began.

use std::collections::BTreeMap;
use std::time::Duration;

use async_trait::async_trait;
use deploykit_core::Result;
use deploykit_logs::{LogSelector, LogSource, LogStream, Record, Stream};

/// How long a written line may take to become readable.
const VISIBLE_WITHIN: Duration = Duration::from_secs(15);

/// The world a [`log_source`] check runs in.
#[async_trait]
pub trait LogWorld: Send + Sync {
    /// The source under test.
    fn source(&self) -> &dyn LogSource;

    /// The environment name the source's records carry.
    fn environment(&self) -> &str;

    /// Makes `instance` of `revision` of `service` write `lines` to its standard output, in
    /// order, starting the instance first if it does not run yet. Returns once the lines are
    /// written (they may become readable a little later). Consecutive calls write in the
    /// order of the calls.
    async fn write(
        &self,
        service: &str,
        revision: &str,
        instance: &str,
        lines: &[String],
    ) -> Result<()>;
}

/// Runs every check on `world`. Uses the services `conf-a` and `conf-b`, which must have no
/// logs yet.
pub async fn log_source(world: &dyn LogWorld) {
    kept_records_are_merged_by_time_and_carry_their_source(world).await;
    selectors_narrow_what_is_read(world).await;
    a_follower_sees_every_new_line_once_including_new_instances(world).await;
}

fn lines(prefix: &str, range: std::ops::Range<usize>) -> Vec<String> {
    range.map(|i| format!("{prefix} line {i}")).collect()
}

/// Reads `selector` (not following) until it returns `want` records or time runs out.
async fn read_until(world: &dyn LogWorld, selector: &LogSelector, want: usize) -> Vec<Record> {
    let deadline = tokio::time::Instant::now() + VISIBLE_WITHIN;
    loop {
        let stream = world
            .source()
            .logs(selector)
            .await
            .unwrap_or_else(|e| panic!("logs({selector:?}) failed: {e}"));
        let records = tokio::time::timeout(VISIBLE_WITHIN, stream.collect())
            .await
            .unwrap_or_else(|_| {
                panic!("logs({selector:?}) without follow must end after the kept records")
            })
            .unwrap_or_else(|e| panic!("reading logs({selector:?}) failed: {e}"));
        if records.len() >= want || tokio::time::Instant::now() >= deadline {
            return records;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn texts(records: &[Record]) -> Vec<&str> {
    records.iter().map(|r| r.line.as_str()).collect()
}

async fn kept_records_are_merged_by_time_and_carry_their_source(world: &dyn LogWorld) {
    // Two instances write alternately, each batch after the other's is readable, so their
    // timestamps interleave.
    let mut expected = Vec::new();
    for round in 0..3 {
        for instance in ["conf-a-1", "conf-a-2"] {
            let batch = lines(&format!("{instance} r{round}"), 0..2);
            world
                .write("conf-a", "rev-1", instance, &batch)
                .await
                .unwrap_or_else(|e| panic!("write to {instance} failed: {e}"));
            expected.extend(batch);
            let seen = read_until(world, &LogSelector::service("conf-a"), expected.len()).await;
            assert_eq!(
                seen.len(),
                expected.len(),
                "every line written must become readable within {VISIBLE_WITHIN:?}: {:?}",
                texts(&seen)
            );
        }
    }
    let records = read_until(world, &LogSelector::service("conf-a"), expected.len()).await;
    assert_eq!(
        texts(&records),
        expected,
        "kept records must come merged by time across instances, each once"
    );
    assert!(
        records
            .windows(2)
            .all(|w| w[0].timestamp_ns <= w[1].timestamp_ns),
        "timestamps must not go backwards"
    );
    for record in &records {
        let source = &record.source;
        assert_eq!(
            source.service, "conf-a",
            "record {:?}: service",
            record.line
        );
        assert_eq!(
            source.environment,
            world.environment(),
            "record {:?}: environment",
            record.line
        );
        assert_eq!(
            source.revision, "rev-1",
            "record {:?}: revision",
            record.line
        );
        assert!(
            record.line.starts_with(&source.instance),
            "record {:?} carries instance {:?}",
            record.line,
            source.instance
        );
        assert_eq!(
            record.stream,
            Stream::Stdout,
            "record {:?}: stream",
            record.line
        );
        assert!(
            record.timestamp_ns > 1_500_000_000_000_000_000,
            "record {:?}: timestamp {} is not a time of this century",
            record.line,
            record.timestamp_ns
        );
    }
}

async fn selectors_narrow_what_is_read(world: &dyn LogWorld) {
    let all = read_until(world, &LogSelector::service("conf-a"), 12).await;
    assert_eq!(all.len(), 12, "the records of the first check are kept");
    world
        .write("conf-a", "rev-2", "conf-a-3", &lines("conf-a-3", 0..3))
        .await
        .unwrap_or_else(|e| panic!("write to conf-a-3 failed: {e}"));
    let both = read_until(world, &LogSelector::service("conf-a"), 15).await;
    assert_eq!(both.len(), 15, "a second revision's lines are read too");

    let rev1 = read_until(world, &LogSelector::service("conf-a").revision("rev-1"), 12).await;
    assert_eq!(texts(&rev1), texts(&all), "revision rev-1 only");
    let rev2 = read_until(world, &LogSelector::service("conf-a").revision("rev-2"), 3).await;
    assert_eq!(texts(&rev2), lines("conf-a-3", 0..3), "revision rev-2 only");

    let one = read_until(
        world,
        &LogSelector::service("conf-a").instance("conf-a-2"),
        6,
    )
    .await;
    assert_eq!(one.len(), 6, "instance conf-a-2 only: {:?}", texts(&one));
    assert!(one.iter().all(|r| r.source.instance == "conf-a-2"));

    let tail = read_until(world, &LogSelector::service("conf-a").tail(4), 4).await;
    assert_eq!(texts(&tail), texts(&both[11..]), "tail 4: the newest four");

    // A window from the 5th record's time on, and one up to (not including) it.
    let cut = both[4].timestamp_ns;
    let since = read_until(world, &LogSelector::service("conf-a").since_ns(cut), 0).await;
    let expected_since: Vec<&str> = both
        .iter()
        .filter(|r| r.timestamp_ns >= cut)
        .map(|r| r.line.as_str())
        .collect();
    assert_eq!(texts(&since), expected_since, "since the 5th record's time");
    let until = read_until(world, &LogSelector::service("conf-a").until_ns(cut), 0).await;
    assert!(
        until.iter().all(|r| r.timestamp_ns < cut) && until.len() + since.len() == 15,
        "until the 5th record's time: {:?}",
        texts(&until)
    );

    let none = read_until(world, &LogSelector::service("conf-nobody"), 0).await;
    assert!(
        none.is_empty(),
        "a service with no instances has no records"
    );
}

/// Reads from a following stream until `want` records arrived (panics on timeout).
async fn follow_until(stream: &mut LogStream, want: usize, what: &str) -> Vec<Record> {
    let mut records = Vec::new();
    while records.len() < want {
        match tokio::time::timeout(VISIBLE_WITHIN, stream.next()).await {
            Ok(Some(Ok(record))) => records.push(record),
            Ok(Some(Err(e))) => panic!("{what}: the following stream failed: {e}"),
            Ok(None) => panic!("{what}: the following stream ended after {}", records.len()),
            Err(_) => panic!(
                "{what}: only {} of {want} records arrived within {VISIBLE_WITHIN:?}: {:?}",
                records.len(),
                texts(&records)
            ),
        }
    }
    records
}

async fn a_follower_sees_every_new_line_once_including_new_instances(world: &dyn LogWorld) {
    world
        .write("conf-b", "rev-1", "conf-b-1", &lines("conf-b-1 old", 0..3))
        .await
        .unwrap_or_else(|e| panic!("write to conf-b-1 failed: {e}"));
    read_until(world, &LogSelector::service("conf-b"), 3).await;

    let mut stream = world
        .source()
        .logs(&LogSelector::service("conf-b").follow())
        .await
        .unwrap_or_else(|e| panic!("logs(conf-b, follow) failed: {e}"));
    let kept = follow_until(&mut stream, 3, "kept records before following").await;
    assert_eq!(texts(&kept), lines("conf-b-1 old", 0..3));

    // New lines of the running instance, then of an instance of a new revision.
    let mut expected: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for round in 0..4 {
        let batch = lines(&format!("conf-b-1 new r{round}"), 0..50);
        world
            .write("conf-b", "rev-1", "conf-b-1", &batch)
            .await
            .unwrap_or_else(|e| panic!("write to conf-b-1 failed: {e}"));
        expected.entry("conf-b-1".into()).or_default().extend(batch);
    }
    let batch = lines("conf-b-2 new", 0..20);
    world
        .write("conf-b", "rev-2", "conf-b-2", &batch)
        .await
        .unwrap_or_else(|e| panic!("write to conf-b-2 failed: {e}"));
    expected.entry("conf-b-2".into()).or_default().extend(batch);

    let followed = follow_until(&mut stream, 220, "following").await;
    let mut seen: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for record in &followed {
        seen.entry(record.source.instance.clone())
            .or_default()
            .push(record.line.clone());
    }
    assert_eq!(
        seen, expected,
        "a follower sees every new line once, in order per instance, and the lines of an \
         instance that started after it began"
    );
    let revision_2 = followed.iter().find(|r| r.source.instance == "conf-b-2");
    assert_eq!(
        revision_2.map(|r| r.source.revision.as_str()),
        Some("rev-2")
    );
    // Nothing more than what was written.
    let extra = tokio::time::timeout(Duration::from_millis(300), stream.next()).await;
    assert!(
        !matches!(extra, Ok(Some(Ok(_)))),
        "a follower must not see a line twice or a line nobody wrote: {extra:?}"
    );
    drop(stream);
}
