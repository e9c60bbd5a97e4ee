#!/usr/bin/env bash
# Conference members per core: one conference on one media core (CPU 1, one core), rtp-load on
# CPU 0 playing every member. TALKERS (default 3) members send speech, the others silence, each
# at 50 packets/s, and every member hears the mix. For each CASE ("codec:members:rate", default
# "pcmu:1000:8000 opus16:300:16000") it runs DURATION (default 60) seconds and reports the loss,
# the media core's CPU, and the mixing periods the media plane ran, ran more than 5 ms late and
# skipped (from GetStats). Each result is one JSON line in $OUT (default
# target/bench/conference-<date>.jsonl) and a markdown table is printed at the end.
#
#   bash scripts/bench-conference.sh
#   CASES="pcmu:200:8000" DURATION=10 bash scripts/bench-conference.sh
#
# There is no peer mixer to compare in the same run on Debian 12: FreeSWITCH and Asterisk are
# not packaged there (see docs/benchmarks.md for the figure FreeSWITCH users report).
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$HOME/.cargo/bin:$PATH"
CASES=${CASES:-"pcmu:1000:8000 opus16:300:16000"}
DURATION=${DURATION:-60}
TALKERS=${TALKERS:-3}
OUT=${OUT:-target/bench/conference-$(date -u +%Y%m%dT%H%M%SZ).jsonl}
GRPC=127.0.0.1:9190
mkdir -p "$(dirname "$OUT")"
[ "${NO_BUILD:-0}" = 1 ] || cargo build --release --locked -p media-plane -p bench

wait_tcp() { for _ in $(seq 1 100); do (exec 3<>/dev/tcp/127.0.0.1/"$1") 2>/dev/null && return 0; sleep 0.1; done; return 1; }

echo "bench-conference: $(nproc) CPUs; cases $CASES; $TALKERS talkers; ${DURATION}s each" >&2
for case in $CASES; do
  IFS=: read -r codec members rate <<<"$case"
  target/release/media-plane --grpc-listen "$GRPC" --metrics-listen "" --ng-listen "" --ports 30000-39999 \
    --cores 1 --first-cpu 1 2>target/bench/media-plane.log &
  relay=$!
  wait_tcp 9190 || { echo "bench-conference: media-plane did not start" >&2; tail -5 target/bench/media-plane.log >&2; exit 1; }
  echo "== $members $codec members at $rate Hz" >&2
  taskset -c 0 target/release/rtp-load --grpc "http://$GRPC" --relay-pid "$relay" --cpu 0 --sockets 16 \
    --conference --codec-a "$codec" --calls "$members" --talkers "$TALKERS" --conference-rate "$rate" \
    --duration "$DURATION" --label "conference $codec $members members" | tee -a "$OUT" || true
  kill $relay; wait $relay 2>/dev/null || true
done

python3 - "$OUT" <<'PY'
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1]) if l.startswith("{")]
print(f"\nresults: {sys.argv[1]}")
print("| case | members | packets in+out /s | loss | media core CPU % | CPU µs per member-second | mixing periods | late (> 5 ms) | missed | steal % |")
print("|---|---|---|---|---|---|---|---|---|---|")
for r in rows:
    m = r.get("mixer") or {}
    cpu = r.get("relay_cpu_s")
    per = "n/a" if cpu is None else f"{cpu * 1e6 / (r['streams'] * r['duration_s']):.1f}"
    pct = "n/a" if r.get("relay_cpu_pct") is None else f"{r['relay_cpu_pct']:.1f}"
    steal = "n/a" if r.get("steal_pct") is None else f"{r['steal_pct']:.2f}"
    print(f"| {r.get('label')} | {r['streams']} | {r['offered_pps'] + r['forwarded_pps']:.0f} | {r['lost']} | {pct} | {per} | {m.get('ticks')} | {m.get('late')} | {m.get('missed')} | {steal} |")
PY
