#!/usr/bin/env bash
# deploykit's backup engine against restic and borgbackup: full backup, incremental backup,
# restore (checked with `diff -r`) and repository size, on one generated tree. Run by hand,
# not in CI:
#
#   bench/backup-vs-peers.sh
#
# Environment:
#   BENCH_SIZE_MB      size of the generated tree in MiB (default 1024)
#   BENCH_DIR          work directory (default: a fresh `mktemp -d`); the source tree, the
#                      three repositories, the restores and the tools' caches go there
#   BENCH_KEEP=1       keep the work directory at the end
#   BENCH_DROP_CACHES=1  drop the page cache before every timed step (needs root and a
#                      writable /proc/sys/vm/drop_caches; otherwise warns and carries on)
#
# Every step is timed the same way for the three tools: wall time of the whole process
# (`date +%s.%N` around it), so key derivation, repository opening and process start-up
# count for all of them. deploykit runs through its bench binary (examples/benches/
# backup_vs_peers.rs), built once with `cargo bench --no-run` and then run directly so
# cargo's own start-up is not timed. All full backups run first, then one deterministic
# change (~1 % of the bytes) is applied to the tree, then all incrementals, then all restores.

set -euo pipefail

SIZE_MB=${BENCH_SIZE_MB:-1024}
KEEP=${BENCH_KEEP:-0}
DROP_CACHES=${BENCH_DROP_CACHES:-0}
REPO_ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
TOOLS=(deploykit restic borg)

if ! [[ $SIZE_MB =~ ^[0-9]+$ ]] || ((SIZE_MB < 8)); then
    echo "BENCH_SIZE_MB must be an integer ≥ 8 (got '$SIZE_MB')" >&2
    exit 2
fi

if [[ -n ${BENCH_DIR:-} ]]; then
    mkdir -p "$BENCH_DIR"
    WORK=$(cd "$BENCH_DIR" && pwd)
    OWN_WORK=0
else
    WORK=$(mktemp -d -t backup-vs-peers.XXXXXX)
    OWN_WORK=1
fi
# Only what this script creates is removed, also when BENCH_DIR is given.
WORK_ITEMS=(src repos restore logs cache gen.py)

cleanup() {
    local rc=$?
    if [[ $KEEP == 1 ]]; then
        echo "work directory kept: $WORK" >&2
    elif [[ $OWN_WORK == 1 ]]; then
        rm -rf "$WORK"
    else
        for item in "${WORK_ITEMS[@]}"; do rm -rf "${WORK:?}/$item"; done
    fi
    exit "$rc"
}
trap cleanup EXIT

die() {
    echo "backup-vs-peers: $*" >&2
    exit 1
}

# --- tools -----------------------------------------------------------------------------------

if ! command -v restic >/dev/null || ! command -v borg >/dev/null; then
    echo "installing restic and borgbackup with apt-get…" >&2
    if [[ $(id -u) != 0 ]]; then die "restic or borg is missing and this is not root: install them"; fi
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq restic borgbackup >/dev/null
fi
command -v python3 >/dev/null || die "python3 is needed to generate the test tree"

BORG_VERSION=$(borg --version | awk '{print $2}')
BORG_MAJOR=${BORG_VERSION%%.*}
if ((BORG_MAJOR >= 2)); then BORG_MODE=repokey-blake2-chacha20-poly1305; else BORG_MODE=repokey-blake2; fi

echo "building the deploykit bench binary (cargo bench --no-run)…" >&2
DK=$(
    cd "$REPO_ROOT" &&
        cargo bench -p deploykit-examples --bench backup_vs_peers --no-run \
            --message-format=json-render-diagnostics |
        python3 -c '
import json, sys
exe = None
for line in sys.stdin:
    try:
        msg = json.loads(line)
    except ValueError:
        continue
    if msg.get("reason") == "compiler-artifact" and msg.get("target", {}).get("name") == "backup_vs_peers":
        exe = msg.get("executable") or exe
if not exe:
    sys.exit("no backup_vs_peers executable in cargo output")
print(exe)
'
)
[[ -x $DK ]] || die "bench binary not found ($DK)"

# Isolated caches and configuration, removed with the work directory.
mkdir -p "$WORK/logs" "$WORK/cache" "$WORK/repos" "$WORK/restore"
export DEPLOYKIT_PASSWORD=bench-passphrase-deploykit
export RESTIC_PASSWORD=bench-passphrase-restic
export RESTIC_CACHE_DIR=$WORK/cache/restic
export BORG_PASSPHRASE=bench-passphrase-borg
export BORG_BASE_DIR=$WORK/cache/borg
export BORG_DISPLAY_PASSPHRASE=no

# --- the test tree ---------------------------------------------------------------------------

cat >"$WORK/gen.py" <<'PY'
"""Deterministic test tree: `gen.py generate ROOT MIB` and `gen.py change ROOT MIB`."""
import os
import random
import sys

MIB = 1 << 20
PIECE = 4 * MIB


def rand_bytes(seed, n):
    """Incompressible bytes, generated in pieces so memory stays small."""
    out = bytearray()
    piece = 0
    while len(out) < n:
        want = min(PIECE, n - len(out))
        out += random.Random(f"{seed}/{piece}").randbytes(want)
        piece += 1
    return bytes(out)


LEVELS = ("INFO", "INFO", "INFO", "DEBUG", "INFO", "WARN", "INFO", "ERROR")


def text_bytes(seed, n):
    """Log-like lines with counters: compressible, but not trivially."""
    base = random.Random(f"text/{seed}").randrange(1 << 24)
    parts = []
    size = 0
    i = base
    while size < n:
        block = "".join(
            "2024-05-%02d %02d:%02d:%02d.%03d %-5s [worker-%02d] req=%08x "
            "path=/api/v1/items/%d status=%d dur_ms=%d bytes=%d\n"
            % (
                1 + (j // 86400000) % 28, (j // 3600000) % 24, (j // 60000) % 60,
                (j // 1000) % 60, j % 1000, LEVELS[j % 8], j % 16,
                (j * 2654435761) & 0xFFFFFFFF, (j * 7919) % 100000,
                500 if j % 97 == 0 else (404 if j % 13 == 0 else 200),
                (j * 31) % 997, (j * 131) % 65536,
            )
            for j in range(i, i + 1000)
        ).encode()
        i += 1000
        parts.append(block)
        size += len(block)
    return b"".join(parts)[:n]


def write(path, data):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as f:
        f.write(data)


def layout(total_mib):
    """Sizes of each part, in bytes, from the total."""
    total = total_mib * MIB
    # 15 % in small files: ~18,500 files of 1–16 KiB in a 1 GiB tree (the issue asks for
    # at least 15,000), so per-file costs weigh as much as bulk throughput.
    small = total * 3 // 20
    dup = total // 20
    large_budget = total // 2
    n_large = large_budget // (100 * MIB)
    large = large_budget if n_large else 0
    medium = total - small - dup - large
    return total, small, dup, n_large, large, medium


def generate(root, total_mib):
    total, small, dup, n_large, large, medium = layout(total_mib)
    rng = random.Random(42)
    stats = {"text": 0, "random": 0, "dup": 0}
    files = 0

    # Many small files (1–16 KiB) in nested directories, half text, half random.
    done = 0
    i = 0
    while done < small:
        n = min(rng.randint(1024, 16 * 1024), small - done)
        kind = "text" if i % 2 == 0 else "random"
        data = text_bytes(f"small/{i}", n) if kind == "text" else rand_bytes(f"small/{i}", n)
        ext = "log" if kind == "text" else "bin"
        write(f"{root}/small/d{i // 2000:02d}/s{(i // 50) % 40:02d}/f{i:06d}.{ext}", data)
        stats[kind] += n
        done += n
        i += 1
        files += 1

    # A few large files (≥ 100 MiB each): 1–8 MiB segments alternating text and random.
    for k in range(n_large):
        size = large // n_large + (large % n_large if k == n_large - 1 else 0)
        with open(os.path.join(root, f"large-{k}.img"), "wb") as f:
            written = 0
            seg = 0
            while written < size:
                n = min(rng.randint(1, 8) * MIB, size - written)
                if seg % 2 == 0:
                    f.write(rand_bytes(f"large/{k}/{seg}", n))
                    stats["random"] += n
                else:
                    f.write(text_bytes(f"large/{k}/{seg}", n))
                    stats["text"] += n
                written += n
                seg += 1
        files += 1

    # Medium files (64 KiB – 8 MiB), alternating text and random.
    done = 0
    i = 0
    medium_paths = []
    while done < medium:
        n = min(rng.randint(64 * 1024, 8 * MIB), medium - done)
        kind = "text" if i % 2 == 0 else "random"
        data = text_bytes(f"medium/{i}", n) if kind == "text" else rand_bytes(f"medium/{i}", n)
        path = f"{root}/medium/g{i % 8}/m{i:04d}.{'log' if kind == 'text' else 'dat'}"
        write(path, data)
        medium_paths.append(path)
        stats[kind] += n
        done += n
        i += 1
        files += 1

    # Duplicates: copies of medium files under other names (deduplication).
    done = 0
    for i, src in enumerate(medium_paths):
        if done >= dup:
            break
        with open(src, "rb") as f:
            data = f.read(dup - done)
        write(f"{root}/copies/c{i:04d}-{os.path.basename(src)}", data)
        stats["dup"] += len(data)
        done += len(data)
        files += 1

    print(
        f"generated {files} files, {total / MIB:.0f} MiB: "
        f"text {100 * stats['text'] / total:.0f} %, random {100 * stats['random'] / total:.0f} %, "
        f"duplicates {100 * stats['dup'] / total:.0f} %; "
        f"{n_large} large file(s) of ≥ 100 MiB"
    )


def change(root, total_mib):
    """About 1 % of the bytes: rewrite small files, add and delete some, append to a log,
    and overwrite a few MiB in the middle of the largest file (in place)."""
    total = total_mib * MIB
    changed = 0
    small = sorted(
        os.path.join(d, f) for d, _, fs in os.walk(os.path.join(root, "small")) for f in fs
    )
    for i, path in enumerate(small[::97]):
        n = 1024 + (i * 7919) % (15 * 1024)
        data = text_bytes(f"changed/{i}", n) if path.endswith(".log") else rand_bytes(f"changed/{i}", n)
        write(path, data)
        changed += n
    for path in small[5::211][:10]:
        os.remove(path)
    for i in range(20):
        n = 2048 + i * 512
        write(f"{root}/small/new/n{i:02d}.log", text_bytes(f"new/{i}", n))
        changed += n
    logs = sorted(os.path.join(d, f) for d, _, fs in os.walk(os.path.join(root, "medium")) for f in fs if f.endswith(".log"))
    if logs:
        with open(logs[0], "ab") as f:
            f.write(text_bytes("append", 128 * 1024))
        changed += 128 * 1024
    files = [os.path.join(d, f) for d, _, fs in os.walk(root) for f in fs]
    biggest = max(files, key=lambda p: (os.path.getsize(p), p))
    size = os.path.getsize(biggest)
    n = max(MIB, total // 100 - changed)
    n = min(n, size // 2)
    with open(biggest, "r+b") as f:
        f.seek(size // 2 - n // 2)
        f.write(rand_bytes("overwrite", n))
    changed += n
    print(
        f"changed {changed / MIB:.1f} MiB ({100 * changed / total:.1f} %): "
        f"{len(small[::97])} small files rewritten, 10 deleted, 20 added, a log appended, "
        f"{n / MIB:.1f} MiB overwritten in the middle of {os.path.relpath(biggest, root)}"
    )


if __name__ == "__main__":
    {"generate": generate, "change": change}[sys.argv[1]](sys.argv[2], int(sys.argv[3]))
PY

# Other processes on the machine skew every timing: say so.
LOAD_AT_START=$(cut -d' ' -f1-3 /proc/loadavg)
if awk -v l="${LOAD_AT_START%% *}" -v n="$(nproc)" 'BEGIN {exit !(l > n / 4)}'; then
    echo "warning: load average $LOAD_AT_START on $(nproc) CPUs: timings will be noisy" >&2
fi

SRC=$WORK/src
rm -rf "$SRC" "$WORK/repos"/* "$WORK/restore"/*
echo "generating $SIZE_MB MiB under $SRC…" >&2
python3 "$WORK/gen.py" generate "$SRC" "$SIZE_MB"

tree_bytes() { find "$SRC" -type f -printf '%s\n' | awk '{s += $1} END {printf "%d", s}'; }

# --- timing ----------------------------------------------------------------------------------

declare -A SECS

prepare_step() {
    sync
    if [[ $DROP_CACHES == 1 ]]; then
        if ! { echo 3 >/proc/sys/vm/drop_caches; } 2>/dev/null; then
            echo "warning: cannot drop the page cache; timing with a warm cache" >&2
            DROP_CACHES=0
        fi
    fi
}

# timed STEP TOOL COMMAND...: run COMMAND, its output to logs/TOOL-STEP.log; SECS[STEP,TOOL].
timed() {
    local step=$1 tool=$2
    shift 2
    local log=$WORK/logs/$tool-$step.log t0 t1
    prepare_step
    t0=$(date +%s.%N)
    if ! "$@" >"$log" 2>&1; then
        echo "FAILED: $tool $step: $*" >&2
        tail -n 30 "$log" >&2
        exit 1
    fi
    t1=$(date +%s.%N)
    SECS[$step,$tool]=$(awk -v a="$t0" -v b="$t1" 'BEGIN {printf "%.3f", b - a}')
    printf '  %-9s %-11s %8.2f s\n' "$tool" "$step" "${SECS[$step,$tool]}" >&2
}

# --- the three tools, one function per step --------------------------------------------------
# Sources are given as `src`, relative to the work directory, so every tool stores the tree
# under `src` and restores it to <target>/src (deploykit names it by its last component).

deploykit_init() { "$DK" init "$WORK/repos/deploykit"; }
deploykit_backup() { "$DK" backup "$WORK/repos/deploykit" "$SRC" "$1"; }
deploykit_restore() { "$DK" restore "$WORK/repos/deploykit" "$1"; }

restic_init() { restic init --repo "$WORK/repos/restic" --repository-version 2; }
restic_backup() (
    cd "$WORK"
    restic backup --repo "$WORK/repos/restic" --compression auto --host bench src
)
restic_restore() { restic restore latest --repo "$WORK/repos/restic" --host bench --target "$1"; }

BORG_REPO_DIR=$WORK/repos/borg
borg_init() {
    if ((BORG_MAJOR >= 2)); then
        borg -r "$BORG_REPO_DIR" repo-create -e "$BORG_MODE"
    else
        borg init --encryption="$BORG_MODE" "$BORG_REPO_DIR"
    fi
}
borg_backup() (
    cd "$WORK"
    if ((BORG_MAJOR >= 2)); then
        borg -r "$BORG_REPO_DIR" create --compression zstd,3 "$1" src
    else
        borg create --compression zstd,3 "$BORG_REPO_DIR::$1" src
    fi
)
borg_restore() (
    cd "$1"
    if ((BORG_MAJOR >= 2)); then
        borg -r "$BORG_REPO_DIR" extract "$2"
    else
        borg extract "$BORG_REPO_DIR::$2"
    fi
)

echo "initialising repositories…" >&2
deploykit_init >"$WORK/logs/deploykit-init.log" 2>&1 || { cat "$WORK/logs/deploykit-init.log" >&2; die "deploykit init failed"; }
restic_init >"$WORK/logs/restic-init.log" 2>&1 || { cat "$WORK/logs/restic-init.log" >&2; die "restic init failed"; }
borg_init >"$WORK/logs/borg-init.log" 2>&1 || { cat "$WORK/logs/borg-init.log" >&2; die "borg init failed"; }

FULL_BYTES=$(tree_bytes)
echo "full backups ($((FULL_BYTES / 1048576)) MiB)…" >&2
timed full deploykit deploykit_backup full
timed full restic restic_backup
timed full borg borg_backup full

python3 "$WORK/gen.py" change "$SRC" "$SIZE_MB"
INCR_BYTES=$(tree_bytes)

echo "incremental backups…" >&2
timed incremental deploykit deploykit_backup incremental
timed incremental restic restic_backup
timed incremental borg borg_backup incremental

echo "restores (latest snapshot) and checks…" >&2
for tool in "${TOOLS[@]}"; do
    target=$WORK/restore/$tool
    rm -rf "$target"
    mkdir -p "$target"
    case $tool in
        deploykit) timed restore deploykit deploykit_restore "$target" ;;
        restic) timed restore restic restic_restore "$target" ;;
        borg) timed restore borg borg_restore "$target" incremental ;;
    esac
    if ! diff -r "$SRC" "$target/src" >"$WORK/logs/$tool-diff.log" 2>&1; then
        head -n 20 "$WORK/logs/$tool-diff.log" >&2
        die "$tool's restore differs from the source (diff -r $SRC $target/src)"
    fi
    echo "  $tool restore matches the source (diff -r)" >&2
    # Restores are removed only at the end: ext4 skips recently freed inodes when it
    # allocates, so creating ~18,000 files right after deleting as many is several times
    # slower, and whichever tool restored second would pay for the first one's cleanup.
    # For the same reason, repeated runs should each get a fresh work directory and keep it
    # (BENCH_KEEP=1) until the last one has finished.
done
[[ $KEEP == 1 ]] || rm -rf "$WORK/restore"/*

declare -A REPO_BYTES
for tool in "${TOOLS[@]}"; do
    REPO_BYTES[$tool]=$(du -sb "$WORK/repos/$tool" | cut -f1)
done

# --- report ----------------------------------------------------------------------------------

mem_total=$(awk '/^MemTotal/ {printf "%.1f GiB", $2 / 1048576}' /proc/meminfo)
cpu_model=$(lscpu 2>/dev/null | awk -F: '/^Model name/ {gsub(/^[ \t]+/, "", $2); print $2; exit}')
deploykit_rev=$(git -C "$REPO_ROOT" rev-parse --short HEAD 2>/dev/null || echo unknown)
deploykit_version=$(awk -F'"' '/^version *=/ {print $2; exit}' "$REPO_ROOT/Cargo.toml")

echo
echo "## backup engines: deploykit vs restic vs borg"
echo
echo "machine: $(nproc) CPUs ($cpu_model), $mem_total memory, $(uname -sr);" \
    "work dir on $(df -T "$WORK" | awk 'NR == 2 {print $2}');" \
    "load average $LOAD_AT_START at the start, $(cut -d' ' -f1-3 /proc/loadavg) at the end"
echo "versions: deploykit $deploykit_version ($deploykit_rev, release build)," \
    "$(restic version | awk '{print $1, $2}'), borg $BORG_VERSION"
echo "tree: $SIZE_MB MiB generated, $((FULL_BYTES / 1048576)) MiB before the change," \
    "$((INCR_BYTES / 1048576)) MiB after; $(find "$SRC" -type f | wc -l) files"
echo "settings: encryption on for all (deploykit XChaCha20-Poly1305 + Argon2id 64 MiB," \
    "restic AES-256 + scrypt, borg $BORG_MODE)"
echo "          compression: deploykit zstd 3 (skipped where it does not pay), restic auto, borg zstd,3"
echo "times: wall time of the whole process; throughput = MiB of the source tree / seconds;"
echo "ratios: peer time / deploykit time (> 1: deploykit faster), deploykit size / peer size"
echo

ratio() { awk -v a="$1" -v b="$2" 'BEGIN {if (b > 0) printf "%.2f", a / b; else print "n/a"}'; }
rate() { awk -v bytes="$1" -v s="$2" 'BEGIN {if (s > 0) printf "%.1f", bytes / 1048576 / s; else print "n/a"}'; }
mib() { awk -v b="$1" 'BEGIN {printf "%.1f", b / 1048576}'; }

row() { printf '| %-24s | %10s | %10s | %10s | %11s | %11s |\n' "$@"; }
row "" deploykit restic borg "vs restic" "vs borg"
echo "|--------------------------|-----------:|-----------:|-----------:|------------:|------------:|"
for step in full incremental restore; do
    case $step in
        full) label="full backup"; bytes=$FULL_BYTES ;;
        incremental) label="incremental"; bytes=$INCR_BYTES ;;
        restore) label="restore"; bytes=$INCR_BYTES ;;
    esac
    d=${SECS[$step,deploykit]} r=${SECS[$step,restic]} b=${SECS[$step,borg]}
    row "$label (s)" "$d" "$r" "$b" "$(ratio "$r" "$d")" "$(ratio "$b" "$d")"
    row "$label (MiB/s)" "$(rate "$bytes" "$d")" "$(rate "$bytes" "$r")" "$(rate "$bytes" "$b")" "" ""
done
d=${REPO_BYTES[deploykit]} r=${REPO_BYTES[restic]} b=${REPO_BYTES[borg]}
row "repository size (MiB)" "$(mib "$d")" "$(mib "$r")" "$(mib "$b")" "$(ratio "$d" "$r")" "$(ratio "$d" "$b")"
echo
echo "deploykit's own report (time inside the engine call, without start-up, key derivation"
echo "and repository opening):"
for step in full incremental restore; do
    echo "  $step: $(tail -n 1 "$WORK/logs/deploykit-$step.log")"
done
