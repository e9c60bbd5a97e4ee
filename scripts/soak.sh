#!/usr/bin/env bash
# Soak test of the whole product on loopback: the control plane (SIP registrar + B2BUA) and the
# media plane (RTP relay) under a steady mix of calls with RTP both ways and re-registrations at
# 80 % of this machine's capacity, for DURATION seconds (an hour by default); then the load stops
# and the run checks that nothing leaked and that memory did not creep.
#
#   [DURATION=3600] [CAPACITY=<calls at once>] [KEEP=1] bash scripts/soak.sh
#
# Steps:
#   1. Build (release) like scripts/demo.sh; subscribers: alice, bob and USERS generated ones
#      (scripts/sipp/make-users.sh); the SQLite store on tmpfs (DB_DIR: this VM's disk takes ~3 ms
#      per fsync, which would cap the registrar's commits, not what a soak is about).
#   2. Capacity of the call mix (concurrent calls with RTP both ways through both planes):
#      CAPACITY if given, else a probe (PROBE=1): steps of PROBE_START, 2x, 4x … calls at once
#      (up to PROBE_MAX), each on freshly started planes, offered at calls/CALL_SECONDS per second
#      for PROBE_STEP_S seconds (sipp uac-call.xml -> uas-answer.xml -rtp_echo, as the demo). A step
#      passes with 0 failed calls (caller and callee sipp), relay loss <= PROBE_LOSS_PCT (media
#      plane packets_in vs packets_forwarded, media-stats before/after), sipp keeping its rate
#      (its run no longer than 5 % + 2 s over PROBE_STEP_S + CALL_SECONDS) and the RTP the phones
#      were to send reaching the relay (>= PROBE_RTP_PCT of calls x CALL_SECONDS x 100 packets:
#      a generator starved of CPU fails this, not the relay loss). Capacity = the last passing step,
#      after one bisection between it and the first failing one. The probe takes ~1 min a step
#      (PROBE_STEP_S + CALL_SECONDS + ~5 s start/stop): 5 steps, ~4.5 min, on this 2-vCPU VM, where
#      the limit was the generator: bob's sipp echoes all RTP through one socket on CPU 0 and it
#      overflows past ~400-600 calls (the step line names those drops; the relay lost nothing).
#      PROBE_RTP_PCT=0 leaves that criterion out.
#   3. The soak, on freshly started planes: LOAD_PCT (80) % of the capacity as calls at once, i.e.
#      RATE = LOAD_PCT % x capacity / CALL_SECONDS calls per second for DURATION seconds (one sipp
#      caller run: -m and -timeout bound it), plus USERS subscribers re-registering from REG_PORT
#      at LOAD_PCT % of REG_CAPACITY per second (register.xml over users.csv, cycling; one sipp
#      run bounded the same way). REG_CAPACITY [500] is not probed: docs/benchmarks.md measured
#      5,789 REGISTER/s (digest auth) for the control plane on one core, so the default register
#      load (400/s) is far below it and costs the control plane ~8 % of a core.
#      Every SAMPLE s: RSS (VmRSS) of both planes, legs, live transactions; every PROGRESS s a line
#      on stderr (elapsed, calls up, calls ok/failed, registrations, RSS, transactions, legs).
#   4. End: the load stops (sipp runs end), calls end, then up to DRAIN_S s for the legs to go,
#      the calls to end and the server transactions to expire (Timer J: 32 s), polling
#      sip_transactions_live on the control plane's metrics. Checks (exit 0 only if all pass):
#        legs left in the media plane = 0; free ports = the figure before the soak (media-stats,
#        summed over cores); live transactions = 0; calls active = 0; failed calls = 0 (caller
#        sipp, callee sipp, control plane's calls_failed) and failed registrations = 0, except
#        sipp-side timeouts up to TIMEOUTS_OK (named separately: lost UDP or a starved
#        generator); relay loss <= LOSS_PCT; RSS growth of each plane < RSS_GROWTH_PCT (1) %
#        between the sample at RSS_BASE_PCT (10) % of the run, but not before WARMUP_S (calls
#        ramped up and the server transactions at their steady number: their lifetime is 32 s),
#        and the last sample under load (at DURATION).
#      Also reported: calls and registrations ok/failed, CPU seconds per plane, steal %, kernel
#      UDP receive drops, registered contacts, RSS after the drain.
#   Output: a human summary on stderr, ONE JSON line on stdout.
#
# Env [defaults]:
#   DURATION [3600] s of load   CALL_SECONDS [10] per call   LOAD_PCT [80]
#   CAPACITY [-] calls at once (skips the probe)   PROBE [1] (0 without CAPACITY: PROBE_START is
#     taken as the capacity)   PROBE_START [100]  PROBE_MAX [2400]  PROBE_STEP_S [40]
#     PROBE_LOSS_PCT [0.1]  PROBE_RTP_PCT [95]
#   USERS [10000]  REG_CAPACITY [500]/s   (REG_RATE overrides LOAD_PCT % of it; 0: no registrations)
#   SAMPLE [30] s  PROGRESS [30] s  DRAIN_S [90]  RSS_BASE_PCT [10]  RSS_GROWTH_PCT [1]
#   WARMUP_S [CALL_SECONDS + 40]: the RSS base sample is never earlier
#   LOSS_PCT [0.1]  TIMEOUTS_OK [0]
#   SIP [127.0.0.1:35060] (UDP)  MP_GRPC [127.0.0.1:35090]  MP_METRICS [127.0.0.1:35091]
#   CP_METRICS [127.0.0.1:35092]  MEDIA_PORTS [40000-49999]
#   UAS_PORT [35070] (bob)  UAC_PORT [35071] (alice)  REG_PORT [35072]
#   UAS_MEDIA [35600] (and +2)  UAC_MEDIA [35610]
#   BUILD [1] (0: use the binaries in BIN as they are)  BIN [target/release]
#   DB_DIR [/dev/shm]  KEEP=1 keeps the working directory (logs, sipp statistics, samples).
# Placement (2+ CPUs): the media plane on CPU 1, the control plane and sipp on CPU 0, as the demo.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
source scripts/setup.sh
export PATH="$HOME/.cargo/bin:$PATH"

DURATION=${DURATION:-3600}
CALL_SECONDS=${CALL_SECONDS:-10}
LOAD_PCT=${LOAD_PCT:-80}
CAPACITY=${CAPACITY:-}
PROBE=${PROBE:-1}
PROBE_START=${PROBE_START:-100}
PROBE_MAX=${PROBE_MAX:-2400}
PROBE_STEP_S=${PROBE_STEP_S:-40}
PROBE_LOSS_PCT=${PROBE_LOSS_PCT:-0.1}
PROBE_RTP_PCT=${PROBE_RTP_PCT:-95}
USERS=${USERS:-10000}
REG_CAPACITY=${REG_CAPACITY:-500}
REG_RATE=${REG_RATE:-$(( REG_CAPACITY * LOAD_PCT / 100 ))}
SAMPLE=${SAMPLE:-30}
PROGRESS=${PROGRESS:-30}
DRAIN_S=${DRAIN_S:-90}
RSS_BASE_PCT=${RSS_BASE_PCT:-10}
RSS_GROWTH_PCT=${RSS_GROWTH_PCT:-1}
LOSS_PCT=${LOSS_PCT:-0.1}
TIMEOUTS_OK=${TIMEOUTS_OK:-0}
SIP=${SIP:-127.0.0.1:35060}
MP_GRPC=${MP_GRPC:-127.0.0.1:35090}
MP_METRICS=${MP_METRICS:-127.0.0.1:35091}
CP_METRICS=${CP_METRICS:-127.0.0.1:35092}
MEDIA_PORTS=${MEDIA_PORTS:-40000-49999}
UAS_PORT=${UAS_PORT:-35070}
UAC_PORT=${UAC_PORT:-35071}
REG_PORT=${REG_PORT:-35072}
UAS_MEDIA=${UAS_MEDIA:-35600}
UAC_MEDIA=${UAC_MEDIA:-35610}
DB_DIR=${DB_DIR:-/dev/shm}
DOMAIN=sip.test

log() { echo "soak: $*" >&2; }
die() { log "$*"; exit 1; }
for v in DURATION CALL_SECONDS LOAD_PCT PROBE_START PROBE_MAX PROBE_STEP_S USERS SAMPLE PROGRESS DRAIN_S RSS_BASE_PCT; do
  [[ ${!v} =~ ^[1-9][0-9]*$ ]] || die "$v must be a positive integer, not '${!v}'"
done
[[ $REG_RATE =~ ^[0-9]+$ ]] || die "REG_RATE must be a whole number of REGISTERs per second, not '$REG_RATE'"
[[ $TIMEOUTS_OK =~ ^[0-9]+$ ]] || die "TIMEOUTS_OK must be a number"
[ -z "$CAPACITY" ] || [[ $CAPACITY =~ ^[1-9][0-9]*$ ]] || die "CAPACITY must be a positive integer (calls at once)"
[ "$LOAD_PCT" -le 100 ] || die "LOAD_PCT must be 1..100"

if [ "${BUILD:-1}" != 0 ]; then
  cargo build --release --locked -p media-plane -p control-plane -p bench
fi
BIN=${BIN:-$ROOT/target/release}
for b in media-plane control-plane media-stats; do [ -x "$BIN/$b" ] || die "$BIN/$b is missing (build it, or BIN=)"; done
SIPP_DIR=$ROOT/scripts/sipp
HZ=$(getconf CLK_TCK)
WORK=$(mktemp -d /tmp/soak.XXXXXX)
DBW=$(mktemp -d "$DB_DIR/soak-db.XXXXXX")
T_START=$(date +%s)

PIDS=()
cleanup() {
  local pid
  for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
  for pid in "${PIDS[@]}"; do
    for _ in $(seq 1 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -9 "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
  done
  PIDS=()
  if [ "${KEEP:-0}" = 1 ]; then log "logs, statistics and samples kept in $WORK (store: $DBW)"; else rm -rf "$WORK" "$DBW"; fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM
forget() { local p=$1 keep=() x; for x in "${PIDS[@]}"; do [ "$x" = "$p" ] || keep+=("$x"); done; PIDS=("${keep[@]}"); }
stop() { # stop PID [SIGNAL]: signal (TERM), wait up to 10 s, KILL
  local pid=$1
  kill "-${2:-TERM}" "$pid" 2>/dev/null || true
  for _ in $(seq 1 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
  kill -9 "$pid" 2>/dev/null || true
  wait "$pid" 2>/dev/null || true
  forget "$pid"
}

# Nothing of ours may already listen on the ports.
for hp in "$MP_GRPC" "$MP_METRICS" "$CP_METRICS"; do
  if (exec 3<>"/dev/tcp/${hp%:*}/${hp#*:}") 2>/dev/null; then die "TCP $hp is already in use (another soak?); stop it first"; fi
done
for p in "${SIP#*:}" "$UAS_PORT" "$UAC_PORT" "$REG_PORT" "$UAS_MEDIA" "$UAC_MEDIA"; do
  [ -z "$(ss -Hlun "sport = :$p" 2>/dev/null)" ] || die "UDP port $p is already in use; stop what uses it or choose other ports"
done

# CPU placement: the media plane on CPU 1 (if there is one), control plane and sipp on CPU 0.
cpus=$(nproc)
MP_CPU=$(( cpus > 1 ? 1 : 0 ))
CP_CPU=0
[ "$cpus" -gt 1 ] || log "warning: 1 CPU: both planes and sipp share it"

# ---------------------------------------------------------------------------------------------
# Helpers
media_stats() { "$BIN/media-stats" --grpc "http://$MP_GRPC" 2>/dev/null; }
jfield() { # JSON KEY: a top-level integer of media-stats' line ("-" if absent: no answer)
  local v; v=$(grep -o "\"$2\":[0-9]*" <<<"$1" | head -1 | cut -d: -f2); echo "${v:--}"
}
cp_metrics() { curl -s --max-time 3 "http://$CP_METRICS/metrics" 2>/dev/null || true; }
metric() { # TEXT NAME: the value of an unlabelled sample ("-" if absent)
  awk -v n="$2" '$1 == n { v = $2 } END { print (v == "" ? "-" : v) }' <<<"$1"
}
rss_kb() { awk '/^VmRSS:/ { print $2 }' "/proc/$1/status" 2>/dev/null || echo 0; }
cpu_ticks() { awk '{ s = $0; sub(/^.*\) /, "", s); split(s, f, " "); print f[12] + f[13] }' "/proc/$1/stat" 2>/dev/null || echo 0; }
# "total steal busy" jiffies of all CPUs (/proc/stat; busy: all but idle and iowait)
cpu_stat() { awk '/^cpu /{ t = 0; for (i = 2; i <= NF; i++) t += $i; print t, $9, t - $5 - $6; exit }' /proc/stat; }
# CPU used by everything else on the machine, in % of one CPU: BUSY0 BUSY1 TOTAL0 TOTAL1 OURS_TICKS
other_pct() { awk -v b="$(( $2 - $1 ))" -v t="$(( $4 - $3 ))" -v o="$5" -v n="$cpus" 'BEGIN { v = t ? 100 * (b - o) / (t / n) : 0; printf "%.1f", v < 0 ? 0 : v }'; }
# UDP datagrams the kernel dropped on receive, machine-wide (InErrors: full receive buffers and
# the rest; the per-socket drops of /proc/net/udp count the same)
udp_drops() { awk '/^Udp:/ { if (++n == 2) print $4 }' /proc/net/snmp; }
# drops of the sockets bound to local UDP port $1 (/proc/net/udp, last column)
port_drops() { awk -v p="$(printf ':%04X' "$1")" 'NR > 1 && substr($2, length($2) - 4) == p { d += $NF } END { print d + 0 }' /proc/net/udp; }
# created ok failed of a sipp -trace_stat file, from its header and last row ("0 0 0" before any)
sipp_now() {
  [ -s "$1" ] || { echo 0 0 0; return; }
  { head -1 "$1"; tail -1 "$1"; } | awk -F';' '
    NR == 1 { for (i = 1; i <= NF; i++) col[$i] = i; next }
    { c = ("OutgoingCall(C)" in col) ? col["OutgoingCall(C)"] : col["IncomingCall(C)"]
      printf "%d %d %d\n", $c, $col["SuccessfulCall(C)"], $col["FailedCall(C)"] }'
}
# One SIP OPTIONS, any reply: the control plane is up.
sip_ready() {
  python3 - "${SIP%:*}" "${SIP#*:}" <<'EOF' 2>/dev/null
import socket, sys, random
host, port = sys.argv[1], int(sys.argv[2])
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.bind(("127.0.0.1", 0)); s.settimeout(0.3)
lp = s.getsockname()[1]; b = "z9hG4bK-ready-%d" % random.randrange(1 << 30)
msg = ("OPTIONS sip:%s:%d SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.1:%d;branch=%s\r\nMax-Forwards: 70\r\n"
       "From: <sip:ready@127.0.0.1>;tag=1\r\nTo: <sip:%s:%d>\r\nCall-ID: %s@ready\r\nCSeq: 1 OPTIONS\r\n"
       "Content-Length: 0\r\n\r\n") % (host, port, lp, b, host, port, b)
s.sendto(msg.encode(), (host, port))
sys.exit(0 if s.recv(4096).startswith(b"SIP/2.0 ") else 1)
EOF
}

# sipp runs as $WORK/bin/soak-sipp (a symlink): on a shared machine, something that stops "sipp"
# processes by name (pkill -x sipp, killall sipp) must not end the soak's load half-way.
mkdir -p "$WORK/bin"; ln -s "$(command -v sipp)" "$WORK/bin/soak-sipp"
SIPP=(taskset -c "$CP_CPU" "$WORK/bin/soak-sipp" "$SIP" -nostdin -trace_err -max_recv_loops 10000 -buff_size 4194304)

# ---------------------------------------------------------------------------------------------
# Subscribers: a template store copied for every start (no registrations left from a previous one).
CALLEES=1 "$SIPP_DIR/make-users.sh" "$USERS" "$WORK/users" 2>/dev/null
[ -f "$SIPP_DIR/pcmu-1s.raw" ] || "$SIPP_DIR/make-audio.sh" >/dev/null
DB=$DBW/control-plane.db
CFG=$WORK/control-plane.toml
cat >"$WORK/template.toml" <<EOF
[sip]
domains = ["$DOMAIN"]
[store]
path = "$DBW/template.db"
EOF
printf 'SEQUENTIAL\nalice;secret\nbob;secret\n' >"$WORK/users/named.csv"
"$BIN/control-plane" --config "$WORK/template.toml" subscriber import --domain "$DOMAIN" "$WORK/users/named.csv" >/dev/null \
  && "$BIN/control-plane" --config "$WORK/template.toml" subscriber import --domain "$DOMAIN" "$WORK/users/users.csv" >/dev/null \
  || die "subscriber import failed"
cat >"$CFG" <<EOF
# written by scripts/soak.sh; everything else is the shipped default (control-plane/src/config.rs)
[sip]
listen = ["udp:$SIP"]
domains = ["$DOMAIN"]
[media]
grpc = "http://$MP_GRPC"
[metrics]
listen = "$CP_METRICS"
[api]
listen = ""
[store]
path = "$DB"
EOF

# start_planes TAG: both planes (fresh store), alice and bob registered, bob's answering sipp up.
# Sets MP CP UAS.
start_planes() {
  local tag=$1
  rm -f "$DB" "$DB-wal" "$DB-shm"
  cp "$DBW/template.db" "$DB"
  # (no taskset: the media plane checks --first-cpu against its affinity; it pins its core itself)
  "$BIN/media-plane" --grpc-listen "$MP_GRPC" --metrics-listen "$MP_METRICS" --ng-listen "" \
    --media-ip 127.0.0.1 --ports "$MEDIA_PORTS" --cores 1 --first-cpu "$MP_CPU" >"$WORK/$tag.media-plane.log" 2>&1 &
  MP=$!; PIDS+=("$MP")
  taskset -c "$CP_CPU" "$BIN/control-plane" --config "$CFG" >"$WORK/$tag.control-plane.out" 2>"$WORK/$tag.control-plane.log" &
  CP=$!; PIDS+=("$CP")
  local up=0
  for _ in $(seq 1 150); do
    kill -0 "$MP" 2>/dev/null || { log "media-plane exited:"; tail -5 "$WORK/$tag.media-plane.log" >&2; exit 1; }
    kill -0 "$CP" 2>/dev/null || { log "control-plane exited:"; tail -5 "$WORK/$tag.control-plane.log" >&2; exit 1; }
    if media_stats >/dev/null && sip_ready && [ -n "$(cp_metrics)" ]; then up=1; break; fi
    sleep 0.1
  done
  [ $up = 1 ] || die "the planes did not come up in 15 s (logs: $WORK/$tag.*)"
  (cd "$SIPP_DIR" && "${SIPP[@]}" -sf register.xml -inf csv/bob.csv -auth_uri "$DOMAIN" -p "$UAS_PORT" -m 1 \
    -timeout 10 -timeout_error -error_file "$WORK/$tag.register-bob.err" >"$WORK/$tag.register-bob.out" 2>&1) \
    || die "bob could not register (see $WORK/$tag.register-bob.*)"
  (cd "$SIPP_DIR" && "${SIPP[@]}" -sf register.xml -inf csv/alice.csv -auth_uri "$DOMAIN" -p "$UAC_PORT" -m 1 \
    -timeout 10 -timeout_error -error_file "$WORK/$tag.register-alice.err" >"$WORK/$tag.register-alice.out" 2>&1) \
    || die "alice could not register (see $WORK/$tag.register-alice.*)"
  (cd "$SIPP_DIR" && exec "${SIPP[@]}" -sf uas-answer.xml -p "$UAS_PORT" -mp "$UAS_MEDIA" -rtp_echo \
    -trace_stat -fd 1 -stf "$WORK/$tag.uas.stat.csv" -error_file "$WORK/$tag.uas.err" >"$WORK/$tag.uas.out" 2>&1) &
  UAS=$!; PIDS+=("$UAS")
  sleep 0.3
}
# stop_planes TAG: stops bob's sipp, then the control plane (its final counters: TAG.counters.json),
# then the media plane.
stop_planes() {
  local tag=$1
  stop "$UAS" INT
  stop "$CP" TERM
  tail -1 "$WORK/$tag.control-plane.out" >"$WORK/$tag.counters.json" 2>/dev/null || true
  stop "$MP" TERM
}
# wait_idle SECONDS: until the media plane has no legs and the control plane no calls (bounded)
wait_idle() {
  local deadline=$(( $(date +%s) + $1 )) m legs calls
  while :; do
    legs=$(jfield "$(media_stats)" legs)
    calls=$(metric "$(cp_metrics)" sip_calls_active)
    [ "$legs" = 0 ] && { [ "$calls" = 0 ] || [ "$calls" = - ]; } && return 0
    [ "$(date +%s)" -lt "$deadline" ] || return 1
    sleep 0.5
  done
}
# run_uac TAG CALLS_AT_ONCE TOTAL TIMEOUT_S: alice calls bob, CALLS_AT_ONCE per
# CALL_SECONDS (one call every CALL_SECONDS / CALLS_AT_ONCE s), TOTAL calls. Sets UAC.
run_uac() {
  local tag=$1 conc=$2 total=$3 tmo=$4
  (cd "$SIPP_DIR" && exec "${SIPP[@]}" -sf uac-call.xml -inf csv/alice-calls-bob.csv -auth_uri "bob@$DOMAIN" \
    -p "$UAC_PORT" -mp "$UAC_MEDIA" -r "$conc" -rp "${CALL_SECONDS}s" -m "$total" -l $(( conc * 2 + 50 )) \
    -d $(( CALL_SECONDS * 1000 )) -timeout "${tmo}s" -timeout_error \
    -trace_stat -fd 1 -stf "$WORK/$tag.uac.stat.csv" -error_file "$WORK/$tag.uac.err" >"$WORK/$tag.uac.out" 2>&1) &
  UAC=$!; PIDS+=("$UAC")
}

# ---------------------------------------------------------------------------------------------
# Capacity
: >"$WORK/probe.jsonl"
PROBE_SECONDS=0
probe_step() { # CALLS -> return 0 if the step passes; appends its figures to probe.jsonl
  local c=$1 tag=probe-$1 total t0 t1 rc ms0 ms1 verdict
  total=$(( c * PROBE_STEP_S / CALL_SECONDS ))
  start_planes "$tag"
  ms0=$(media_stats || true)
  local ct0 cs0 cb0 ct1 cs1 cb1 ours0 ours1 g=0 x other
  read -r ct0 cs0 cb0 < <(cpu_stat); ours0=$(( $(cpu_ticks "$MP") + $(cpu_ticks "$CP") + $(cpu_ticks "$UAS") ))
  t0=$(date +%s.%N)
  run_uac "$tag" "$c" "$total" $(( PROBE_STEP_S + CALL_SECONDS + 60 ))
  while kill -0 "$UAC" 2>/dev/null; do x=$(cpu_ticks "$UAC"); [ "${x:-0}" = 0 ] || g=$x; sleep 0.5; done
  set +e; wait "$UAC"; rc=$?; set -e; forget "$UAC"
  t1=$(date +%s.%N)
  read -r ct1 cs1 cb1 < <(cpu_stat); ours1=$(( $(cpu_ticks "$MP") + $(cpu_ticks "$CP") + $(cpu_ticks "$UAS") ))
  other=$(other_pct "$cb0" "$cb1" "$ct0" "$ct1" $(( ours1 - ours0 + g )))
  wait_idle 10 || true
  sleep 1.2   # one more statistics row of bob's sipp
  ms1=$(media_stats || true)
  local cdrops; cdrops=$(port_drops "$UAS_MEDIA")   # bob's sipp's RTP socket: echoes what it reads
  stop_planes "$tag"
  verdict=$(python3 - "$WORK" "$tag" "$c" "$total" "$rc" "$t0" "$t1" "$ms0" "$ms1" "$PROBE_STEP_S" "$CALL_SECONDS" \
    "$PROBE_LOSS_PCT" "$PROBE_RTP_PCT" "$cdrops" "$other" <<'EOF'
import csv, json, os, sys
work, tag, c, total, rc, t0, t1, ms0, ms1, step_s, cs, max_loss, min_rtp, cdrops, other = sys.argv[1:]
c, total, rc, step_s, cs = int(c), int(total), int(rc), int(step_s), int(cs)
elapsed = float(t1) - float(t0)
def last(path):
    try:
        rows = [r for r in csv.reader(open(path), delimiter=";") if r]
        return dict(zip(rows[0], rows[-1]))
    except (OSError, IndexError):
        return {}
def n(d, k):
    try: return int(float(d.get(k) or 0))
    except ValueError: return 0
uac, uas = last(os.path.join(work, tag + ".uac.stat.csv")), last(os.path.join(work, tag + ".uas.stat.csv"))
ms0 = json.loads(ms0) if ms0 else {}
ms1 = json.loads(ms1) if ms1 else {}
pin = ms1.get("packets_in", 0) - ms0.get("packets_in", 0)
fwd = ms1.get("packets_forwarded", 0) - ms0.get("packets_forwarded", 0)
loss = 100.0 * (pin - fwd) / pin if pin else 100.0
rtp = 100.0 * pin / (total * cs * 100) if total else 0.0
ok, failed, ufailed = n(uac, "SuccessfulCall(C)"), n(uac, "FailedCall(C)"), n(uas, "FailedCall(C)")
limit_s = (step_s + cs) * 1.05 + 2
why = []
if rc != 0: why.append("sipp exit %d" % rc)
if failed or ufailed: why.append("%d+%d failed calls" % (failed, ufailed))
if ok < total: why.append("%d of %d calls ok" % (ok, total))
if loss > float(max_loss): why.append("relay loss %.3f%%" % loss)
if rtp < float(min_rtp): why.append("RTP %.1f%% of expected (%s dropped at bob's sipp RTP socket)" % (rtp, cdrops))
if elapsed > limit_s: why.append("rate not kept (%.1f s > %.1f s)" % (elapsed, limit_s))
r = {"calls": c, "rate_per_s": round(c / cs, 2), "offered": total, "ok": ok, "failed": failed + ufailed,
     "relay_loss_pct": round(loss, 4), "rtp_pct": round(rtp, 2), "callee_rtp_socket_drops": int(cdrops), "other_cpu_pct": float(other), "elapsed_s": round(elapsed, 1),
     "pass": not why, "why": "; ".join(why)}
open(os.path.join(work, "probe.jsonl"), "a").write(json.dumps(r) + "\n")
print(("pass" if not why else "FAIL") + " " + ("%d calls ok, relay loss %.3f%%, RTP %.1f%% of expected, %.1f s" % (ok, loss, rtp, elapsed) if not why else "; ".join(why))
      + "  [other processes: %s %% of a CPU]" % other)
EOF
)
  log "  probe $c calls at once ($(awk -v c="$c" -v s="$CALL_SECONDS" 'BEGIN { printf "%.1f", c / s }') calls/s, ${PROBE_STEP_S}s): $verdict"
  [ "${verdict%% *}" = pass ]
}

CAP_SOURCE=env
if [ -z "$CAPACITY" ]; then
  if [ "$PROBE" = 1 ]; then
    CAP_SOURCE=probe
    probe_t0=$(date +%s)
    log "capacity probe: steps of calls at once from $PROBE_START (x2 up to $PROBE_MAX), ${PROBE_STEP_S}s each + ${CALL_SECONDS}s calls, then one bisection"
    pass=0 fail=0 c=$PROBE_START
    while :; do
      if probe_step "$c"; then
        pass=$c
        [ $(( c * 2 )) -le "$PROBE_MAX" ] || break
        c=$(( c * 2 ))
      else
        fail=$c
        [ "$pass" = 0 ] || break
        c=$(( c / 2 ))
        [ "$c" -ge 10 ] || die "capacity probe: not even $fail calls at once pass (see $WORK/probe.jsonl; KEEP=1)"
      fi
    done
    if [ "$fail" != 0 ] && [ "$pass" != 0 ]; then
      mid=$(( (pass + fail) / 2 / 10 * 10 ))
      if [ "$mid" -gt "$pass" ] && [ "$mid" -lt "$fail" ] && probe_step "$mid"; then pass=$mid; fi
    fi
    CAPACITY=$pass
    PROBE_SECONDS=$(( $(date +%s) - probe_t0 ))
    log "capacity: $CAPACITY calls at once with RTP both ways (probe took ${PROBE_SECONDS}s)"
  else
    CAP_SOURCE=probe_start
    CAPACITY=$PROBE_START
  fi
fi

# ---------------------------------------------------------------------------------------------
# The soak
CONC=$(( CAPACITY * LOAD_PCT / 100 ))
[ "$CONC" -ge 1 ] || CONC=1
CALLS_TOTAL=$(( CONC * DURATION / CALL_SECONDS ))
REG_TOTAL=$(( REG_RATE * DURATION ))
RATE=$(awk -v c="$CONC" -v s="$CALL_SECONDS" 'BEGIN { printf "%.2f", c / s }')
# RSS base: the sample at RSS_BASE_PCT % of the run, but not before the warm-up is over (calls
# ramped up, CALL_SECONDS; the control plane's server transactions at their steady number, which
# takes their 32 s lifetime, Timer J: WARMUP_S = CALL_SECONDS + 40 by default).
WARMUP_S=${WARMUP_S:-$(( CALL_SECONDS + 40 ))}
[[ $WARMUP_S =~ ^[0-9]+$ ]] || die "WARMUP_S must be a number of seconds"
RSS_BASE_S=$(( DURATION * RSS_BASE_PCT / 100 ))
[ "$RSS_BASE_S" -ge "$WARMUP_S" ] || RSS_BASE_S=$WARMUP_S
if [ "$RSS_BASE_S" -ge "$DURATION" ]; then
  RSS_BASE_S=$(( DURATION / 2 ))
  log "note: DURATION ${DURATION}s is shorter than the warm-up (${WARMUP_S}s): the RSS growth is measured from ${RSS_BASE_S}s and includes warm-up"
fi

start_planes soak
MS0=$(media_stats) || die "media-stats failed"
FREE0=$(jfield "$MS0" free_ports)
[ "$FREE0" != - ] || die "media-stats printed no free_ports: $MS0"
mp_t0=$(cpu_ticks "$MP"); cp_t0=$(cpu_ticks "$CP")
read -r st_t0 st_s0 st_b0 < <(cpu_stat)
udp0=$(udp_drops)
log "${DURATION}s at $LOAD_PCT % of $CAPACITY calls (${CAP_SOURCE}): $CONC calls at once ($RATE calls/s x ${CALL_SECONDS}s, RTP both ways), $REG_RATE REGISTER/s over $USERS users; media plane pid $MP (CPU $MP_CPU), control plane pid $CP (CPU $CP_CPU), SIP $SIP"
printf 't_s\tmp_rss_kb\tcp_rss_kb\tlegs\ttransactions\tcalls_active\tcontacts\n' >"$WORK/samples.tsv"
sample() { # T: one row of samples.tsv; sets S_* for the progress line
  local m ms
  m=$(cp_metrics); ms=$(media_stats || true)
  S_MP=$(rss_kb "$MP"); S_CP=$(rss_kb "$CP")
  S_LEGS=$(jfield "$ms" legs); S_TX=$(metric "$m" sip_transactions_live)
  S_CALLS=$(metric "$m" sip_calls_active); S_CONTACTS=$(metric "$m" sip_registered_contacts)
  printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$1" "$S_MP" "$S_CP" "$S_LEGS" "$S_TX" "$S_CALLS" "$S_CONTACTS" >>"$WORK/samples.tsv"
}
progress() { # T
  local a b
  read -r _ a b < <(sipp_now "$WORK/soak.uac.stat.csv")
  read -r _ ra rb < <(sipp_now "$WORK/soak.reg.stat.csv")
  log "  $1/${DURATION}s  calls up $S_CALLS  ok $a failed $b  registrations ok $ra failed $rb  RSS media $(( S_MP / 1024 )) MB control $(( S_CP / 1024 )) MB  transactions $S_TX  legs $S_LEGS"
}

run_uac soak "$CONC" "$CALLS_TOTAL" $(( DURATION + CALL_SECONDS + 120 ))
REG=""
if [ "$REG_TOTAL" -gt 0 ]; then
  (cd "$SIPP_DIR" && exec "${SIPP[@]}" -sf register.xml -inf "$WORK/users/users.csv" -auth_uri "$DOMAIN" -p "$REG_PORT" \
    -r "$REG_RATE" -m "$REG_TOTAL" -l $(( REG_RATE * 2 + 100 )) -timeout $(( DURATION + 120 ))s -timeout_error \
    -trace_stat -fd 1 -stf "$WORK/soak.reg.stat.csv" -error_file "$WORK/soak.reg.err" >"$WORK/soak.reg.out" 2>&1) &
  REG=$!; PIDS+=("$REG")
fi
t0=$(date +%s.%N)
sample 0
next_sample=$SAMPLE next_progress=$PROGRESS base_done=0 RSS_BASE_T=0 early="" uac_ticks=0 reg_ticks=0 udp_caller=0
while :; do
  sleep 1
  now=$(awk -v a="$t0" -v b="$(date +%s.%N)" 'BEGIN { printf "%d", b - a }')
  [ "$now" -lt "$DURATION" ] || break
  if ! kill -0 "$MP" 2>/dev/null || ! kill -0 "$CP" 2>/dev/null; then
    early="a plane exited at ${now}s (logs: soak.media-plane.log, soak.control-plane.log; KEEP=1)"
    log "error: $early; stopping the load"; break
  fi
  if [ -z "$early" ]; then
    kill -0 "$UAC" 2>/dev/null || early="the caller sipp ended at ${now}s"
    [ -z "$REG" ] || kill -0 "$REG" 2>/dev/null || early="the registering sipp ended at ${now}s"
    [ -z "$early" ] || log "warning: $early, before the end of the load"
  fi
  # CPU and socket drops of the sipp runs, last seen alive (read again at the end if they still are)
  x=$(cpu_ticks "$UAC"); [ "$x" = 0 ] || { uac_ticks=$x; udp_caller=$(port_drops "$UAC_MEDIA"); }
  [ -z "$REG" ] || { x=$(cpu_ticks "$REG"); [ "$x" = 0 ] || reg_ticks=$x; }
  took=0
  if [ "$base_done" = 0 ] && [ "$now" -ge "$RSS_BASE_S" ]; then sample "$now"; took=1; base_done=1; RSS_BASE_T=$now; fi
  if [ "$now" -ge "$next_sample" ]; then [ $took = 1 ] || sample "$now"; took=1; next_sample=$(( next_sample + SAMPLE )); fi
  if [ "$now" -ge "$next_progress" ]; then [ $took = 1 ] || sample "$now"; progress "$now"; next_progress=$(( next_progress + PROGRESS )); fi
done
sample "$DURATION"; RSS_END_T=$DURATION
# Kernel drops up to here, less those of the caller sipp's RTP socket: sipp streams from it and
# never reads the echo the relay sends back there (its receive buffer overflows by design).
udp_end=$(udp_drops); udp_callee=$(port_drops "$UAS_MEDIA")
x=$(cpu_ticks "$UAC"); [ "$x" = 0 ] || { uac_ticks=$x; udp_caller=$(port_drops "$UAC_MEDIA"); }
[ -z "$REG" ] || { x=$(cpu_ticks "$REG"); [ "$x" = 0 ] || reg_ticks=$x; }
# CPU over the load: ours (planes and sipp) and everything else on the machine (a build...)
read -r le_t le_s le_b < <(cpu_stat)
sipp_ticks=$(( uac_ticks + reg_ticks + $(cpu_ticks "$UAS") ))
ours_ticks=$(( $(cpu_ticks "$MP") - mp_t0 + $(cpu_ticks "$CP") - cp_t0 + sipp_ticks ))
OTHER_PCT=$(other_pct "$st_b0" "$le_b" "$st_t0" "$le_t" "$ours_ticks")
SIPP_PCT=$(awk -v s="$sipp_ticks" -v t="$(( le_t - st_t0 ))" -v n="$cpus" 'BEGIN { printf "%.1f", t ? 100 * s / (t / n) : 0 }')
[ "$base_done" = 1 ] || RSS_BASE_T=0
progress "$DURATION"
log "load stopping: waiting for the last calls (${CALL_SECONDS}s) and registrations to end"
# The sipp runs end by themselves (-m); bounded waits, then they are stopped.
sipp_rc() { # PID LIMIT_S -> SIPP_RC: its exit code (124: stopped at the limit)
  local pid=$1 deadline=$(( $(date +%s) + $2 ))
  while kill -0 "$pid" 2>/dev/null && [ "$(date +%s)" -lt "$deadline" ]; do sleep 0.5; done
  if kill -0 "$pid" 2>/dev/null; then stop "$pid" INT; SIPP_RC=124; return; fi
  set +e; wait "$pid"; SIPP_RC=$?; set -e; forget "$pid"
}
sipp_rc "$UAC" $(( CALL_SECONDS + 60 )); uac_rc=$SIPP_RC
reg_rc=0; if [ -n "$REG" ]; then sipp_rc "$REG" 30; reg_rc=$SIPP_RC; fi
load_end=$(date +%s.%N)
sleep 1.2   # bob's sipp answers the last BYEs and writes its last statistics row
stop "$UAS" INT
# Drain: legs gone, calls ended, server transactions expired (Timer J, 32 s), bounded.
drain_t0=$(date +%s)
while :; do
  m=$(cp_metrics); ms=$(media_stats || true)
  L=$(jfield "$ms" legs); TX=$(metric "$m" sip_transactions_live); CA=$(metric "$m" sip_calls_active)
  [ "$L" = 0 ] && [ "$TX" = 0 ] && [ "$CA" = 0 ] && break
  [ $(( $(date +%s) - drain_t0 )) -lt "$DRAIN_S" ] || break
  sleep 1
done
DRAIN_TOOK=$(( $(date +%s) - drain_t0 ))
log "drained in ${DRAIN_TOOK}s: legs $L, transactions $TX, calls active $CA"
MS1=$(media_stats || true)
M1=$(cp_metrics)
printf '%s\n' "$M1" >"$WORK/soak.cp-metrics.txt"
curl -s --max-time 3 "http://$MP_METRICS/metrics" >"$WORK/soak.mp-metrics.txt" 2>/dev/null || true
MP_RSS_DRAINED=$(rss_kb "$MP"); CP_RSS_DRAINED=$(rss_kb "$CP")
mp_t1=$(cpu_ticks "$MP"); cp_t1=$(cpu_ticks "$CP")
read -r st_t1 st_s1 st_b1 < <(cpu_stat)
stop_planes soak
T_END=$(date +%s)

printf '%s\n' "$MS0" >"$WORK/soak.media-stats.start.json"
[ -n "$MS1" ] || MS1='{}'
printf '%s\n' "$MS1" >"$WORK/soak.media-stats.end.json"
SOAK_CFG="duration=$DURATION call_seconds=$CALL_SECONDS load_pct=$LOAD_PCT capacity=$CAPACITY probe_s=$PROBE_SECONDS
conc=$CONC calls_total=$CALLS_TOTAL reg_rate=$REG_RATE reg_capacity=$REG_CAPACITY reg_total=$REG_TOTAL users=$USERS
uac_rc=$uac_rc reg_rc=$reg_rc load_s=$(awk -v a="$t0" -v b="$load_end" 'BEGIN { printf "%.1f", b - a }')
drain_s=$DRAIN_TOOK free0=$FREE0 mp_ticks=$(( mp_t1 - mp_t0 )) cp_ticks=$(( cp_t1 - cp_t0 )) hz=$HZ
st_total=$(( st_t1 - st_t0 )) st_steal=$(( st_s1 - st_s0 )) udp_drops=$(( udp_end - udp0 - udp_caller - udp_callee )) udp_caller=$udp_caller udp_callee=$udp_callee other_pct=$OTHER_PCT sipp_pct=$SIPP_PCT
warmup_s=$WARMUP_S rss_base_t=$RSS_BASE_T rss_end_t=$RSS_END_T mp_rss_drained=$MP_RSS_DRAINED cp_rss_drained=$CP_RSS_DRAINED
rss_growth_max=$RSS_GROWTH_PCT loss_max=$LOSS_PCT timeouts_ok=$TIMEOUTS_OK wall_s=$(( T_END - T_START ))" \
SOAK_CAP_SOURCE=$CAP_SOURCE SOAK_EARLY=$early python3 - "$WORK" <<'EOF'
import csv, json, os, sys
work = sys.argv[1]
cfg = {k: float(v) if "." in v else int(v) for k, v in (kv.split("=") for kv in os.environ["SOAK_CFG"].split())}
cfg["cap_source"], cfg["early"] = os.environ["SOAK_CAP_SOURCE"], os.environ.get("SOAK_EARLY", "")
ms0 = json.load(open(os.path.join(work, "soak.media-stats.start.json")))
ms1 = json.load(open(os.path.join(work, "soak.media-stats.end.json")))
metrics = {}
for line in open(os.path.join(work, "soak.cp-metrics.txt")):
    p = line.split()
    if len(p) == 2 and not line.startswith("#"):
        try: metrics[p[0]] = float(p[1])
        except ValueError: pass
try: counters = json.loads(open(os.path.join(work, "soak.counters.json")).read())
except (OSError, ValueError): counters = {}

def last(path):
    try:
        rows = [r for r in csv.reader(open(path), delimiter=";") if r]
        return dict(zip(rows[0], rows[-1]))
    except (OSError, IndexError): return {}
def n(d, k):
    try: return int(float(d.get(k) or 0))
    except ValueError: return 0
TIMEOUTS = ("FailedMaxUDPRetrans(C)", "FailedTimeoutOnRecv(C)", "FailedTimeoutOnSend(C)",
            "FailedCannotSendMessage(C)", "FailedOutboundCongestion(C)")
def sipp(name):
    d = last(os.path.join(work, name))
    reasons = {k[6:-3]: n(d, k) for k in d if k.startswith("Failed") and k.endswith("(C)") and k != "FailedCall(C)" and n(d, k)}
    timeouts = sum(n(d, k) for k in TIMEOUTS)
    created = n(d, "OutgoingCall(C)") or n(d, "IncomingCall(C)")
    return {"created": created, "ok": n(d, "SuccessfulCall(C)"), "failed": n(d, "FailedCall(C)"),
            "timeouts": timeouts, "reasons": reasons, "retransmissions": n(d, "Retransmissions(C)")}
uac, uas, reg = sipp("soak.uac.stat.csv"), sipp("soak.uas.stat.csv"), sipp("soak.reg.stat.csv")
cp_failed = int(metrics.get("sip_calls_failed_total", counters.get("calls_failed", 0)))

samples = list(csv.DictReader(open(os.path.join(work, "samples.tsv")), delimiter="\t"))
def at(t):
    for s in samples:
        if int(s["t_s"]) >= t: return s
    return samples[-1]
base, end = at(cfg["rss_base_t"]), samples[-1]
def rss(key, drained):
    b, e = int(base[key]), int(end[key])
    return {"start_kb": int(samples[0][key]), "base_kb": b, "end_kb": e, "max_kb": max(int(s[key]) for s in samples),
            "growth_pct": round(100.0 * (e - b) / b, 3) if b else None, "after_drain_kb": drained}
rss_mp, rss_cp = rss("mp_rss_kb", cfg["mp_rss_drained"]), rss("cp_rss_kb", cfg["cp_rss_drained"])

pin = ms1.get("packets_in", 0) - ms0.get("packets_in", 0)
fwd = ms1.get("packets_forwarded", 0) - ms0.get("packets_forwarded", 0)
loss = 100.0 * (pin - fwd) / pin if pin else 0.0
rtp = 100.0 * pin / (uac["created"] * cfg["call_seconds"] * 100) if uac["created"] else 0.0
legs_left = ms1.get("legs")
free1 = ms1.get("free_ports")
tx_left = metrics.get("sip_transactions_live")
calls_left = metrics.get("sip_calls_active")
timeouts = uac["timeouts"] + uas["timeouts"] + reg["timeouts"]
other_failed = (uac["failed"] - uac["timeouts"]) + (uas["failed"] - uas["timeouts"]) + (reg["failed"] - reg["timeouts"])
checks = {
    "legs_left_0": legs_left == 0,
    "free_ports_back": free1 == cfg["free0"],
    "transactions_left_0": tx_left == 0,
    "calls_active_0": calls_left == 0,
    "no_failed_calls": other_failed == 0 and cp_failed == 0 and timeouts <= cfg["timeouts_ok"]
                       and uac["ok"] == cfg["calls_total"] and cfg["uac_rc"] == 0,
    "no_failed_registrations": reg["ok"] == cfg["reg_total"] and cfg["reg_rc"] == 0,
    "relay_loss": loss <= cfg["loss_max"],
    "rss_growth_media_plane": rss_mp["growth_pct"] is not None and rss_mp["growth_pct"] < cfg["rss_growth_max"],
    "rss_growth_control_plane": rss_cp["growth_pct"] is not None and rss_cp["growth_pct"] < cfg["rss_growth_max"],
}
ok = all(checks.values())
probe = [json.loads(l) for l in open(os.path.join(work, "probe.jsonl")) if l.strip()]
steal = round(100.0 * cfg["st_steal"] / cfg["st_total"], 3) if cfg["st_total"] else 0.0
result = {
    "pass": ok, "checks": checks,
    "capacity": {"calls_at_once": cfg["capacity"], "source": cfg["cap_source"], "probe_s": cfg["probe_s"], "probe_steps": probe},
    "load": {"load_pct": cfg["load_pct"], "calls_at_once": cfg["conc"], "call_rate_per_s": round(cfg["conc"] / cfg["call_seconds"], 2),
             "call_seconds": cfg["call_seconds"], "calls_offered": cfg["calls_total"],
             "reg_rate_per_s": cfg["reg_rate"], "reg_capacity_per_s": cfg["reg_capacity"], "registrations_offered": cfg["reg_total"], "users": cfg["users"]},
    "calls": {"ok": uac["ok"], "failed": uac["failed"], "callee_failed": uas["failed"], "control_plane_failed": cp_failed,
              "sipp_timeouts": uac["timeouts"] + uas["timeouts"], "failed_reasons": uac["reasons"], "callee_failed_reasons": uas["reasons"],
              "retransmissions": uac["retransmissions"] + uas["retransmissions"],
              "control_plane_answered": int(metrics.get("sip_calls_answered_total", 0)), "control_plane_completed": int(metrics.get("sip_calls_completed_total", 0)),
              "media_allocation_failures": int(metrics.get("sip_media_allocation_failures_total", 0)), "sipp_rc": cfg["uac_rc"]},
    "registrations": {"ok": reg["ok"], "failed": reg["failed"], "sipp_timeouts": reg["timeouts"], "failed_reasons": reg["reasons"],
                      "retransmissions": reg["retransmissions"], "contacts_at_end": metrics.get("sip_registered_contacts"), "sipp_rc": cfg["reg_rc"]},
    "media": {"packets_in": pin, "packets_forwarded": fwd, "relay_loss_pct": round(loss, 4), "rtp_pct_of_expected": round(rtp, 2)},
    "left": {"legs": legs_left, "free_ports_start": cfg["free0"], "free_ports_end": free1,
             "transactions": tx_left, "calls_active": calls_left, "drain_s": cfg["drain_s"]},
    "rss": {"warmup_s": cfg["warmup_s"], "base_at_s": cfg["rss_base_t"], "end_at_s": cfg["rss_end_t"], "media_plane": rss_mp, "control_plane": rss_cp},
    "cpu_s": {"media_plane": round(cfg["mp_ticks"] / cfg["hz"], 2), "control_plane": round(cfg["cp_ticks"] / cfg["hz"], 2)},
    "steal_pct": steal, "sipp_cpu_pct": cfg["sipp_pct"], "other_cpu_pct": cfg["other_pct"], "udp_drops_other": max(0, cfg["udp_drops"]), "udp_drops_caller_rtp": cfg["udp_caller"], "udp_drops_callee_rtp": cfg["udp_callee"],
    "duration_s": cfg["duration"], "load_s": cfg["load_s"], "wall_s": cfg["wall_s"],
}
if cfg["early"]: result["warning"] = cfg["early"]
e = lambda *a: print(*a, file=sys.stderr)
mark = lambda k: "ok  " if checks[k] else "FAIL"
e("soak %s: %d s at %d %% of %d calls at once (%s%s): %d calls at once, %.2f calls/s x %d s with RTP both ways, %d REGISTER/s over %d users"
  % ("PASSED" if ok else "FAILED", cfg["duration"], cfg["load_pct"], cfg["capacity"], cfg["cap_source"],
     (", probe %d s" % cfg["probe_s"]) if cfg["cap_source"] == "probe" else "", cfg["conc"], cfg["conc"] / cfg["call_seconds"],
     cfg["call_seconds"], cfg["reg_rate"], cfg["users"]))
unfinished = cfg["calls_total"] - uac["ok"] - uac["failed"]
e("  calls: %d of %d ok%s; failed: caller %d, callee %d, control plane %d (sipp timeouts %d%s)"
  % (uac["ok"], cfg["calls_total"], (", %d not made or not finished (caller sipp exit %d)" % (unfinished, cfg["uac_rc"])) if unfinished else "",
     uac["failed"], uas["failed"], cp_failed, uac["timeouts"] + uas["timeouts"],
     ("; " + ", ".join("%s %d" % kv for kv in {**uac["reasons"], **uas["reasons"]}.items())) if uac["reasons"] or uas["reasons"] else ""))
e("  registrations: %d of %d ok, %d failed%s%s; %s contacts registered at the end"
  % (reg["ok"], cfg["reg_total"], reg["failed"], (" (sipp exit %d)" % cfg["reg_rc"]) if cfg["reg_rc"] else "", (" (" + ", ".join("%s %d" % kv for kv in reg["reasons"].items()) + ")") if reg["reasons"] else "",
     "%d" % metrics["sip_registered_contacts"] if "sip_registered_contacts" in metrics else "?"))
e("  media: %d RTP packets relayed of %d received (relay loss %.4f %%), %.1f %% of what the phones were to send" % (fwd, pin, loss, rtp))
e("  [%s] legs left %s  [%s] free ports %s of %s  [%s] transactions left %s  [%s] calls active %s  (drained in %d s)"
  % (mark("legs_left_0"), legs_left, mark("free_ports_back"), free1, cfg["free0"], mark("transactions_left_0"),
     "%d" % tx_left if tx_left is not None else "?", mark("calls_active_0"), "%d" % calls_left if calls_left is not None else "?", cfg["drain_s"]))
for name, r, k in (("media plane", rss_mp, "rss_growth_media_plane"), ("control plane", rss_cp, "rss_growth_control_plane")):
    e("  [%s] RSS %s: %.1f MB at %d s -> %.1f MB at %d s: %+.3f %% (max %.1f MB, %.1f MB after the drain, %.1f MB at start)"
      % (mark(k), name, r["base_kb"] / 1024, cfg["rss_base_t"], r["end_kb"] / 1024, cfg["rss_end_t"], r["growth_pct"] or 0,
         r["max_kb"] / 1024, r["after_drain_kb"] / 1024, r["start_kb"] / 1024))
e("  [%s] failed calls  [%s] failed registrations  [%s] relay loss" % (mark("no_failed_calls"), mark("no_failed_registrations"), mark("relay_loss")))
e("  CPU: media plane %.1f s, control plane %.1f s over %.0f s of load; sipp %.1f %% of a CPU, other processes %.1f %% of a CPU%s; steal %.3f %%"
  % (result["cpu_s"]["media_plane"], result["cpu_s"]["control_plane"], float(cfg["load_s"]), cfg["sipp_pct"], cfg["other_pct"],
     " (a busy machine: the figures are not this product's alone)" if cfg["other_pct"] > 10 else "", steal))
e("  kernel UDP receive drops: %d at bob's sipp RTP socket (the echo), %d at alice's (never read, by design), %d elsewhere on the machine"
  % (cfg["udp_callee"], cfg["udp_caller"], max(0, cfg["udp_drops"])))
if cfg["early"]: e("  warning: " + cfg["early"])
print(json.dumps(result, separators=(",", ":")))
sys.exit(0 if ok else 1)
EOF
