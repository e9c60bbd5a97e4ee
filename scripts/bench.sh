#!/usr/bin/env bash
# Relay benchmark, media plane (UDP backend) against rtpengine (userspace), in one run on one
# machine: for each call count in CALLS_LIST (default "100 500 1000" = 10k, 50k, 100k packets/s),
# each relay in turn, pinned to CPU 1 with one worker, rtp-load pinned to CPU 0. Then, if SEARCH=1,
# the largest call count with 0 loss and p99 < 1 ms for each. Every result is one JSON line in
# $OUT (default target/bench/relay-<date>.jsonl); a markdown table of them is printed at the end.
#
#   bash scripts/bench.sh                      # fixed rates, DURATION=10 s each
#   SEARCH=1 CALLS_LIST="1000" bash scripts/bench.sh
#   GEN_ARGS="--tick-us 0" bash scripts/bench.sh   # extra rtp-load arguments for every run (here: busy pacing)
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/setup.sh
export PATH="$HOME/.cargo/bin:$PATH"
CALLS_LIST=${CALLS_LIST:-"100 500 1000"}
DURATION=${DURATION:-10}
REPEAT=${REPEAT:-1}
SEARCH=${SEARCH:-0}
read -r -a GEN_ARGS <<<"${GEN_ARGS:-}"
OUT=${OUT:-target/bench/relay-$(date -u +%Y%m%dT%H%M%SZ).jsonl}
GRPC=127.0.0.1:9190
mkdir -p "$(dirname "$OUT")"
cargo build --release --locked -p media-plane -p bench

run_media_plane() { # args: rtp-load args…
  target/release/media-plane --grpc-listen "$GRPC" --ports 30000-39999 --cores 1 --first-cpu 1 2>target/bench/media-plane.log &
  local relay=$!
  for _ in $(seq 1 100); do (exec 3<>/dev/tcp/127.0.0.1/9190) 2>/dev/null && break; sleep 0.1; done
  taskset -c 0 target/release/rtp-load --grpc "http://$GRPC" --relay-pid "$relay" --cpu 0 --sockets 2 \
    --duration "$DURATION" --label media-plane-udp "${GEN_ARGS[@]}" "$@" | tee -a "$OUT" || true
  kill $relay; wait $relay 2>/dev/null || true
}
run_rtpengine() { # args: rtp-load args…
  NO_BUILD=1 DURATION="$DURATION" bash scripts/bench-rtpengine.sh "${GEN_ARGS[@]}" "$@" | tee -a "$OUT" || true
}

for r in $(seq 1 "$REPEAT"); do
  for calls in $CALLS_LIST; do
    echo "== round $r: $calls calls" >&2
    run_media_plane --calls "$calls"
    CALLS=$calls run_rtpengine
  done
done
if [ "$SEARCH" = 1 ]; then
  run_media_plane --search --calls 250 --max-calls 4000 --resolution 100
  CALLS=250 run_rtpengine --search --max-calls 4000 --resolution 100
fi

python3 - "$OUT" <<'PY'
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1]) if l.startswith("{")]
print(f"\nresults: {sys.argv[1]}")
print("| relay | mode | calls | offered pps | forwarded pps | loss | p50 µs | p99 µs | p99.9 µs | relay CPU µs/pkt | relay CPU % core | gen CPU s | steal % |")
print("|---|---|---|---|---|---|---|---|---|---|---|---|---|")
for r in rows:
    l = r["latency_us"]
    f = lambda v, d=2: "n/a" if v is None else f"{v:.{d}f}"
    print(f"| {r.get('label')} | {r.get('mode')} | {r['calls']} | {r['offered_pps']:.0f} | {r['forwarded_pps']:.0f} | {r['lost']} | {l['p50']:.0f} | {l['p99']:.0f} | {l['p999']:.0f} | {f(r.get('relay_cpu_us_per_pkt'))} | {f(r.get('relay_cpu_pct'),1)} | {f(r.get('gen_cpu_s'))} | {f(r.get('steal_pct'))} |")
PY
