#!/usr/bin/env bash
# Soak: CLIENTS concurrent clients for DURATION seconds through modelgate in
# front of the real distribution registry, all on 127.0.0.1. The mix:
# manifest GETs by tag and by digest, warm blob GETs, Range GETs, cold blobs
# (each fetched once) and pulls the policy denies. Prints request counts,
# unexpected errors (must be 0), p50/p99 latency, and modelgate's RSS and
# open file descriptors after warm-up and at the end.
#
#   benches/soak.sh            (CLIENTS=200 DURATION=60 COLD=3000 to tune)
# Needs: docker-registry curl (apt-get install -y docker-registry curl).
set -euo pipefail
cd "$(dirname "$0")/.."
CLIENTS="${CLIENTS:-200}"; DURATION="${DURATION:-60}"; COLD="${COLD:-3000}"
UP_PORT="${UP_PORT:-5161}"; MG_PORT="${MG_PORT:-5461}"; MG_ADMIN="${MG_ADMIN:-9461}"
W="${BENCH_DIR:-/tmp/modelgate-soak}"
for t in docker-registry curl; do command -v "$t" >/dev/null || { echo "missing $t: apt-get install -y docker-registry curl" >&2; exit 1; }; done
cargo build --release --quiet --bin modelgate --example soak
BIN="$PWD/target/release/modelgate"; SOAK="$PWD/target/release/examples/soak"
rm -rf "$W"; mkdir -p "$W"/{up,mg}
PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; }
trap cleanup EXIT
wait_http() { for _ in $(seq 200); do curl -s -o /dev/null "$1" && return 0; sleep 0.05; done; echo "timeout: $1" >&2; return 1; }
cat > "$W/up/config.yml" <<YML
version: 0.1
log:
  level: error
  accesslog:
    disabled: true
storage:
  filesystem:
    rootdirectory: $W/up/data
http:
  addr: 127.0.0.1:$UP_PORT
  secret: modelgate-soak
YML
docker-registry serve "$W/up/config.yml" >>"$W/up/log" 2>&1 </dev/null & PIDS+=($!)
wait_http "http://127.0.0.1:$UP_PORT/v2/"
"$SOAK" seed "http://127.0.0.1:$UP_PORT" "$COLD"
cat > "$W/mg/policy.toml" <<'TOML'
default = "allow"
[[rules]]
name = "no-denied"
repositories = ["up/denied/**"]
[rules.labels]
"model.version" = { semver = true }
TOML
cat > "$W/mg/modelgate.toml" <<TOML
[server]
listen = "127.0.0.1:$MG_PORT"
admin_listen = "127.0.0.1:$MG_ADMIN"
[policy]
file = "$W/mg/policy.toml"
[cache]
dir = "$W/mg/cache"
[audit]
path = "$W/mg/audit.log"
[[upstreams]]
name = "up"
url = "http://127.0.0.1:$UP_PORT"
default = true
TOML
MODELGATE_LOG=warn "$BIN" serve --config "$W/mg/modelgate.toml" >>"$W/mg/log" 2>&1 </dev/null & MG_PID=$!; PIDS+=("$MG_PID")
wait_http "http://127.0.0.1:$MG_ADMIN/readyz"
"$SOAK" run "http://127.0.0.1:$MG_PORT" "$MG_PID" "$CLIENTS" "$DURATION" "$COLD"
