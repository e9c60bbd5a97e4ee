#!/usr/bin/env bash
# The media plane and rtpengine (Debian rtpengine-daemon, userspace, one worker thread) driven by
# the same client over the same control protocol: rtp-load sets up every call with ng offer and
# answer and tears it down with delete, against the media plane's ng listener and then against
# rtpengine's, in one run on one machine. Each relay in turn is pinned to CPU 1, rtp-load to CPU 0.
#
# For each number of calls in CALLS (default "500 1000"): relayed G.711-sized RTP both ways, 50
# packets/s per direction per call, for DURATION (default 10) seconds. Then TRANSCODED (default
# 40) calls of PCMU<->G.722 through the ng codec flags. rtp-load prints how long the set-up of all
# calls took (ng offer+answer per call, one request at a time), the loss, the latency percentiles
# and the relay's CPU per packet; each result is one JSON line in $OUT (default
# target/bench/ng-<date>.jsonl) and a markdown table is printed at the end. The media plane is
# also run with the same calls set up over gRPC, for reference (the relay path is the same).
#
#   bash scripts/bench-ng.sh
#   CALLS=200 DURATION=3 TRANSCODED=0 bash scripts/bench-ng.sh
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$HOME/.cargo/bin:$PATH"
CALLS=${CALLS:-"500 1000"}
DURATION=${DURATION:-10}
TRANSCODED=${TRANSCODED:-40}
OUT=${OUT:-target/bench/ng-$(date -u +%Y%m%dT%H%M%SZ).jsonl}
MP_NG=127.0.0.1:2224
RTPE_NG=127.0.0.1:2223
mkdir -p "$(dirname "$OUT")" target/bench
if ! command -v rtpengine >/dev/null; then
  echo "bench-ng: installing rtpengine-daemon" >&2
  SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq rtpengine-daemon >/dev/null
fi
[ "${NO_BUILD:-0}" = 1 ] || cargo build --release --locked -p media-plane -p bench

# Waits until the ng listener on $1 (IP:port) answers ping.
wait_ng() {
  for _ in $(seq 1 100); do
    python3 - "${1%:*}" "${1#*:}" <<'PY' 2>/dev/null && return 0
import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.settimeout(0.2)
s.sendto(b"ready d7:command4:pinge", (sys.argv[1], int(sys.argv[2])))
sys.exit(0 if s.recv(100) == b"ready d6:result4:ponge" else 1)
PY
    sleep 0.1
  done
  return 1
}

# The same rtp-load command line for both relays: only the ng address and the pid differ.
load() { # ng address, relay pid, label, rtp-load args…
  local ng=$1 relay=$2 label=$3; shift 3
  taskset -c 0 target/release/rtp-load --peer rtpengine --ng "$ng" --relay-pid "$relay" --cpu 0 --sockets 2 \
    --duration "$DURATION" --label "$label" "$@" 2> >(tee -a target/bench/ng-rtp-load.log >&2) | tee -a "$OUT" || true
}

run_media_plane() { # label, rtp-load args…
  local label=$1; shift
  target/release/media-plane --grpc-listen 127.0.0.1:9190 --metrics-listen "" --ng-listen "$MP_NG" --ports 30000-39999 \
    --cores 1 --first-cpu 1 2>target/bench/media-plane.log &
  local relay=$!
  wait_ng "$MP_NG" || { echo "bench-ng: the media plane's ng listener did not answer" >&2; tail -5 target/bench/media-plane.log >&2; exit 1; }
  load "$MP_NG" "$relay" "$label" "$@"
  kill $relay; wait $relay 2>/dev/null || true
}

# For reference, the media plane with the same calls set up over its gRPC API.
run_media_plane_grpc() { # label, rtp-load args…
  local label=$1; shift
  target/release/media-plane --grpc-listen 127.0.0.1:9190 --metrics-listen "" --ng-listen "" --ports 30000-39999 \
    --cores 1 --first-cpu 1 2>target/bench/media-plane.log &
  local relay=$!
  for _ in $(seq 1 100); do (exec 3<>/dev/tcp/127.0.0.1/9190) 2>/dev/null && break; sleep 0.1; done
  taskset -c 0 target/release/rtp-load --grpc http://127.0.0.1:9190 --relay-pid "$relay" --cpu 0 --sockets 2 \
    --duration "$DURATION" --label "$label" "$@" 2> >(tee -a target/bench/ng-rtp-load.log >&2) | tee -a "$OUT" || true
  kill $relay; wait $relay 2>/dev/null || true
}

run_rtpengine() { # label, rtp-load args…
  local label=$1; shift
  taskset -c 1 rtpengine --config-file=bench/rtpengine/rtpengine.conf --config-section=rtpengine \
    --foreground --listen-ng="$RTPE_NG" --port-min=40000 --port-max=59999 >target/bench/rtpengine.log 2>&1 &
  local relay=$!
  wait_ng "$RTPE_NG" || { echo "bench-ng: rtpengine did not answer ping" >&2; tail -5 target/bench/rtpengine.log >&2; exit 1; }
  load "$RTPE_NG" "$relay" "$label" "$@"
  kill $relay; wait $relay 2>/dev/null || true
}

echo "bench-ng: $(nproc) CPUs; rtpengine $(rtpengine --version 2>&1 | sed 's/.*Version: //'); calls $CALLS; transcoded $TRANSCODED" >&2
for n in $CALLS; do
  echo "== $n relayed calls, both set up over ng" >&2
  run_media_plane "media-plane over ng" --calls "$n"
  run_rtpengine "rtpengine over ng" --calls "$n"
  run_media_plane_grpc "media-plane over gRPC (reference)" --calls "$n"
done
if [ "$TRANSCODED" -gt 0 ]; then
  echo "== $TRANSCODED PCMU<->G.722 calls, transcoding asked for with the ng codec flags" >&2
  run_media_plane "media-plane over ng, pcmu-g722" --calls "$TRANSCODED" --codec-a pcmu --codec-b g722
  run_rtpengine "rtpengine over ng, pcmu-g722" --calls "$TRANSCODED" --codec-a pcmu --codec-b g722
fi

python3 - "$OUT" <<'PY'
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1]) if l.startswith("{")]
print(f"\nresults: {sys.argv[1]}")
print("| relay | calls | forwarded pps | loss | p50 µs | p99 µs | relay CPU µs/pkt | relay CPU % core | steal % |")
print("|---|---|---|---|---|---|---|---|---|")
f = lambda v, d=2: "n/a" if v is None else f"{v:.{d}f}"
for r in rows:
    l = r["latency_us"]
    print(f"| {r.get('label')} | {r['calls']} | {r['forwarded_pps']:.0f} | {r['lost']} | {l['p50']:.0f} | {l['p99']:.0f} | {f(r.get('relay_cpu_us_per_pkt'))} | {f(r.get('relay_cpu_pct'),1)} | {f(r.get('steal_pct'))} |")
PY
