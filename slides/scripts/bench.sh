#!/usr/bin/env bash
# Run the benches whose output the figures slide is made from, with the release binary, and keep
# their text output as it was printed: data/bench-<name>.txt. data/bench-meta.txt says when,
# on which commit and on what machine. Slow (a few minutes); `./build --bench` runs it.
set -euo pipefail
here="$(cd "$(dirname "$0")/.." && pwd)"
repo="$(cd "$here/.." && pwd)"
reflex="${REFLEX:-$repo/target/release/reflex}"
[ -x "$reflex" ] || { echo "bench: no release binary at $reflex (cargo build --release)" >&2; exit 1; }
data="$here/data"
mkdir -p "$data"
# A private copy: target/release/reflex may be rebuilt while the benches run (the benches start
# their parts from their own executable's path).
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
cp "$reflex" "$tmp/reflex"
binary_date="$(stat -c %y "$reflex" | cut -d. -f1)"
reflex="$tmp/reflex"

run() { # name, then the bench's arguments
  local name="$1"; shift
  echo "bench: reflex bench $* -> data/bench-$name.txt" >&2
  local start=$SECONDS
  "$reflex" bench "$@" --log-level warn >"$data/bench-$name.txt.new" 2>"$data/bench-$name.err" \
    || { echo "bench: reflex bench $* failed, see data/bench-$name.err" >&2; exit 1; }
  mv "$data/bench-$name.txt.new" "$data/bench-$name.txt"
  rm -f "$data/bench-$name.err"
  echo "bench: $name took $((SECONDS - start)) s" >&2
}

{
  echo "date: $(date -u +%Y-%m-%dT%H:%M:%SZ)"
  echo "commit: $(git -C "$repo" rev-parse --short HEAD)"
  echo "binary: $("$reflex" --version), release, built $binary_date"
  echo "tree: $(git -C "$repo" status --porcelain --untracked-files=no -- . ':!slides' | wc -l) tracked files outside slides/ modified"
  echo "cpus: $(nproc)"
  echo "load before: $(cut -d' ' -f1-3 /proc/loadavg)"
} >"$data/bench-meta.txt.new"

run e2e e2e
# The same on a tmpfs: what the actor itself costs, without the disk's fsync.
run e2e-tmpfs e2e --dir /dev/shm
run bus bus
run faults faults
echo "load after: $(cut -d' ' -f1-3 /proc/loadavg)" >>"$data/bench-meta.txt.new"
mv "$data/bench-meta.txt.new" "$data/bench-meta.txt"
