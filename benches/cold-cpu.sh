#!/usr/bin/env bash
# CPU-seconds per cold GiB, modelgate side by side with the distribution
# proxy (the peer), everything on 127.0.0.1, in one run:
#   upstream  : distribution registry (Debian docker-registry)      :$UP_PORT
#   peer      : distribution registry in proxy mode                 :$PEER_PORT
#   modelgate : this repository's release build                     :$MG_PORT
# Each pair of runs pulls one cold ${SIZE_MIB} MiB blob with curl through a
# fresh peer and a fresh modelgate (alternating which goes first). A
# server's cost is its user+system CPU time from /proc/<pid>/stat, read once
# it is idle again (the peer fetches the blob a second time to cache it
# after its client is served; modelgate commits its file). Also printed:
# wall time, upstream blob GETs, and how many bytes modelgate served its
# client from the file instead of from memory (a leader that fell behind).
#
#   benches/cold-cpu.sh              (PAIRS=3 SIZE_MIB=1024 to tune)
#   MODELGATE_BIN=/path/to/modelgate benches/cold-cpu.sh   (measure another build)
#   BASELINE_BIN=/path/to/old/modelgate benches/cold-cpu.sh   (before/after: a third
#                                     server in every pair, the old build, same conditions)
#   PERF=1 benches/cold-cpu.sh       (also `perf record -g` each cold pull into
#                                     $BENCH_DIR/perf-{peer,mg}-N.data; read with `perf report -i`)
#   NOISE=1 benches/cold-cpu.sh      (a busy loop on one core while each client pulls:
#                                     a noisy machine, as CI runners are)
# Needs: docker-registry curl bc.
set -euo pipefail
cd "$(dirname "$0")/.."
PAIRS="${PAIRS:-3}"; SIZE_MIB="${SIZE_MIB:-1024}"
UP_PORT="${UP_PORT:-5161}"; PEER_PORT="${PEER_PORT:-5261}"; MG_PORT="${MG_PORT:-5461}"; MG_ADMIN="${MG_ADMIN:-9461}"
W="${BENCH_DIR:-/tmp/modelgate-cold-cpu}"
REPO=bench/cold
for t in docker-registry curl bc; do command -v "$t" >/dev/null || { echo "missing $t: apt-get install -y docker-registry curl bc" >&2; exit 1; }; done
if [ -z "${MODELGATE_BIN:-}" ]; then cargo build --release --quiet; fi
BIN="${MODELGATE_BIN:-$PWD/target/release/modelgate}"
rm -rf "$W"; mkdir -p "$W"/{up,peer,mg}
PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; }
trap cleanup EXIT
TICK=$(getconf CLK_TCK)
wait_http() { for _ in $(seq 200); do curl -s -o /dev/null "$1" && return 0; sleep 0.05; done; echo "timeout: $1" >&2; return 1; }
cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }   # utime + stime of the process
# Wait until the process used under 2 ticks in 0.5 s (idle), at most 60 s.
until_idle() { local a b; for _ in $(seq 120); do a=$(cpu_ticks "$1"); sleep 0.5; b=$(cpu_ticks "$1"); [ $((b - a)) -lt 2 ] && return 0; done; }
registry_conf() { # dir port [proxy-remote]
  printf 'version: 0.1\nlog:\n  level: error\n  accesslog:\n    disabled: false\nstorage:\n  filesystem:\n    rootdirectory: %s/data\nhttp:\n  addr: 127.0.0.1:%s\n  secret: modelgate-bench\n' "$1" "$2" > "$1/config.yml"
  if [ -n "${3:-}" ]; then printf 'proxy:\n  remoteurl: %s\n' "$3" >> "$1/config.yml"; fi
}
start_registry() { docker-registry serve "$1/config.yml" >>"$1/log" 2>&1 </dev/null & LAST=$!; PIDS+=("$LAST"); wait_http "http://127.0.0.1:$2/v2/"; }
printf '[server]\nlisten = "127.0.0.1:%s"\nadmin_listen = "127.0.0.1:%s"\n[cache]\ndir = "%s/mg/cache"\n[[upstreams]]\nname = "bench.local"\nurl = "http://127.0.0.1:%s"\ndefault = true\n' \
  "$MG_PORT" "$MG_ADMIN" "$W" "$UP_PORT" > "$W/mg/modelgate.toml"

registry_conf "$W/up" "$UP_PORT"; start_registry "$W/up" "$UP_PORT"
registry_conf "$W/peer" "$PEER_PORT" "http://127.0.0.1:$UP_PORT"
head -c $((SIZE_MIB * 1024 * 1024)) /dev/urandom > "$W/layer.bin"
LAYER="sha256:$(sha256sum "$W/layer.bin" | cut -d' ' -f1)"
loc=$(curl -sf -X POST -D - -o /dev/null "http://127.0.0.1:$UP_PORT/v2/$REPO/blobs/uploads/" | tr -d '\r' | awk -F': ' 'tolower($1)=="location"{print $2}')
case "$loc" in http*) ;; *) loc="http://127.0.0.1:$UP_PORT$loc";; esac
case "$loc" in *\?*) loc="$loc&digest=$LAYER";; *) loc="$loc?digest=$LAYER";; esac
curl -sf -X PUT -H 'Content-Type: application/octet-stream' -T "$W/layer.bin" "$loc" -o /dev/null
rm -f "$W/layer.bin"
up_gets() { grep -c "\"GET /v2/$REPO/blobs/$LAYER" "$W/up/log" || true; }
served_from_file() { curl -s "http://127.0.0.1:$MG_ADMIN/metrics" | awk '/^modelgate_bytes_served_total\{source="cache"\}/{print $2; f=1} END{if(!f) print 0}'; }

# one_cold NAME PAIR -> "cpu_seconds wall_seconds upstream_gets [file_bytes]"
one_cold() {
  local pid port g0 wall c0 c1 extra=""
  rm -rf "$W/peer/data" "$W/mg/cache"
  if [ "$1" = peer ]; then start_registry "$W/peer" "$PEER_PORT"; pid=$LAST; port=$PEER_PORT
  else local bin="$BIN"; [ "$1" = base ] && bin="$BASELINE_BIN"
       MODELGATE_LOG=warn "$bin" serve --config "$W/mg/modelgate.toml" >>"$W/mg/log" 2>&1 </dev/null & pid=$!; PIDS+=("$pid"); port=$MG_PORT
       wait_http "http://127.0.0.1:$MG_ADMIN/readyz"; fi
  until_idle "$pid"; c0=$(cpu_ticks "$pid"); g0=$(up_gets)
  local perf_pid=""
  if [ -n "${PERF:-}" ]; then perf record -q -g -F 999 -p "$pid" -o "$W/perf-$1-$2.data" >/dev/null 2>&1 & perf_pid=$!; sleep 0.5; fi
  local noise_pid=""
  if [ -n "${NOISE:-}" ]; then ( while :; do :; done ) & noise_pid=$!; fi
  wall=$(curl -sf -o /dev/null -w '%{time_total}' "http://127.0.0.1:$port/v2/$REPO/blobs/$LAYER")
  if [ -n "$noise_pid" ]; then kill "$noise_pid"; wait "$noise_pid" 2>/dev/null || true; fi
  until_idle "$pid"; c1=$(cpu_ticks "$pid")
  if [ -n "$perf_pid" ]; then kill -INT "$perf_pid"; wait "$perf_pid" 2>/dev/null || true; fi
  [ "$1" != peer ] && extra=" $(served_from_file)"
  kill "$pid"; wait "$pid" 2>/dev/null || true
  echo "$(echo "scale=2; ($c1 - $c0) / $TICK" | bc) $wall $(( $(up_gets) - g0 ))$extra"
}
median() { sort -g | awk '{a[NR]=$1} END{print (NR%2)?a[(NR+1)/2]:(a[NR/2]+a[NR/2+1])/2}'; }
GIB=$(echo "scale=4; $SIZE_MIB / 1024" | bc)
echo "## cold ${SIZE_MIB} MiB blob, CPU-seconds per GiB ($(date -u +%FT%TZ), $(nproc) cores, $BIN)"
echo
if [ -n "${BASELINE_BIN:-}" ]; then
  echo "| pair | peer CPU s/GiB | peer wall s | peer upstream GETs | baseline CPU s/GiB | baseline wall s | modelgate CPU s/GiB | modelgate wall s | modelgate upstream GETs | bytes served from file | CPU peer/modelgate |"
  echo "|---|---|---|---|---|---|---|---|---|---|---|"
else
  echo "| pair | peer CPU s/GiB | peer wall s | peer upstream GETs | modelgate CPU s/GiB | modelgate wall s | modelgate upstream GETs | bytes served from file | CPU peer/modelgate |"
  echo "|---|---|---|---|---|---|---|---|---|"
fi
P_CPU=(); M_CPU=(); B_CPU=(); P_WALL=(); M_WALL=(); B_WALL=()
per_gib() { echo "scale=2; $1 / $GIB" | bc; }
for i in $(seq "$PAIRS"); do
  order="peer mg"; [ $((i % 2)) -eq 0 ] && order="mg peer"
  [ -n "${BASELINE_BIN:-}" ] && { [ $((i % 2)) -eq 1 ] && order="peer base mg" || order="mg base peer"; }
  for who in $order; do
    case $who in
      peer) read -r pc pw pg <<<"$(one_cold peer "$i")";;
      base) read -r bc bw _ _ <<<"$(one_cold base "$i")";;
      mg) read -r mc mw mgg mf <<<"$(one_cold mg "$i")";;
    esac
  done
  pc=$(per_gib "$pc"); mc=$(per_gib "$mc"); P_CPU+=("$pc"); M_CPU+=("$mc"); P_WALL+=("$pw"); M_WALL+=("$mw")
  if [ -n "${BASELINE_BIN:-}" ]; then
    bc=$(per_gib "$bc"); B_CPU+=("$bc"); B_WALL+=("$bw")
    echo "| $i | $pc | $pw | $pg | $bc | $bw | $mc | $mw | $mgg | $mf | $(echo "scale=2; $pc / $mc" | bc)x |"
  else
    echo "| $i | $pc | $pw | $pg | $mc | $mw | $mgg | $mf | $(echo "scale=2; $pc / $mc" | bc)x |"
  fi
done
pm=$(printf '%s\n' "${P_CPU[@]}" | median); mm=$(printf '%s\n' "${M_CPU[@]}" | median)
pw=$(printf '%s\n' "${P_WALL[@]}" | median); mw=$(printf '%s\n' "${M_WALL[@]}" | median)
echo
echo "median: peer $pm CPU s/GiB, $pw s wall; modelgate $mm CPU s/GiB, $mw s wall; CPU peer/modelgate $(echo "scale=2; $pm / $mm" | bc)x, wall peer/modelgate $(echo "scale=2; $pw / $mw" | bc)x"
if [ -n "${BASELINE_BIN:-}" ]; then
  bm=$(printf '%s\n' "${B_CPU[@]}" | median); bw=$(printf '%s\n' "${B_WALL[@]}" | median)
  echo "baseline ($BASELINE_BIN): $bm CPU s/GiB, $bw s wall; modelgate/baseline CPU $(echo "scale=2; $mm / $bm" | bc)x, wall $(echo "scale=2; $mw / $bw" | bc)x"
fi
