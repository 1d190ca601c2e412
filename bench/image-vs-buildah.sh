#!/usr/bin/env bash
# deploykit's image builds against buildah, on the sample web application (examples/web), with
# a real registry (Debian's docker-registry) on loopback. Run by hand, not in CI:
#
#   cargo build --release -p deploykit-cli
#   bench/image-vs-buildah.sh
#
# Environment:
#   BENCH_RUNS       runs of each timed step (default 5); the table gives the median
#   BENCH_EXTRA_MB   MiB of generated assets added to the image in the second scenario
#                    (default 64)
#   DEPLOYKIT        the deploykit binary (default target/release/deploykit)
#
# Three measurements:
# 1. image build + push: the same files (the bundled dist/ and server.mjs, then the same plus
#    BENCH_EXTRA_MB of generated assets) packaged on no base and pushed to a fresh repository,
#    by `deploykit build` (a package-only configuration, cache and layout cleared each run) and
#    by buildah (vfs storage: from scratch, copy, copy, config, commit, push; storage cleared
#    each run). Wall time of the whole sequence of processes.
# 2. whether two builds of the same files give the same image digest.
# 3. the full sample pipeline (npm ci, esbuild, node tests, image, push): cold (cache, layout,
#    node_modules and dist removed) and a no-change rebuild right after.

set -euo pipefail

REPO_ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
RUNS=${BENCH_RUNS:-5}
EXTRA_MB=${BENCH_EXTRA_MB:-64}
DK=${DEPLOYKIT:-$REPO_ROOT/target/release/deploykit}
for tool in "$DK" docker-registry buildah skopeo npm node python3; do
    command -v "$tool" >/dev/null || { echo "missing: $tool" >&2; exit 2; }
done

WORK=$(mktemp -d)
cleanup() {
    [[ -n ${REGISTRY_PID:-} ]] && kill "$REGISTRY_PID" 2>/dev/null || true
    buildah --root "$WORK/buildah" --runroot "$WORK/buildah-run" --storage-driver vfs rm -a >/dev/null 2>&1 || true
    rm -rf "$WORK"
}
trap cleanup EXIT

PORT=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
HOST=127.0.0.1:$PORT
mkdir -p "$WORK/registry"
cat >"$WORK/registry.yml" <<EOF
version: 0.1
log:
  level: error
storage:
  filesystem:
    rootdirectory: $WORK/registry
http:
  addr: $HOST
EOF
docker-registry serve "$WORK/registry.yml" >"$WORK/registry.log" 2>&1 &
REGISTRY_PID=$!
for _ in $(seq 100); do
    (echo >/dev/tcp/127.0.0.1/"$PORT") 2>/dev/null && break
    sleep 0.05
done

ms_now() { date +%s%N; }
# Runs "$@" quietly; prints its wall time in ms.
timed() {
    local start end
    start=$(ms_now)
    if ! "$@" >"$WORK/last.log" 2>&1; then
        echo "failed: $*" >&2
        cat "$WORK/last.log" >&2
        exit 1
    fi
    end=$(ms_now)
    echo $(((end - start) / 1000000))
}
median() { printf '%s\n' "$@" | sort -n | awk '{a[NR] = $1} END {print a[int((NR + 1) / 2)]}'; }

# The sample app, built once so both tools package the same dist/.
APP=$WORK/app
mkdir -p "$APP"
cp -r "$REPO_ROOT"/examples/web/{deploykit.toml,package.json,package-lock.json,server.mjs,src} "$APP/"
(cd "$APP" && "$DK" build web --no-push >/dev/null)

# A package-only configuration over the same files, in its own directory.
package_dir() { # name extra_mb
    local dir=$WORK/$1
    mkdir -p "$dir"
    cp -r "$APP/dist" "$APP/server.mjs" "$dir/"
    local files='"/app/dist" = "dist", "/app/server.mjs" = "server.mjs"'
    if (($2 > 0)); then
        mkdir -p "$dir/assets"
        python3 - "$dir/assets" "$2" <<'EOF'
import os, random, sys
out, mb = sys.argv[1], int(sys.argv[2])
rng = random.Random(7)
for i in range(mb):
    # Half compressible text, half noise, 1 MiB a file.
    text = (("asset %d line %d " % (i, j)) * 4 for j in range(8192))
    data = "".join(text).encode()[: 512 * 1024] + rng.randbytes(512 * 1024)
    with open(os.path.join(out, "a%03d.bin" % i), "wb") as f:
        f.write(data)
EOF
        files="$files, \"/app/assets\" = \"assets\""
    fi
    cat >"$dir/deploykit.toml" <<EOF
application = "bench"
[services.web]
command = ["node", "server.mjs"]
port = 8080
image = "$HOST/bench/$1"
[services.web.package]
files = { $files }
entrypoint = ["node", "/app/server.mjs"]
[environments.production]
kind = "production"
EOF
    echo "$dir"
}

BUILDAH=(buildah --root "$WORK/buildah" --runroot "$WORK/buildah-run" --storage-driver vfs)
buildah_build() { # dir repo
    local c
    c=$("${BUILDAH[@]}" from scratch)
    "${BUILDAH[@]}" copy "$c" "$1/dist" /app/dist
    "${BUILDAH[@]}" copy "$c" "$1/server.mjs" /app/server.mjs
    [[ -d $1/assets ]] && "${BUILDAH[@]}" copy "$c" "$1/assets" /app/assets
    "${BUILDAH[@]}" config --entrypoint '["node", "/app/server.mjs"]' --port 8080 "$c"
    "${BUILDAH[@]}" commit --format oci "$c" "bench-$2"
    "${BUILDAH[@]}" push --tls-verify=false "bench-$2" "docker://$HOST/bench/$2"
    "${BUILDAH[@]}" rm -a
    "${BUILDAH[@]}" rmi -a -f
}
deploykit_build() { # dir repo
    rm -rf "$1/.deploykit"
    sed -i "s|^image = .*|image = \"$HOST/bench/$2\"|" "$1/deploykit.toml"
    (cd "$1" && "$DK" build web --tag latest)
}
# The digest `latest` points at in repository bench/$1; fails if there is none.
digest_of() {
    local d
    d=$(skopeo inspect --no-tags --tls-verify=false --format '{{.Digest}}' "docker://$HOST/bench/$1")
    [[ $d == sha256:* ]] || { echo "no image in bench/$1" >&2; exit 1; }
    echo "$d"
}

echo "| content | tool | image build + push (median of $RUNS) | same digest twice |"
echo "|---|---|---:|---|"
for scenario in "sample:0" "sample+${EXTRA_MB}MiB:$EXTRA_MB"; do
    name=${scenario%%:*}
    extra=${scenario##*:}
    dir=$(package_dir "s$extra" "$extra")
    for tool in deploykit buildah; do
        times=()
        for i in $(seq "$RUNS"); do
            times+=("$(timed "${tool}_build" "$dir" "$tool-$extra-$i")")
        done
        first=$(digest_of "$tool-$extra-1")
        second=$(digest_of "$tool-$extra-2")
        if [[ $first == "$second" ]]; then same=yes; else same=no; fi
        echo "| $name | $tool | $(median "${times[@]}") ms | $same |"
    done
done

echo
echo "| sample pipeline (npm ci, esbuild, tests, image, push) | median of $RUNS |"
echo "|---|---:|"
cold=()
warm=()
for i in $(seq "$RUNS"); do
    rm -rf "$APP/.deploykit" "$APP/node_modules" "$APP/dist"
    sed -i "s|^# image = .*|image = \"$HOST/bench/pipeline\"|" "$APP/deploykit.toml"
    cold+=("$(cd "$APP" && timed "$DK" build web)")
    warm+=("$(cd "$APP" && timed "$DK" build web)")
done
c=$(median "${cold[@]}")
w=$(median "${warm[@]}")
echo "| cold build | $c ms |"
echo "| no-change rebuild | $w ms ($(python3 -c "print(f'{100 * $w / $c:.1f}')") % of cold) |"
