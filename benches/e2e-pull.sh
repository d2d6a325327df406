#!/usr/bin/env bash
# End-to-end pull benchmark, everything on 127.0.0.1, side by side in one run:
#   upstream  : distribution registry (Debian docker-registry)      :$UP_PORT
#   peer      : distribution registry in proxy mode (the peer)      :$PEER_PORT
#   modelgate : release build of this repository                    :$MG_PORT
# A 1 GiB single-layer image is pushed to the upstream, then pulled
#   - blob with curl: cold (fresh cache each run) and warm, through peer and modelgate, and direct;
#   - whole image with skopeo: cold and warm, through peer and modelgate, and direct;
#   - manifest GET by tag with wrk (modelgate within tag_ttl vs the peer);
#   - the cost of a policy decision (signature + labels): cold (upstream round trips) and cached;
#   - push of the same image with skopeo: directly to the upstream and through modelgate.
# Prints medians, ratios, upstream blob GET counts per cold pull and modelgate's peak RSS.
#
#   benches/e2e-pull.sh            (RUNS=3 WRK_SECONDS=5 SIZE_MIB=1024 to tune)
# Needs: docker-registry skopeo curl wrk bc (apt-get install -y docker-registry skopeo curl wrk bc).
set -euo pipefail
cd "$(dirname "$0")/.."
RUNS="${RUNS:-3}"; WRK_SECONDS="${WRK_SECONDS:-5}"; SIZE_MIB="${SIZE_MIB:-1024}"
UP_PORT="${UP_PORT:-5151}"; PEER_PORT="${PEER_PORT:-5251}"; MG_PORT="${MG_PORT:-5451}"; MG_ADMIN="${MG_ADMIN:-9451}"
W="${BENCH_DIR:-/tmp/modelgate-bench}"
REPO=bench/model1g; TAG=v1
for t in docker-registry skopeo curl wrk bc; do command -v "$t" >/dev/null || { echo "missing $t: apt-get install -y docker-registry skopeo curl wrk bc" >&2; exit 1; }; done
cargo build --release --quiet
BIN="${MODELGATE_BIN:-$PWD/target/release/modelgate}"   # MODELGATE_BIN: compare another build
mkdir -p "$W"; rm -rf "$W"/{up,peer,mg,pulls}; mkdir -p "$W"/{up,peer,mg,pulls}
PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; }
trap cleanup EXIT

wait_http() { for _ in $(seq 200); do curl -s -o /dev/null "$1" && return 0; sleep 0.05; done; echo "timeout: $1" >&2; return 1; }
registry_conf() { # dir port [proxy-remote]
  cat > "$1/config.yml" <<YML
version: 0.1
log:
  level: error
  accesslog:
    disabled: false
storage:
  filesystem:
    rootdirectory: $1/data
  delete:
    enabled: true
http:
  addr: 127.0.0.1:$2
  secret: modelgate-bench
YML
  if [ -n "${3:-}" ]; then printf 'proxy:\n  remoteurl: %s\n' "$3" >> "$1/config.yml"; fi
}
start_registry() { # dir port -> pid in $LAST
  docker-registry serve "$1/config.yml" >>"$1/log" 2>&1 </dev/null & LAST=$!; PIDS+=("$LAST")
  wait_http "http://127.0.0.1:$2/v2/"
}
PEER_PID=; MG_PID=
start_peer_fresh() {
  [ -n "$PEER_PID" ] && { kill "$PEER_PID"; wait "$PEER_PID" 2>/dev/null || true; }
  rm -rf "$W/peer/data"; start_registry "$W/peer" "$PEER_PORT"; PEER_PID=$LAST
}
cat > "$W/mg/modelgate.toml" <<TOML
[server]
listen = "127.0.0.1:$MG_PORT"
admin_listen = "127.0.0.1:$MG_ADMIN"
allow_anonymous_push = true          # the push case; a closed loopback bench
[cache]
dir = "$W/mg/cache"
tag_ttl = "300s"
[[upstreams]]
name = "bench.local"
url = "http://127.0.0.1:$UP_PORT"
default = true
TOML
start_mg_fresh() {
  [ -n "$MG_PID" ] && { kill "$MG_PID"; wait "$MG_PID" 2>/dev/null || true; }
  rm -rf "$W/mg/cache"
  MODELGATE_LOG=warn "$BIN" serve --config "$W/mg/modelgate.toml" >>"$W/mg/log" 2>&1 </dev/null & MG_PID=$!; PIDS+=("$MG_PID")
  wait_http "http://127.0.0.1:$MG_ADMIN/readyz"
}
hwm_kb() { awk '/^VmHWM/{print $2}' "/proc/$1/status"; }
reset_hwm() { echo 5 > "/proc/$1/clear_refs" 2>/dev/null || true; }
median() { sort -g | awk '{a[NR]=$1} END{print (NR%2)?a[(NR+1)/2]:(a[NR/2]+a[NR/2+1])/2}'; }
up_blob_gets() { grep -c "\"GET /v2/$REPO/blobs/$LAYER" "$W/up/log" || true; }

# --- upstream with a 1 GiB image ------------------------------------------------
registry_conf "$W/up" "$UP_PORT"; start_registry "$W/up" "$UP_PORT"
registry_conf "$W/peer" "$PEER_PORT" "http://127.0.0.1:$UP_PORT"
echo "making a ${SIZE_MIB} MiB layer..."
head -c $((SIZE_MIB * 1024 * 1024)) /dev/urandom > "$W/layer.bin"
LAYER="sha256:$(sha256sum "$W/layer.bin" | cut -d' ' -f1)"; LSIZE=$(stat -c %s "$W/layer.bin")
push_blob() { # file digest
  local loc; loc=$(curl -sf -X POST -D - -o /dev/null "http://127.0.0.1:$UP_PORT/v2/$REPO/blobs/uploads/" | tr -d '\r' | awk -F': ' 'tolower($1)=="location"{print $2}')
  case "$loc" in http*) ;; *) loc="http://127.0.0.1:$UP_PORT$loc";; esac
  case "$loc" in *\?*) loc="$loc&digest=$2";; *) loc="$loc?digest=$2";; esac
  curl -sf -X PUT -H 'Content-Type: application/octet-stream' -T "$1" "$loc" -o /dev/null
}
push_blob "$W/layer.bin" "$LAYER"
printf '{"architecture":"amd64","os":"linux","config":{"Labels":{"model.version":"v1.0.0"}},"rootfs":{"type":"layers","diff_ids":["%s"]}}' "$LAYER" > "$W/config.json"
CONFIG="sha256:$(sha256sum "$W/config.json" | cut -d' ' -f1)"; push_blob "$W/config.json" "$CONFIG"
printf '{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"%s","size":%s},"layers":[{"mediaType":"application/vnd.oci.image.layer.v1.tar","digest":"%s","size":%s}]}' \
  "$CONFIG" "$(stat -c %s "$W/config.json")" "$LAYER" "$LSIZE" > "$W/manifest.json"
curl -sf -X PUT -H 'Content-Type: application/vnd.oci.image.manifest.v1+json' --data-binary @"$W/manifest.json" "http://127.0.0.1:$UP_PORT/v2/$REPO/manifests/$TAG" -o /dev/null
echo "image $REPO:$TAG layer $LAYER ($LSIZE bytes)"
start_peer_fresh; start_mg_fresh
idle() { local a b; a=($(head -1 /proc/stat)); sleep 1; b=($(head -1 /proc/stat)); local ta=0 tb=0 i; for i in 1 2 3 4 5 6 7 8; do ta=$((ta+a[i])); tb=$((tb+b[i])); done; echo $((100*(b[4]-a[4])/(tb-ta))); }
echo "CPU idle before: $(idle)%"

# The peer keeps working after its client is served (it fetches the blob
# again to cache it): wait until the machine is quiet before the next case.
settle() { for _ in $(seq 10); do [ "$(idle)" -ge 90 ] && return 0; done; }

# --- blob with curl -------------------------------------------------------------
curl_blob() { curl -sf -o /dev/null -w '%{time_total}\n' "http://127.0.0.1:$1/v2/$REPO/blobs/$LAYER"; }
declare -A T
for i in $(seq "$RUNS"); do T[direct]+="$(curl_blob "$UP_PORT") "; done
PEER_COLD_GETS=(); MG_COLD_GETS=(); MG_HWM=0
for i in $(seq "$RUNS"); do
  start_peer_fresh; g0=$(up_blob_gets); T[peer_cold]+="$(curl_blob "$PEER_PORT") "; settle; PEER_COLD_GETS+=($(( $(up_blob_gets) - g0 )))
  start_mg_fresh; reset_hwm "$MG_PID"; g0=$(up_blob_gets); T[mg_cold]+="$(curl_blob "$MG_PORT") "; MG_COLD_GETS+=($(( $(up_blob_gets) - g0 )))
  h=$(hwm_kb "$MG_PID"); [ "$h" -gt "$MG_HWM" ] && MG_HWM=$h
done
for i in $(seq "$RUNS"); do T[peer_warm]+="$(curl_blob "$PEER_PORT") "; T[mg_warm]+="$(curl_blob "$MG_PORT") "; done
reset_hwm "$MG_PID"; curl_blob "$MG_PORT" >/dev/null; MG_WARM_HWM=$(hwm_kb "$MG_PID")

# --- whole image with skopeo ----------------------------------------------------
skopeo_pull() { local d="$W/pulls/p"; rm -rf "$d"; local s e; s=$(date +%s.%N)
  skopeo --insecure-policy copy --quiet --src-tls-verify=false "docker://127.0.0.1:$1/$REPO:$TAG" "dir:$d"; e=$(date +%s.%N); echo "$e - $s" | bc; }
for i in $(seq "$RUNS"); do
  T[sk_direct]+="$(skopeo_pull "$UP_PORT") "
  start_peer_fresh; T[sk_peer_cold]+="$(skopeo_pull "$PEER_PORT") "; settle
  start_mg_fresh; T[sk_mg_cold]+="$(skopeo_pull "$MG_PORT") "
  T[sk_peer_warm]+="$(skopeo_pull "$PEER_PORT") "; T[sk_mg_warm]+="$(skopeo_pull "$MG_PORT") "
done
rm -rf "$W/pulls/p"

# --- manifest by tag --------------------------------------------------------------
ACCEPT='application/vnd.oci.image.manifest.v1+json'
wrk_rps() { curl -sf -o /dev/null -H "Accept: $ACCEPT" "http://127.0.0.1:$1/v2/$REPO/manifests/$TAG"
  wrk -t2 -c32 -d"${WRK_SECONDS}s" -H "Accept: $ACCEPT" "http://127.0.0.1:$1/v2/$REPO/manifests/$TAG" | awk '/Requests\/sec/{print $2}'; }
RPS_PEER=$(wrk_rps "$PEER_PORT"); RPS_MG=$(wrk_rps "$MG_PORT"); RPS_UP=$(wrk_rps "$UP_PORT")

# --- policy decision cost ---------------------------------------------------------
rm -f "$W/mg/release.key" "$W/mg/release.pub"
"$BIN" keygen --out "$W/mg/release" >/dev/null
"$BIN" sign --plain-http --key "$W/mg/release.key" "127.0.0.1:$UP_PORT/$REPO:$TAG" >/dev/null
cat > "$W/mg/policy.toml" <<POL
[keys]
release = "release.pub"
[[rules]]
name = "bench"
repositories = ["bench.local/bench/**"]
[rules.signatures]
keys = ["release"]
[rules.labels]
"model.version" = { semver = true }
POL
printf '[policy]\nfile = "%s"\n[audit]\npath = "%s"\n' "$W/mg/policy.toml" "$W/mg/audit.log" >> "$W/mg/modelgate.toml"
DECIDE_COLD=""; DECIDE_WARM=""
for i in $(seq "$RUNS"); do
  start_mg_fresh
  DECIDE_COLD+="$(curl -sf -o /dev/null -w '%{time_total}\n' -H "Accept: $ACCEPT" "http://127.0.0.1:$MG_PORT/v2/$REPO/manifests/$TAG") "
  DECIDE_WARM+="$(curl -sf -o /dev/null -w '%{time_total}\n' -H "Accept: $ACCEPT" "http://127.0.0.1:$MG_PORT/v2/$REPO/manifests/$TAG") "
done
RPS_MG_POLICY=$(wrk_rps "$MG_PORT")

# --- push -----------------------------------------------------------------------------
# The layer pushed with curl (POST, then one streamed PUT ?digest=) into a new
# repository each time, so nothing is mounted or skipped: every byte travels.
# (skopeo would mount the blob from where it saw it before and push nothing.)
push_blob_to() { # port repo -> seconds
  local loc s e; s=$(date +%s.%N)
  loc=$(curl -sf -X POST -D - -o /dev/null "http://127.0.0.1:$1/v2/$2/blobs/uploads/" | tr -d '\r' | awk -F': ' 'tolower($1)=="location"{print $2}')
  case "$loc" in http*) ;; *) loc="http://127.0.0.1:$1$loc";; esac
  case "$loc" in *\?*) loc="$loc&digest=$LAYER";; *) loc="$loc?digest=$LAYER";; esac
  curl -sf -X PUT -H 'Content-Type: application/octet-stream' -T "$W/layer.bin" "$loc" -o /dev/null
  e=$(date +%s.%N); echo "$e - $s" | bc; }
for i in $(seq "$RUNS"); do
  T[push_direct]+="$(push_blob_to "$UP_PORT" "push/direct$i") "
  T[push_mg]+="$(push_blob_to "$MG_PORT" "push/mg$i") "
done
rm -f "$W/layer.bin"
echo "CPU idle after: $(idle)%"

m() { echo "${T[$1]}" | tr ' ' '\n' | grep . | median; }
r() { echo "scale=2; $1 / $2" | bc; }
mib_s() { echo "scale=0; $LSIZE / 1048576 / $1" | bc; }
cat <<OUT

## modelgate e2e pull benchmark ($(date -u +%FT%TZ), $(nproc) cores, ${SIZE_MIB} MiB layer, median of $RUNS)

| case | direct upstream | peer (distribution proxy) | modelgate | peer / modelgate time |
|---|---|---|---|---|
| curl blob cold | $(m direct) s | $(m peer_cold) s ($(mib_s "$(m peer_cold)") MiB/s) | $(m mg_cold) s ($(mib_s "$(m mg_cold)") MiB/s) | $(r "$(m peer_cold)" "$(m mg_cold)")x |
| curl blob warm | | $(m peer_warm) s ($(mib_s "$(m peer_warm)") MiB/s) | $(m mg_warm) s ($(mib_s "$(m mg_warm)") MiB/s) | $(r "$(m peer_warm)" "$(m mg_warm)")x |
| skopeo image cold | $(m sk_direct) s | $(m sk_peer_cold) s | $(m sk_mg_cold) s | $(r "$(m sk_peer_cold)" "$(m sk_mg_cold)")x |
| skopeo image warm | | $(m sk_peer_warm) s | $(m sk_mg_warm) s | $(r "$(m sk_peer_warm)" "$(m sk_mg_warm)")x |
| manifest GET by tag (wrk -t2 -c32 -d${WRK_SECONDS}s) | $RPS_UP req/s | $RPS_PEER req/s | $RPS_MG req/s | modelgate/peer $(r "$RPS_MG" "$RPS_PEER")x |
| push of the ${SIZE_MIB} MiB layer, curl POST + PUT (new repository each run) | $(m push_direct) s | | $(m push_mg) s | modelgate/direct time $(r "$(m push_mg)" "$(m push_direct)")x |

- policy decision (signature + label, manifest GET by tag): cold $(echo "$DECIDE_COLD" | tr ' ' '\n' | grep . | median) s (fresh modelgate: manifest, .sig tag, payload, referrers, config fetched from upstream), cached $(echo "$DECIDE_WARM" | tr ' ' '\n' | grep . | median) s; wrk by tag with the policy: $RPS_MG_POLICY req/s (without: $RPS_MG)
- upstream blob GETs per cold curl pull: peer ${PEER_COLD_GETS[*]}; modelgate ${MG_COLD_GETS[*]}
- modelgate peak RSS (VmHWM): $((MG_HWM / 1024)) MiB during cold 1 GiB pulls, $((MG_WARM_HWM / 1024)) MiB during a warm one
OUT
