#!/usr/bin/env bash
# Transcoding benchmark, media plane against rtpengine (Debian rtpengine-daemon, userspace, one
# worker thread), in one run on one machine: for each codec pair in PAIRS (default
# "pcmu:opus pcmu:g722 g722:opus"), each relay in turn pinned to CPU 1, rtp-load pinned to CPU 0,
# searches the largest number of transcoded calls with 0 loss and p99 latency under MAX_P99_US
# (default 20000: the relay's added delay, one way). Side A sends 20 ms frames of the first codec,
# side B of the second; both directions are transcoded. Fixed-size runs at FIXED calls (default
# 40, under both relays' saturation) measure CPU per packet at equal load.
#
#   bash scripts/bench-transcode.sh
#   PAIRS="pcmu:opus" DURATION=5 bash scripts/bench-transcode.sh
#
# Every result is one JSON line in $OUT (default target/bench/transcode-<date>.jsonl); a markdown
# table is printed at the end. OPUS_COMPLEXITY (default 10, libopus's default, which rtpengine's
# encoder uses) is given to the media plane's Opus encoders.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/setup.sh
export PATH="$HOME/.cargo/bin:$PATH"
PAIRS=${PAIRS:-"pcmu:opus pcmu:g722 g722:opus"}
DURATION=${DURATION:-5}
FIXED=${FIXED:-40}
MAX_P99_US=${MAX_P99_US:-20000}
OPUS_COMPLEXITY=${OPUS_COMPLEXITY:-10}
OUT=${OUT:-target/bench/transcode-$(date -u +%Y%m%dT%H%M%SZ).jsonl}
GRPC=127.0.0.1:9190
NG=127.0.0.1:2223
mkdir -p "$(dirname "$OUT")"
if ! command -v rtpengine >/dev/null; then
  echo "bench-transcode: installing rtpengine-daemon" >&2
  SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq rtpengine-daemon >/dev/null
fi
cargo build --release --locked -p media-plane -p bench

wait_tcp() { for _ in $(seq 1 100); do (exec 3<>/dev/tcp/127.0.0.1/"$1") 2>/dev/null && return 0; sleep 0.1; done; return 1; }

run_media_plane() { # label, rtp-load args…
  local label=$1; shift
  target/release/media-plane --grpc-listen "$GRPC" --ports 30000-39999 --cores 1 --first-cpu 1 2>target/bench/media-plane.log &
  local relay=$!
  wait_tcp 9190 || { echo "bench-transcode: media-plane did not start" >&2; tail -5 target/bench/media-plane.log >&2; exit 1; }
  taskset -c 0 target/release/rtp-load --grpc "http://$GRPC" --relay-pid "$relay" --cpu 0 --sockets 2 \
    --duration "$DURATION" --opus-complexity "$OPUS_COMPLEXITY" --label "$label" "$@" | tee -a "$OUT" || true
  kill $relay; wait $relay 2>/dev/null || true
}

run_rtpengine() { # label, rtp-load args…
  local label=$1; shift
  taskset -c 1 rtpengine --config-file=bench/rtpengine/rtpengine.conf --config-section=rtpengine \
    --foreground --listen-ng="$NG" --port-min=40000 --port-max=59999 >target/bench/rtpengine.log 2>&1 &
  local started=$!
  sleep 1
  # The daemon (the process doing the work) may be a child of what was started.
  local relay; relay=$(pgrep -nx rtpengine || echo "$started")
  taskset -c 0 target/release/rtp-load --peer rtpengine --ng "$NG" --relay-pid "$relay" --cpu 0 --sockets 2 \
    --duration "$DURATION" --label "$label" "$@" | tee -a "$OUT" || true
  kill "$relay" "$started" 2>/dev/null; wait "$started" 2>/dev/null || true
  pkill -x rtpengine 2>/dev/null || true
}

echo "bench-transcode: $(nproc) CPUs; rtpengine $(rtpengine --version 2>&1 | sed 's/.*Version: //'); pairs $PAIRS" >&2
for pair in $PAIRS; do
  a=${pair%:*} b=${pair#*:}
  echo "== $a <-> $b: $FIXED calls each" >&2
  run_media_plane "media-plane $a-$b" --calls "$FIXED" --codec-a "$a" --codec-b "$b"
  run_rtpengine "rtpengine $a-$b" --calls "$FIXED" --codec-a "$a" --codec-b "$b"
  echo "== $a <-> $b: search (0 loss, p99 < $MAX_P99_US µs)" >&2
  run_media_plane "media-plane $a-$b" --search --calls 50 --max-calls 1600 --resolution 25 --max-p99-us "$MAX_P99_US" --codec-a "$a" --codec-b "$b"
  run_rtpengine "rtpengine $a-$b" --search --calls 25 --max-calls 1600 --resolution 10 --max-p99-us "$MAX_P99_US" --codec-a "$a" --codec-b "$b"
done

python3 - "$OUT" <<'PY'
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1]) if l.startswith("{")]
print(f"\nresults: {sys.argv[1]}")
print("| relay, codecs | mode | calls | forwarded pps | loss | p50 µs | p99 µs | relay CPU µs/pkt | relay CPU % core | CPU ms per call-second | steal % |")
print("|---|---|---|---|---|---|---|---|---|---|---|")
for r in rows:
    if r.get("mode") == "search-trial":
        continue
    l = r["latency_us"]
    f = lambda v, d=2: "n/a" if v is None else f"{v:.{d}f}"
    cpu = r.get("relay_cpu_s")
    per_call_s = None if cpu is None or not r["calls"] else cpu * 1000 / (r["calls"] * r["duration_s"])
    print(f"| {r.get('label')} | {r.get('mode')} | {r['calls']} | {r['forwarded_pps']:.0f} | {r['lost']} | {l['p50']:.0f} | {l['p99']:.0f} | {f(r.get('relay_cpu_us_per_pkt'))} | {f(r.get('relay_cpu_pct'),1)} | {f(per_call_s)} | {f(r.get('steal_pct'))} |")
PY
