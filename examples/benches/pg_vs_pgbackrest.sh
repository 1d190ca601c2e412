#!/usr/bin/env bash
# deploykit pg vs pgBackRest on the same PostgreSQL database, in the same run.
#
# Usage: examples/benches/pg_vs_pgbackrest.sh [SCALE]   (pgbench scale, default 70 ≈ 1 GiB)
#
# One temporary cluster (PostgreSQL 15, run as the `postgres` user, on a free loopback port)
# is loaded with `pgbench -i -s SCALE`. Then each tool in turn, deploykit first, on that same
# cluster:
#   1. its repository is created (deploykit: `pg init --key-file`; pgBackRest: a stanza with
#      compress-type=zst, process-max=2) and `archive_command` is switched to it with
#      ALTER SYSTEM + reload (the archive is drained before each switch, so each repository
#      holds exactly the WAL of its own phase);
#   2. base backup (`deploykit pg backup --pgdata` / `pgbackrest backup --type=full`), timed;
#      both read the data directory in place, both ask for a fast checkpoint and both wait
#      for the backup's last WAL segment to be archived;
#   3. `pgbench -T 20 -c 4 -j 2` write load: segments archived during the load (from
#      pg_stat_archiver), then the time the archive needs to catch up after the load;
#   4. restore to the end of the archive into a new data directory, timed until the cluster
#      is promoted and a query answers (`deploykit pg restore --latest --verify-query`;
#      `pgbackrest restore`, then pg_ctl start and polling until promoted, then the query).
#      The restores run after both tools' backups: one warm-up round, not counted, then
#      ROUNDS rounds (default 3) with the tools' order swapped each round, and the table
#      gives each tool's median: on a fresh VM the first restore pays for memory the host has
#      not backed yet, and in a fixed order that cost would always fall on the same tool.
#      deploykit's time is the one its report gives until the query answered: the command
#      then stops the cluster cleanly (a shutdown checkpoint), which pgBackRest's timing
#      does not include; the whole command's time is printed after the table. The restore
#      of the files alone is also timed (deploykit's report; the `pgbackrest restore`
#      command). Both restored clusters run with archive_mode=off. The query's result is
#      checked against the primary's at the end of each tool's phase;
#   5. repository size (`du -sb`).
# deploykit's restore runs recovery with shared buffers sized to the WAL it replays and no
# restartpoints; pgBackRest's cluster starts with the cluster's own settings (as a user of
# pgBackRest would start it), and once more with deploykit's recovery settings and
# pgBackRest's own prefetching (archive-async=y for archive-get), a reference row
# (PGBR_TUNED_RUN=0 skips it).
# Where deploykit's recovery time goes is printed after the table: PostgreSQL's own "redo
# done" line (its replay's CPU time and elapsed time, which includes waiting for
# restore_command) for both tools, the time of one `wal-fetch` process without prefetching,
# and a second deploykit restore with `--prefetch 0` (DK_NO_PREFETCH_RUN=0 skips it).
# Each timed base backup and restore starts after a `sync`, so that neither tool's timing
# includes the writeback of what the benchmark wrote before it.
# The second tool runs on a database that has had the first tool's 20 s of pgbench on top
# (a little more data and WAL); the table prints the database size each tool backed up.
#
# pgBackRest's archive-push runs synchronously (its default), like deploykit's wal-push: one
# process per segment. PGBR_ASYNC=1 adds archive-async=y (parallel, process-max=2) for comparison.
# LOAD_SECONDS (default 20) sets the pgbench run, ROUNDS (default 3) the restore rounds;
# KEEP=1 keeps the work directory.
#
# Needs: root (PostgreSQL runs as `postgres` via runuser), cargo, PostgreSQL 15 in
# /usr/lib/postgresql/15/bin (or PG_BINDIR), pgbackrest. Release build of deploykit goes to
# CARGO_TARGET_DIR (default /work/target-bench), separate from the debug build.
set -euo pipefail

SCALE="${1:-70}"
[[ "$SCALE" =~ ^[1-9][0-9]*$ ]] || { echo "usage: $0 [pgbench scale, a positive integer]" >&2; exit 2; }
LOAD_SECONDS="${LOAD_SECONDS:-20}"
PG_BINDIR="${PG_BINDIR:-/usr/lib/postgresql/15/bin}"
PGBACKREST="${PGBACKREST:-/usr/bin/pgbackrest}"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-/work/target-bench}"
REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
RUN_AS=postgres
STANZA=bench

die() { echo "error: $*" >&2; exit 1; }
log() { echo "[$(date -u +%H:%M:%S)] $*" >&2; }
now() { date +%s.%N; }
since() { awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%.2f", b - a }'; }

[[ $(id -u) -eq 0 ]] || die "run as root: PostgreSQL and the tools run as '$RUN_AS' through runuser"
id "$RUN_AS" >/dev/null 2>&1 || die "no '$RUN_AS' user to run PostgreSQL as"
for tool in initdb pg_ctl psql pgbench pg_basebackup; do
    [[ -x "$PG_BINDIR/$tool" ]] || die "$PG_BINDIR/$tool is missing (set PG_BINDIR)"
done
[[ -x "$PGBACKREST" ]] || die "$PGBACKREST is missing (set PGBACKREST)"

log "building deploykit (release) into $CARGO_TARGET_DIR"
(cd "$REPO_ROOT" && cargo build --release -p deploykit-cli --quiet) || die "cargo build --release -p deploykit-cli failed"
BUILT="$CARGO_TARGET_DIR/release/deploykit"
[[ -x "$BUILT" ]] || die "$BUILT was not built"

T="$(mktemp -d /tmp/pg-vs-pgbackrest.XXXXXX)"
chown "$RUN_AS": "$T"
chmod 700 "$T"
DATA="$T/primary"
PGBR_RESTORED="$T/restore-pgbackrest"
cleanup() {
    local rc=$?
    for dir in "$PGBR_RESTORED" "$DATA"; do
        if [[ -f "$dir/postmaster.pid" ]]; then
            runuser -u "$RUN_AS" -- "$PG_BINDIR/pg_ctl" -D "$dir" -m immediate -w stop >/dev/null 2>&1 || true
        fi
    done
    if [[ -n "${KEEP:-}" || $rc -ne 0 ]]; then
        echo "kept $T for inspection (logs: $T/*.log, $T/pgbackrest-log)" >&2
    else
        rm -rf "$T"
    fi
}
trap cleanup EXIT

as_pg() { runuser -u "$RUN_AS" -- env -C "$T" "$@"; }
free_port() {
    python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}
PORT="$(free_port)"
psql_q() { as_pg "$PG_BINDIR/psql" -X -q -At -h 127.0.0.1 -p "$PORT" -U postgres -d postgres -v ON_ERROR_STOP=1 -c "$1"; }

# deploykit, copied where postgres can run it (the build directory may not be readable).
DK="$T/deploykit"
cp "$BUILT" "$DK"
chown "$RUN_AS": "$DK"
DK_REPO="$T/repo-deploykit"
DK_KEY="$T/repo-deploykit.key"
export DEPLOYKIT_PG_BINDIR="$PG_BINDIR"
DK_PASSWORD="bench passphrase (the key file is used after init)"
DK_ARCHIVE="DEPLOYKIT_REPO_KEY_FILE=$DK_KEY DEPLOYKIT_PG_BINDIR=$PG_BINDIR $DK pg wal-push %p --repo $DK_REPO"

PGBR_REPO="$T/repo-pgbackrest"
PGBR_CONF="$T/pgbackrest.conf"
cat >"$PGBR_CONF" <<EOF
[global]
repo1-path=$PGBR_REPO
repo1-retention-full=2
compress-type=zst
process-max=2
start-fast=y
log-path=$T/pgbackrest-log
lock-path=$T/pgbackrest-lock
spool-path=$T/pgbackrest-spool
log-level-console=warn
log-level-file=info
$([[ -n "${PGBR_ASYNC:-}" ]] && echo "archive-async=y")

[$STANZA]
pg1-path=$DATA
pg1-port=$PORT
pg1-socket-path=$T
pg1-user=postgres
EOF
chown "$RUN_AS": "$PGBR_CONF"
pgbr() { as_pg "$PGBACKREST" --config="$PGBR_CONF" --stanza="$STANZA" "$@"; }
PGBR_ARCHIVE="$PGBACKREST --config=$PGBR_CONF --stanza=$STANZA archive-push %p"

log "work directory $T; cluster on 127.0.0.1:$PORT; pgbench scale $SCALE"
as_pg "$PG_BINDIR/initdb" -D "$DATA" -U postgres --auth=trust -E UTF8 --locale=C.UTF-8 >"$T/initdb.log" 2>&1 \
    || die "initdb failed: $(tail -5 "$T/initdb.log")"
cat >>"$DATA/postgresql.conf" <<EOF

# pg_vs_pgbackrest.sh
listen_addresses = '127.0.0.1'
port = $PORT
unix_socket_directories = '$T'
wal_level = replica
archive_mode = on
archive_command = '/bin/true'
fsync = off
max_wal_size = 4GB
shared_buffers = 256MB
EOF
as_pg "$PG_BINDIR/pg_ctl" -D "$DATA" -l "$T/primary.log" -w -t 120 start >/dev/null \
    || die "the primary did not start: $(tail -5 "$T/primary.log")"

# Wait until the archiver has archived segment $1 (or later); fail on a 10-minute stall.
wait_archived() {
    local segment="$1" deadline=$((SECONDS + 600))
    until [[ "$(psql_q "SELECT coalesce(last_archived_wal, '') >= '$segment' FROM pg_stat_archiver")" == t ]]; do
        ((SECONDS < deadline)) || die "segment $segment not archived after 600 s: $(tail -5 "$T/primary.log")"
        sleep 0.05
    done
}
# Close the current segment and wait until everything written so far is archived.
drain() { wait_archived "$(psql_q "SELECT pg_walfile_name(pg_switch_wal())")"; }
archived_count() { psql_q "SELECT archived_count FROM pg_stat_archiver"; }
switch_archive_to() {
    drain
    psql_q "ALTER SYSTEM SET archive_command = \$cmd\$$1\$cmd\$"
    psql_q "SELECT pg_reload_conf()" >/dev/null
    local deadline=$((SECONDS + 30))
    until [[ "$(psql_q "SHOW archive_command")" == "$1" ]]; do
        ((SECONDS < deadline)) || die "archive_command was not reloaded"
        sleep 0.05
    done
    drain
}

log "pgbench -i -s $SCALE"
started="$(now)"
as_pg "$PG_BINDIR/pgbench" -h 127.0.0.1 -p "$PORT" -U postgres -i -q -s "$SCALE" postgres >"$T/pgbench-init.log" 2>&1 \
    || die "pgbench -i failed: $(tail -5 "$T/pgbench-init.log")"
psql_q "VACUUM ANALYZE" >/dev/null
psql_q "CHECKPOINT" >/dev/null
log "loaded in $(since "$started") s"
VERIFY_QUERY="SELECT count(*), sum(abalance) FROM pgbench_accounts"

declare -A R
# Each timed base backup and restore starts with nothing left to write back from the steps
# before: the primary runs with fsync off, so its pgbench load, and the previous restores,
# leave hundreds of MiB dirty that the kernel writes back about 30 s later, in whichever
# tool's timing that falls.
settle() { sync; }
mib() { awk -v b="$1" 'BEGIN { printf "%.1f", b / 1048576 }'; }

# Step 3 for the current tool: pgbench load, segments archived during it, catch-up time.
archive_under_load() {
    local tool="$1" before after lsn0 lsn1 load_started load catchup_started
    before="$(archived_count)"
    lsn0="$(psql_q "SELECT pg_current_wal_lsn()")"
    load_started="$(now)"
    as_pg "$PG_BINDIR/pgbench" -h 127.0.0.1 -p "$PORT" -U postgres -T "$LOAD_SECONDS" -c 4 -j 2 postgres \
        >"$T/pgbench-$tool.log" 2>&1 || die "pgbench ($tool) failed: $(tail -5 "$T/pgbench-$tool.log")"
    load="$(since "$load_started")"
    after="$(archived_count)"
    lsn1="$(psql_q "SELECT pg_current_wal_lsn()")"
    catchup_started="$(now)"
    drain
    R[$tool.catchup]="$(since "$catchup_started")"
    R[$tool.during]="$(awk -v n="$((after - before))" -v t="$load" 'BEGIN { printf "%.2f", n / t }')"
    R[$tool.segments]="$(psql_q "SELECT ceil(('$lsn1'::pg_lsn - '$lsn0'::pg_lsn) / 16777216.0)")"
    R[$tool.overall]="$(awk -v n="$(($(archived_count) - before))" -v t="$load" -v c="${R[$tool.catchup]}" \
        'BEGIN { printf "%.2f", n / (t + c) }')"
    R[$tool.tps]="$(sed -n 's/^tps = \([0-9.]*\).*/\1/p' "$T/pgbench-$tool.log" | head -1)"
    log "$tool: ${R[$tool.segments]} segments written in $load s (tps ${R[$tool.tps]}), ${R[$tool.during]} segments/s archived during the load, caught up ${R[$tool.catchup]} s after it"
}

# ---------------------------------------------------------------- deploykit
log "deploykit: init, archive_command, base backup"
started="$(now)"
as_pg env DEPLOYKIT_REPO_PASSWORD="$DK_PASSWORD" "$DK" pg init --repo "$DK_REPO" --key-file "$DK_KEY" >"$T/deploykit-init.log" 2>&1 \
    || die "deploykit pg init failed: $(cat "$T/deploykit-init.log")"
R[deploykit.setup]="$(since "$started")"
switch_archive_to "$DK_ARCHIVE"
R[deploykit.dbsize]="$(psql_q "SELECT pg_database_size('postgres')")"
settle
started="$(now)"
as_pg env DEPLOYKIT_REPO_KEY_FILE="$DK_KEY" "$DK" pg backup --repo "$DK_REPO" --pgdata "$DATA" \
    --pgdata-connection "host=127.0.0.1 port=$PORT user=postgres" >"$T/deploykit-backup.log" 2>&1 \
    || die "deploykit pg backup failed: $(cat "$T/deploykit-backup.log")"
R[deploykit.backup]="$(since "$started")"
log "deploykit: backup ${R[deploykit.backup]} s: $(cat "$T/deploykit-backup.log")"
archive_under_load deploykit
EXPECTED_DK="$(psql_q "$VERIFY_QUERY")"
R[deploykit.size]="$(du -sb "$DK_REPO" | cut -f1)"

# ---------------------------------------------------------------- pgBackRest
log "pgBackRest: stanza-create, archive_command, full backup"
started="$(now)"
pgbr stanza-create >"$T/pgbackrest-stanza.log" 2>&1 || die "pgbackrest stanza-create failed: $(cat "$T/pgbackrest-stanza.log")"
R[pgbackrest.setup]="$(since "$started")"
switch_archive_to "$PGBR_ARCHIVE"
R[pgbackrest.dbsize]="$(psql_q "SELECT pg_database_size('postgres')")"
settle
started="$(now)"
pgbr backup --type=full >"$T/pgbackrest-backup.log" 2>&1 || die "pgbackrest backup failed: $(cat "$T/pgbackrest-backup.log")"
R[pgbackrest.backup]="$(since "$started")"
log "pgBackRest: backup ${R[pgbackrest.backup]} s"
archive_under_load pgbackrest
EXPECTED_PGBR="$(psql_q "$VERIFY_QUERY")"
R[pgbackrest.size]="$(du -sb "$PGBR_REPO" | cut -f1)"

# ---------------------------------------------------------------- restores
# Restores run after both backups: a warm-up round, then ROUNDS rounds (default 3), the tools'
# order swapped each round, and the table gives each tool's median. On this kind of VM the
# first restore writes into memory the host has not backed yet and pays for faulting it in
# (deploykit's first restore here: files 3.3 s instead of 1.0–1.5 s); in one fixed order that
# cost always falls on the same tool.
ROUNDS="${ROUNDS:-3}"
[[ "$ROUNDS" =~ ^[1-9][0-9]*$ ]] || die "ROUNDS must be a positive integer"
median() { printf '%s\n' "$@" | sort -g | awk '{ v[NR] = $1 } END {
    if (NR % 2) print v[(NR + 1) / 2]; else printf "%.2f\n", (v[NR / 2] + v[NR / 2 + 1]) / 2 }'; }

# dk_restore KEY [ARGS…]: `deploykit pg restore --latest` with ARGS into a new directory;
# R[KEY.restore] (until its promoted cluster answered, from its report: the command then stops
# the cluster cleanly, which pgBackRest's timing does not include), R[KEY.files], R[KEY.whole]
# (the whole command), R[KEY.redo] (PostgreSQL's "redo done" line), R[KEY.summary].
secs() { sed -n "s/.*$2 \([0-9.]*\)\(m\?s\).*/\1 \2/p" "$1" | head -1 \
    | awk '{ printf "%.2f", ($2 == "ms") ? $1 / 1000 : $1 }'; }
dk_restore() {
    local key="$1" got out="$T/$1-restore.log" err="$T/$1-restore.err"
    shift
    log "deploykit: restore --latest $* (expecting $EXPECTED_DK)"
    rm -rf "$T/restore-deploykit"
    settle
    started="$(now)"
    env DEPLOYKIT_REPO_KEY_FILE="$DK_KEY" "$DK" pg restore --repo "$DK_REPO" --to "$T/restore-deploykit" --latest "$@" \
        --verify-query "$VERIFY_QUERY" --verify-user postgres --run-as "$RUN_AS" >"$out" 2>"$err" \
        || die "deploykit pg restore failed: $(cat "$err" "$out")"
    R[$key.whole]="$(since "$started")"
    R[$key.restore]="$(secs "$out" 'answering after')"
    R[$key.files]="$(secs "$out" '; files')"
    got="$(tail -1 "$out")"
    [[ "$got" == "$EXPECTED_DK" ]] || die "deploykit's restored cluster answered '$got', the primary '$EXPECTED_DK'"
    R[$key.summary]="$(head -1 "$out" | sed 's/.*; files/files/')"
    R[$key.redo]="$(grep -o 'redo done at.*' "$T/restore-deploykit/deploykit-restore.log" | head -1 || true)"
    log "deploykit: restored in ${R[$key.restore]} s: ${R[$key.summary]}"
    rm -rf "$T/restore-deploykit"
}

# pgbr_restore KEY EXTRA_SETTINGS [CONFIG]: restore with pgBackRest (its configuration
# CONFIG, default $PGBR_CONF), start the cluster with the settings (and EXTRA_SETTINGS),
# time it until promoted and answering into R[KEY.restore].
pgbr_restore() {
    local key="$1" extra="$2" conf="${3:-$PGBR_CONF}" got
    log "pgBackRest: restore${extra:+ with $extra} (expecting $EXPECTED_PGBR)"
    RESTORE_PORT="$(free_port)"
    rm -rf "$PGBR_RESTORED"
    mkdir -m 700 "$PGBR_RESTORED" && chown "$RUN_AS": "$PGBR_RESTORED"
    settle
    started="$(now)"
    as_pg "$PGBACKREST" --config="$conf" --stanza="$STANZA" --pg1-path="$PGBR_RESTORED" restore >"$T/$key-restore.log" 2>&1 \
        || die "pgbackrest restore failed: $(cat "$T/$key-restore.log")"
    R[$key.files]="$(since "$started")"
    as_pg "$PG_BINDIR/pg_ctl" -D "$PGBR_RESTORED" -l "$T/restore-$key.log" -W \
        -o "-c port=$RESTORE_PORT -c listen_addresses='' -c unix_socket_directories='$T' -c archive_mode=off -c hot_standby=on $extra" start >/dev/null
    deadline=$((SECONDS + 3600))
    # pg_ctl -W returns before the postmaster has written its pid file: give it 10 s to appear.
    started_s=$SECONDS
    until [[ "$(as_pg "$PG_BINDIR/psql" -X -At -h "$T" -p "$RESTORE_PORT" -U postgres -d postgres -c "SELECT pg_is_in_recovery()" 2>/dev/null || true)" == f ]]; do
        ((SECONDS < deadline)) || die "pgBackRest's restored cluster was not promoted: $(tail -5 "$T/restore-$key.log")"
        [[ -f "$PGBR_RESTORED/postmaster.pid" ]] || ((SECONDS < started_s + 10)) \
            || die "pgBackRest's restored cluster stopped: $(tail -5 "$T/restore-$key.log")"
        sleep 0.05
    done
    got="$(as_pg "$PG_BINDIR/psql" -X -At -h "$T" -p "$RESTORE_PORT" -U postgres -d postgres -c "$VERIFY_QUERY")"
    R[$key.restore]="$(since "$started")"
    [[ "$got" == "$EXPECTED_PGBR" ]] || die "pgBackRest's restored cluster answered '$got', the primary '$EXPECTED_PGBR'"
    as_pg "$PG_BINDIR/pg_ctl" -D "$PGBR_RESTORED" -m fast -w stop >/dev/null
    R[$key.redo]="$(grep -o 'redo done at.*' "$T/restore-$key.log" | head -1 || true)"
    log "pgBackRest: restored in ${R[$key.restore]} s (files ${R[$key.files]} s)"
    rm -rf "$PGBR_RESTORED"
}

# Round 0 warms up (the first restore on this VM pays for memory the host backs lazily) and
# is printed but not counted.
ROUND_LINES=""
for ((round = 0; round <= ROUNDS; round++)); do
    if ((round % 2)); then
        dk_restore "dk$round"
        pgbr_restore "pgbr$round" ""
    else
        pgbr_restore "pgbr$round" ""
        dk_restore "dk$round"
    fi
    ROUND_LINES+="- round $round$( ((round)) || echo ", warm-up, not counted") ($( ((round % 2)) && echo "deploykit first" || echo "pgBackRest first")): \
deploykit ${R[dk$round.restore]} s (files ${R[dk$round.files]} s; whole command ${R[dk$round.whole]} s), \
pgBackRest ${R[pgbr$round.restore]} s (files ${R[pgbr$round.files]} s)"$'\n'
done
for what in restore files whole; do
    R[deploykit.$what]="$(median $(for ((r = 1; r <= ROUNDS; r++)); do echo "${R[dk$r.$what]}"; done))"
    R[pgbackrest.$what]="$(median $(for ((r = 1; r <= ROUNDS; r++)); do echo "${R[pgbr$r.$what]:-0}"; done))"
done

# Where deploykit's recovery time goes: one wal-fetch process without prefetching (the cost
# PostgreSQL pays per segment without a spool), and a restore with --prefetch 0.
mkdir -p "$T/fetch-one" && chown "$RUN_AS": "$T/fetch-one"
first_wal="$(sed -n 's/.*WAL \([0-9A-F]\{24\}\) to .*/\1/p' "$T/dk1-restore.log" | head -1)"
if [[ -n "$first_wal" ]]; then
    started="$(now)"
    for _ in 1 2 3 4 5; do
        as_pg env DEPLOYKIT_REPO_KEY_FILE="$DK_KEY" "$DK" pg wal-fetch "$first_wal" "$T/fetch-one/RECOVERYXLOG" \
            --repo "$DK_REPO" --prefetch 0 || die "wal-fetch $first_wal failed"
    done
    R[deploykit.fetch_one]="$(awk -v t="$(since "$started")" 'BEGIN { printf "%.0f", t * 1000 / 5 }')"
fi
rm -rf "$T/fetch-one"
if [[ "${DK_NO_PREFETCH_RUN:-1}" != 0 ]]; then
    dk_restore dk_no_prefetch --prefetch 0
fi
# deploykit's restore runs recovery with shared buffers of twice the WAL it replays (at least
# 128 MiB, at most a quarter of the memory) and no restartpoints (deploykit-postgres,
# restore.rs: recovery_tuning); the same settings given to pgBackRest's cluster show how much
# of the difference they make. Its WAL: the segments of the load and the two of the backup.
TUNED_MB="$(awk -v wal_mb="$(( (${R[pgbackrest.segments]:-0} + 2) * 16 ))" '/MemAvailable/ {
    most = int($2 / 1024 / 4); if (most < 128) most = 128; if (most > 8192) most = 8192;
    mb = 2 * wal_mb; if (mb < 128) mb = 128; if (mb > most) mb = most; print mb }' /proc/meminfo)"
if [[ "${PGBR_TUNED_RUN:-1}" != 0 ]]; then
    # pgBackRest's own prefetching: archive-get fetches ahead into its spool, in parallel.
    PGBR_ASYNC_CONF="$T/pgbackrest-async.conf"
    grep -v '^archive-async=' "$PGBR_CONF" \
        | sed 's/^\[global\]$/[global]\narchive-async=y\narchive-get-queue-max=1GiB/' >"$PGBR_ASYNC_CONF"
    chown "$RUN_AS": "$PGBR_ASYNC_CONF"
    pgbr_restore pgbackrest_tuned "-c shared_buffers=${TUNED_MB}MB -c max_wal_size=64GB -c checkpoint_timeout=1d" "$PGBR_ASYNC_CONF"
fi

# ---------------------------------------------------------------- report
# ratio: pgBackRest / deploykit for times and sizes, deploykit / pgBackRest for rates, so
# that > 1 always means deploykit did better.
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (b + 0 == 0) print "–"; else printf "%.2f", a / b }'; }
cat <<EOF

deploykit $("$DK" --version 2>/dev/null | awk '{print $NF}' || true) vs pgBackRest $("$PGBACKREST" version | awk '{print $NF}'), PostgreSQL $(psql_q "SHOW server_version"), pgbench scale $SCALE, $(nproc) cores, load average $(cut -d' ' -f1-3 /proc/loadavg) at the end, $(date -u +%Y-%m-%dT%H:%MZ)

| | deploykit | pgBackRest | ratio (> 1: deploykit better) |
|---|---:|---:|---:|
| database size when backed up | $(mib "${R[deploykit.dbsize]}") MiB | $(mib "${R[pgbackrest.dbsize]}") MiB | |
| repository setup (pg init / stanza-create) | ${R[deploykit.setup]} s | ${R[pgbackrest.setup]} s | $(ratio "${R[pgbackrest.setup]}" "${R[deploykit.setup]}") |
| base backup | ${R[deploykit.backup]} s | ${R[pgbackrest.backup]} s | $(ratio "${R[pgbackrest.backup]}" "${R[deploykit.backup]}") |
| pgbench -T $LOAD_SECONDS: WAL written (tps) | ${R[deploykit.segments]} segments (${R[deploykit.tps]} tps) | ${R[pgbackrest.segments]} segments (${R[pgbackrest.tps]} tps) | |
| segments archived per second during the load | ${R[deploykit.during]} | ${R[pgbackrest.during]} | $(ratio "${R[deploykit.during]}" "${R[pgbackrest.during]}") |
| archive caught up after the load | ${R[deploykit.catchup]} s | ${R[pgbackrest.catchup]} s | $(ratio "${R[pgbackrest.catchup]}" "${R[deploykit.catchup]}") |
| segments archived per second, load start to caught up | ${R[deploykit.overall]} | ${R[pgbackrest.overall]} | $(ratio "${R[deploykit.overall]}" "${R[pgbackrest.overall]}") |
| restore: the base backup's files in place (the tool's own work; median of $ROUNDS) | ${R[deploykit.files]} s | ${R[pgbackrest.files]} s | $(ratio "${R[pgbackrest.files]}" "${R[deploykit.files]}") |
| restore to the end of the archive, promoted and answering (median of $ROUNDS) | ${R[deploykit.restore]} s | ${R[pgbackrest.restore]} s | $(ratio "${R[pgbackrest.restore]}" "${R[deploykit.restore]}") |
| the same, pgBackRest with archive-async=y and its cluster started with deploykit's recovery settings (once) | ${R[deploykit.restore]} s | ${R[pgbackrest_tuned.restore]:-not run} s | $(ratio "${R[pgbackrest_tuned.restore]:-0}" "${R[deploykit.restore]}") |
| repository size (du -sb) | $(mib "${R[deploykit.size]}") MiB | $(mib "${R[pgbackrest.size]}") MiB | $(ratio "${R[pgbackrest.size]}" "${R[deploykit.size]}") |

Restore rounds (each tool's restore, until promoted and answering):
${ROUND_LINES}
Where the restore time goes:
- deploykit's whole command, with the clean stop (median): ${R[deploykit.whole]} s
- deploykit, round 1: ${R[dk1.summary]}
- deploykit, round 1, PostgreSQL: ${R[dk1.redo]:-?}
- deploykit, one wal-fetch process without prefetching: ${R[deploykit.fetch_one]:-?} ms per segment
- deploykit with --prefetch 0: ${R[dk_no_prefetch.restore]:-not run} s; PostgreSQL: ${R[dk_no_prefetch.redo]:-?}
- pgBackRest, round 1, PostgreSQL: ${R[pgbr1.redo]:-?}
- pgBackRest with archive-async=y, shared_buffers=${TUNED_MB}MB, max_wal_size=64GB, checkpoint_timeout=1d: ${R[pgbackrest_tuned.restore]:-not run} s; PostgreSQL: ${R[pgbackrest_tuned.redo]:-?}
EOF
