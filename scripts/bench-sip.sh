#!/usr/bin/env bash
# SIP signalling benchmark: Kamailio + rtpengine (the standard carrier stack) and/or our control
# plane + media plane, each pinned to CPU 0, driven by sipp pinned to CPU 1, on loopback only.
#
#   TARGETS="kamailio controlplane" USERS=10000 DURATION=10 scripts/bench-sip.sh
#
# For each target:
#   0. smoke: the callee registers, one authenticated call with RTP both ways (uac-call.xml ->
#      uas-answer.xml -rtp_echo), 2 s; the run stops if it fails.
#   a. REGISTER storm (scripts/sipp/register.xml, REGISTER -> 401 -> REGISTER with credentials ->
#      200, over the USERS subscribers but the call mode's callee, who registers once, from the
#      UAS port): the highest sustained rate, searched by doubling the offered
#      rate from REG_RATE_START (then BISECT halvings between the last pass and the first fail). A
#      step passes when at most FAIL_PCT % of its registrations failed, at most RETRANS_PCT % needed
#      a retransmission, and the completed rate is at least 95 % of the offered one.
#   b. call rate (uac-call-short.xml -> uas-fast.xml: INVITE -> 407 -> ACK, INVITE with
#      credentials -> 200 -> ACK, BYE -> 200, no RTP, media still anchored in rtpengine or the media
#      plane): the same search from CALL_RATE_START.
#   c. fork2: calls to a callee with two registered contacts, forked in parallel to both. FORK_CALLEE
#      registers twice (register.xml from UAS_PORT and from RING_PORT); on UAS_PORT uas-fast.xml
#      answers at once, on RING_PORT uas-ring-cancel.xml rings (180) and gets the CANCEL when
#      the other answers (200 to the CANCEL, 487 to the INVITE, ACK). Kamailio: lookup("location")
#      makes a branch of each contact, t_relay() forks, tm cancels the ringing branch on the 200,
#      rtpengine offer per branch (bench/kamailio/kamailio.cfg). Ours: [routing] fork = "parallel"
#      (the default).
#   d. fwd-noanswer: calls to FWD_CALLEE, whose only contact (uas-ring-cancel.xml on RING_PORT)
#      rings and never answers; after FWD_RING_S seconds the call is forwarded to FWD_TARGET, who
#      answers at once (uas-fast.xml on UAS_PORT). Ours: `control-plane settings set FWD_CALLEE@DOMAIN
#      forward.no_answer=FWD_TARGET forward.no_answer_s=FWD_RING_S` (the caller gets 181, the
#      forwarded INVITE Diversion and History-Info). Kamailio: -A FWD_NOANSWER_USER / _TARGET / _MS
#      (t_set_fr on the callee's transaction, failure_route relays to the target on the timeout,
#      with a Diversion header; no 181).
#      Every call rings FWD_RING_S: the completed rate is taken over sipp's wall time less
#      FWD_RING_S, and sipp's -l is LIMIT + rate × FWD_RING_S (the calls ringing at any time).
#   c and d: the callers of b (users after the callee) with uac-call-bench.xml (uac-call-short.xml
#   that also accepts a 181) and -auth_uri CALLEE@DOMAIN; the same search from CALL_RATE_START.
#   The callees are the named subscribers (bob; carol -> dave), whom the REGISTER storm does not
#   register elsewhere. A step also needs a ringing contact cancelled (CANCEL, 200, 487, ACK) for
#   every successful call and no failed ringing call, within FAIL_PCT (the ringing sipp's counters:
#   ring_ok, ring_failed).
#   The target's CPU (utime+stime of its processes and their children, /proc/PID/stat) over a step
#   divided by the successful registrations or calls gives CPU µs per REGISTER / per call.
#
# Output: a human summary on stderr and one JSON line per target on stdout ("register", "calls",
# and "fork2" / "fwd_noanswer", with the fields of "calls", when those modes run). Each step also prints
# the CPU used by anything else on the machine ("other", % of one CPU: a concurrent build spoils
# the figures), steal, and the kernel's UDP receive-buffer drops.
#
# Env (defaults in brackets):
#   TARGETS [kamailio controlplane]   controlplane is skipped (with a note) if CP_BIN is missing
#   MODES [register calls]: any of register calls fork2 fwd-noanswer (run in that order), e.g.
#     MODES="register calls fork2 fwd-noanswer" for all
#   FORK_CALLEE [bob]  FWD_CALLEE [carol]  FWD_TARGET [dave]  FWD_RING_S [1] (ring time before the
#     forward, seconds, the same for both targets)  RING_PORT [5073] (the ringing contact)
#   FORK2_RATE / FWD_RATE: one fixed-rate step instead of a search (as CALL_RATE)
#   USERS [10000] subscribers (scripts/sipp/make-users.sh)   DOMAIN [sip.test]
#   DURATION [10] seconds per step     REG_RATE / CALL_RATE: one fixed-rate step instead of a search
#   REG_RATE_START [500] REG_RATE_MAX [64000]   CALL_RATE_START [100] CALL_RATE_MAX [16000]
#   BISECT [2]  FAIL_PCT [0.1]  RETRANS_PCT [1]  CALL_HOLD_MS [0]  LIMIT [2000] (sipp -l)
#   TARGET_CPU [0] SIPP_CPU [1]        SKIP_REGISTER=1 / SKIP_CALLS=1 (drop them from MODES) / SKIP_SMOKE=1
#   KAM_MEM [tlsf]: Kamailio's memory manager (-x); Debian's default, qm, costs ~20 % more CPU per
#     REGISTER (qm_malloc was 19 % of the worker's profile)
#   KAM_PORT [5080] CP_PORT [5060]     UAS_PORT [5070] UAC_PORT [5071] REG_PORT [5072]
#   RTPENGINE_NG [127.0.0.1:2223] RTPENGINE_PORTS [40000-59999]
#   CP_BIN [target/release/control-plane]  MP_BIN [target/release/media-plane]
#   MP_GRPC [127.0.0.1:9190] MP_PORTS [30000-39999]
#   DB_DIR [/dev/shm/bench-sip]: the SQLite databases. On tmpfs by default: this VM's disk takes
#     ~3 ms per fsync, which would cap any SQLite-backed registrar at a few hundred REGISTER/s with
#     synchronous commits; DB_DIR=target/bench-sip measures that instead.
#   OUT [target/bench-sip]: logs, sipp statistics, generated users.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)

TARGETS=${TARGETS:-kamailio controlplane}
MODES=${MODES:-register calls}
USERS=${USERS:-10000}
DOMAIN=${DOMAIN:-sip.test}
DURATION=${DURATION:-10}
REG_RATE=${REG_RATE:-}
CALL_RATE=${CALL_RATE:-}
FORK2_RATE=${FORK2_RATE:-}
FWD_RATE=${FWD_RATE:-}
FORK_CALLEE=${FORK_CALLEE:-bob}
FWD_CALLEE=${FWD_CALLEE:-carol}
FWD_TARGET=${FWD_TARGET:-dave}
FWD_RING_S=${FWD_RING_S:-1}
REG_RATE_START=${REG_RATE_START:-500}
REG_RATE_MAX=${REG_RATE_MAX:-64000}
CALL_RATE_START=${CALL_RATE_START:-100}
CALL_RATE_MAX=${CALL_RATE_MAX:-16000}
BISECT=${BISECT:-2}
FAIL_PCT=${FAIL_PCT:-0.1}
RETRANS_PCT=${RETRANS_PCT:-1}
CALL_HOLD_MS=${CALL_HOLD_MS:-0}
LIMIT=${LIMIT:-2000}
TARGET_CPU=${TARGET_CPU:-0}
SIPP_CPU=${SIPP_CPU:-1}
KAM_PORT=${KAM_PORT:-5080}
KAM_MEM=${KAM_MEM:-tlsf}
CP_PORT=${CP_PORT:-5060}
UAS_PORT=${UAS_PORT:-5070}
UAC_PORT=${UAC_PORT:-5071}
REG_PORT=${REG_PORT:-5072}
RING_PORT=${RING_PORT:-5073}
RTPENGINE_NG=${RTPENGINE_NG:-127.0.0.1:2223}
RTPENGINE_PORTS=${RTPENGINE_PORTS:-40000-59999}
CP_BIN=${CP_BIN:-target/release/control-plane}
MP_BIN=${MP_BIN:-target/release/media-plane}
MP_GRPC=${MP_GRPC:-127.0.0.1:9190}
MP_PORTS=${MP_PORTS:-30000-39999}
DB_DIR=${DB_DIR:-/dev/shm/bench-sip}
OUT=${OUT:-target/bench-sip}
SIPP_DIR=$ROOT/scripts/sipp
HZ=$(getconf CLK_TCK)

log() { echo "bench-sip: $*" >&2; }
die() { log "$*"; exit 1; }

for m in $MODES; do
  case $m in register|calls|fork2|fwd-noanswer) ;; *) die "unknown mode $m (register calls fork2 fwd-noanswer)";; esac
done
[ "${SKIP_REGISTER:-0}" != 1 ] || MODES=$(echo " $MODES " | sed 's/ register / /g')
[ "${SKIP_CALLS:-0}" != 1 ] || MODES=$(echo " $MODES " | sed 's/ calls / /g')
has_mode() { case " $MODES " in *" $1 "*) return 0;; esac; return 1; }
case $FWD_RING_S in ''|*[!0-9]*) die "FWD_RING_S must be whole seconds (1..600)";; esac
[ "$FWD_RING_S" -ge 1 ] && [ "$FWD_RING_S" -le 600 ] || die "FWD_RING_S must be 1..600"

# ---------------------------------------------------------------------------------------------
# Prerequisites (Debian 12 packages; installed if missing).
need_pkgs=()
command -v sipp >/dev/null || need_pkgs+=(sip-tester)
command -v sqlite3 >/dev/null || need_pkgs+=(sqlite3)
case " $TARGETS " in *" kamailio "*)
  command -v kamailio >/dev/null || need_pkgs+=(kamailio)
  [ -e /usr/lib/x86_64-linux-gnu/kamailio/modules/db_sqlite.so ] || need_pkgs+=(kamailio-sqlite-modules)
  command -v rtpengine >/dev/null || need_pkgs+=(rtpengine-daemon)
esac
if [ ${#need_pkgs[@]} -gt 0 ]; then
  log "installing ${need_pkgs[*]}"
  SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need_pkgs[@]}" >/dev/null
fi
[ "$(nproc)" -ge 2 ] || log "warning: $(nproc) CPU: target and sipp share it"

mkdir -p "$OUT" "$DB_DIR"
OUT=$(cd "$OUT" && pwd)
DB_DIR=$(cd "$DB_DIR" && pwd)
[ -f "$SIPP_DIR/pcmu-1s.raw" ] || "$SIPP_DIR/make-audio.sh" >/dev/null
CALLEES=1 "$SIPP_DIR/make-users.sh" "$USERS" "$OUT/users" 2>/dev/null
CALLEE=$(sed -n 2p "$OUT/users/callees.csv" | cut -d';' -f1)
# The callees of fork2 and fwd-noanswer: named subscribers (password secret), registration CSVs
# for register.xml and the callers of calls.csv redirected to them.
for u in "$FORK_CALLEE" "$FWD_CALLEE" "$FWD_TARGET"; do
  printf 'SEQUENTIAL\n%s;secret;%s;[authentication username=%s password=secret]\n' "$u" "$DOMAIN" "$u" >"$OUT/users/$u.csv"
  awk -F';' -v OFS=';' -v c="$u" 'NR == 1 { print; next } { $5 = c; print }' "$OUT/users/calls.csv" >"$OUT/users/calls-$u.csv"
done

# ---------------------------------------------------------------------------------------------
# Process bookkeeping: everything started is killed on exit (and only that).
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
}
trap cleanup EXIT
trap 'exit 130' INT TERM
forget() { local p=$1 keep=() x; for x in "${PIDS[@]}"; do [ "$x" = "$p" ] || keep+=("$x"); done; PIDS=("${keep[@]}"); }
stop() { # stop PID: TERM, wait up to 5 s, KILL
  local pid=$1
  kill "$pid" 2>/dev/null || true
  for _ in $(seq 1 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
  kill -9 "$pid" 2>/dev/null || true
  wait "$pid" 2>/dev/null || true
  forget "$pid"
}

# utime+stime (clock ticks) of the PIDs given and all their descendants.
tree_ticks() {
  { cat /proc/[0-9]*/stat 2>/dev/null || true; } | awk -v roots="$*" '
    { pid = $1; s = $0; sub(/^.*\) /, "", s); split(s, f, " ")
      ppid[pid] = f[2]; t[pid] = f[12] + f[13] }
    END {
      n = split(roots, r, " "); for (i = 1; i <= n; i++) root[r[i]] = 1
      sum = 0
      for (p in t) { q = p; for (d = 0; d < 64 && q != "" && q != 0; d++) { if (q in root) { sum += t[p]; break } q = ppid[q] } }
      print sum }'
}
# UDP datagrams the kernel dropped for a full receive buffer (all sockets)
udp_drops() { awk '/^Udp:/ { if (++n == 2) print $6 }' /proc/net/snmp; }
# "total steal busy" jiffies of all CPUs from /proc/stat (busy: all but idle and iowait)
cpu_stat() { awk '/^cpu /{ t = 0; for (i = 2; i <= NF; i++) t += $i; print t, $9, t - $5 - $6; exit }' /proc/stat; }

# One SIP request, any reply: the server is up.
sip_ready() { # HOST PORT
  python3 - "$1" "$2" <<'EOF' 2>/dev/null
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
wait_sip() { # NAME PID HOST PORT LOG
  for _ in $(seq 1 100); do
    kill -0 "$2" 2>/dev/null || { log "$1 exited; its log ($5):"; tail -30 "$5" >&2; exit 1; }
    sip_ready "$3" "$4" && return 0
    sleep 0.1
  done
  log "$1 does not answer SIP on $3:$4; its log ($5):"; tail -30 "$5" >&2; exit 1
}
ng_ready() { # HOST:PORT
  python3 - "${1%:*}" "${1#*:}" <<'EOF' 2>/dev/null
import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.settimeout(0.2)
s.sendto(b"ready d7:command4:pinge", (sys.argv[1], int(sys.argv[2])))
sys.exit(0 if s.recv(100) == b"ready d6:result4:ponge" else 1)
EOF
}

# ---------------------------------------------------------------------------------------------
# Targets. Each start_* sets SIP_HOST, SIP_PORT, SIP_PIDS (the signalling processes measured),
# MEDIA_PIDS (the media relay measured), and appends what it started to PIDS.

start_kamailio() {
  local db=$DB_DIR/kamailio.db
  bench/kamailio/setup-db.sh "$db" "$OUT/users/subscribers.sql" 2>>"$OUT/kamailio.setup.log"
  # rtpengine first: the rtpengine module pings it once at start and would otherwise disable it.
  taskset -c "$TARGET_CPU" rtpengine --config-file=bench/rtpengine/rtpengine.conf --config-section=rtpengine \
    --foreground --listen-ng="$RTPENGINE_NG" --port-min="${RTPENGINE_PORTS%-*}" --port-max="${RTPENGINE_PORTS#*-}" \
    >"$OUT/rtpengine.log" 2>&1 &
  local rtp=$!; PIDS+=("$rtp")
  local ok=0
  for _ in $(seq 1 100); do
    kill -0 $rtp 2>/dev/null || { log "rtpengine exited:"; tail "$OUT/rtpengine.log" >&2; exit 1; }
    if ng_ready "$RTPENGINE_NG"; then ok=1; break; fi
    sleep 0.1
  done
  [ $ok = 1 ] || die "rtpengine does not answer ng ping on $RTPENGINE_NG"
  # Forwarding on no answer for FWD_CALLEE, only when that mode runs.
  local fwd=()
  if has_mode fwd-noanswer; then
    fwd=(-A "FWD_NOANSWER_USER=\"$FWD_CALLEE\"" -A "FWD_NOANSWER_TARGET=\"$FWD_TARGET\"" -A "FWD_NOANSWER_MS=$((FWD_RING_S * 1000))")
  fi
  # -DD: workers forked, the main process stays in the foreground (its pid is $!). Every
  # Kamailio process inherits the CPU affinity.
  taskset -c "$TARGET_CPU" kamailio -f bench/kamailio/kamailio.cfg -DD -E -m 256 -M 32 -x "$KAM_MEM" \
    -A "LISTEN_UDP=udp:127.0.0.1:$KAM_PORT" -A "DBURL=\"sqlite://$db\"" -A "RTPENGINE_SOCK=\"udp:$RTPENGINE_NG\"" \
    "${fwd[@]}" >"$OUT/kamailio.log" 2>&1 &
  local kam=$!; PIDS+=("$kam")
  wait_sip kamailio $kam 127.0.0.1 "$KAM_PORT" "$OUT/kamailio.log"
  SIP_HOST=127.0.0.1 SIP_PORT=$KAM_PORT SIP_PIDS="$kam" MEDIA_PIDS="$rtp"
  TARGET_VERSION="kamailio $(kamailio -v | sed -n 's/^version: kamailio \([^ ]*\).*/\1/p') + rtpengine $(rtpengine --version 2>&1 | sed 's/.*Version: //')"
}

# ============================== start_controlplane: OURS, TO BE CHECKED ==============================
# Our control plane + media plane, written against the CLI and the TOML keys of
# control-plane/src/config.rs as of this script (adjust here if they change):
#   control-plane --config FILE.toml
#   control-plane subscriber import --config FILE.toml --domain sip.test users.csv   (user;password;...)
#   control-plane subscriber add --config FILE.toml --user alice --domain sip.test --password secret
#   media-plane --grpc-listen ADDR --media-ip 127.0.0.1 --ports A-B --cores 1 --first-cpu N
# Requirements from sipp 3.6.1 (see scripts/sipp/README.md):
#   - the 401/407 must offer MD5 FIRST (or only MD5): sipp aborts the whole run on a challenge
#     whose first (Proxy-|WWW-)Authenticate is not MD5, even if an MD5 one follows; the control
#     plane's default order is SHA-256 then MD5, hence auth.algorithms = ["MD5"] below;
#   - digest uri: this script passes -auth_uri (sip:DOMAIN for REGISTER, sip:CALLEE@DOMAIN for
#     INVITE) so that it equals the Request-URI; all benchmark calls go to one callee for that.
start_controlplane() {
  [ -x "$CP_BIN" ] || { log "controlplane: $CP_BIN not built: skipped"; return 1; }
  [ -x "$MP_BIN" ] || { log "controlplane: $MP_BIN not built: skipped"; return 1; }
  local db=$DB_DIR/control-plane.db cfg=$OUT/control-plane.toml
  rm -f "$db" "$db-wal" "$db-shm"
  cat >"$cfg" <<EOF
# written by scripts/bench-sip.sh
[sip]
listen = ["udp:127.0.0.1:$CP_PORT", "tcp:127.0.0.1:$CP_PORT"]
domains = ["$DOMAIN"]
[auth]
algorithms = ["MD5"]   # sipp 3.6.1 reads the first challenge only, and does MD5 only
[media]
grpc = "http://$MP_GRPC"
[store]
path = "$db"
EOF
  printf 'SEQUENTIAL\nalice;secret\nbob;secret\ncarol;secret\ndave;secret\n' >"$OUT/users/named.csv"
  "$CP_BIN" subscriber import --config "$cfg" --domain "$DOMAIN" "$OUT/users/named.csv" >/dev/null \
    && "$CP_BIN" subscriber import --config "$cfg" --domain "$DOMAIN" "$OUT/users/users.csv" >&2 \
    || die "controlplane: subscriber import failed"
  # Forwarding on no answer (fwd-noanswer); parallel forking (fork2) is the default of [routing].
  if has_mode fwd-noanswer; then
    "$CP_BIN" settings set --config "$cfg" "$FWD_CALLEE@$DOMAIN" "forward.no_answer=$FWD_TARGET" \
      "forward.no_answer_s=$FWD_RING_S" >/dev/null || die "controlplane: settings set failed"
  fi
  # Media plane on the target CPU (it pins its core thread to --first-cpu itself).
  taskset -c "$TARGET_CPU" "$MP_BIN" --grpc-listen "$MP_GRPC" --media-ip 127.0.0.1 --ports "$MP_PORTS" \
    --cores 1 --first-cpu "$TARGET_CPU" >"$OUT/media-plane.log" 2>&1 &
  local mp=$!; PIDS+=("$mp")
  taskset -c "$TARGET_CPU" "$CP_BIN" --config "$cfg" >"$OUT/control-plane.log" 2>&1 &
  local cp=$!; PIDS+=("$cp")
  wait_sip control-plane $cp 127.0.0.1 "$CP_PORT" "$OUT/control-plane.log"
  SIP_HOST=127.0.0.1 SIP_PORT=$CP_PORT SIP_PIDS="$cp" MEDIA_PIDS="$mp"
  TARGET_VERSION="control-plane $("$CP_BIN" --version 2>/dev/null | awk '{print $NF}') + media-plane $("$MP_BIN" --version 2>/dev/null | awk '{print $NF}')"
}
# ================================================================================================

# ---------------------------------------------------------------------------------------------
# sipp runs (pinned to SIPP_CPU). Statistics: -trace_stat, last row = cumulative counters.
SIPP_COMMON=(-nostdin -trace_stat -fd 1 -trace_err -max_recv_loops 10000 -buff_size 4194304)

# Reads a sipp -trace_stat file; prints "key=value" lines (successful, failed, retrans, elapsed_s,
# rtt_ms, and the failure reasons that are non-zero).
sipp_stats() {
  python3 - "$1" <<'EOF'
import csv, sys
rows = [r for r in csv.reader(open(sys.argv[1]), delimiter=";") if r]
h, last = rows[0], rows[-1]
v = dict(zip(h, last))
def n(k):
    try: return int(float(v.get(k, "0") or 0))
    except ValueError: return 0
def secs(k):  # HH:MM:SS:micro or HH:MM:SS
    p = (v.get(k) or "0:0:0:0").split(":")
    p = [float(x) for x in p] + [0] * (4 - len(p))
    return p[0] * 3600 + p[1] * 60 + p[2] + p[3] / 1e6
print("successful=%d" % n("SuccessfulCall(C)"))
print("failed=%d" % n("FailedCall(C)"))
print("retrans=%d" % n("Retransmissions(C)"))
print("rtt_ms=%.3f" % (secs("ResponseTime1(C)") * 1000))
# 99th percentile of the response time, as the upper bound of its ResponseTimeRepartition1 bucket
buckets = [(k[len("ResponseTimeRepartition1_"):], n(k)) for k in h if k.startswith("ResponseTimeRepartition1_")]
total, acc, p99 = sum(c for _, c in buckets), 0, "0"
for bound, c in buckets:
    acc += c
    if total and acc >= 0.99 * total:
        p99 = bound.lstrip("<"); break
print("rtt_p99_ms=%s" % (p99.replace(">=", "") if p99 else "0"))
reasons = [k[6:-3] + ":" + v[k] for k in h if k.startswith("Failed") and k.endswith("(C)") and k != "FailedCall(C)" and n(k)]
print("reasons=%s" % ",".join(reasons))
EOF
}

# Cumulative successful and failed calls of a sipp -trace_stat file ("0 0" before its first row).
sipp_counts() {
  if [ -s "$1" ]; then
    sipp_stats "$1" | awk -F= '$1 == "successful" { ok = $2 } $1 == "failed" { f = $2 } END { print ok + 0, f + 0 }'
  else
    echo 0 0
  fi
}

# run_step KIND RATE -> sets STEP_* (KIND: reg | call | fork2 | fwd-noanswer)
# For fork2 and fwd-noanswer, RING_STAT is the -trace_stat file of the ringing contact's sipp.
run_step() {
  local kind=$1 rate=$2 total stat name scen inf port extra=() limit=$LIMIT ring_s=0
  total=$(awk -v r="$rate" -v d="$DURATION" 'BEGIN { printf "%d", r * d }')
  case $kind in
    reg) scen=$SIPP_DIR/register.xml inf=$OUT/users/storm.csv port=$REG_PORT extra=(-auth_uri "$DOMAIN") ;;
    call) scen=$SIPP_DIR/uac-call-short.xml inf=$OUT/users/calls.csv port=$UAC_PORT extra=(-auth_uri "$CALLEE@$DOMAIN" -d "$CALL_HOLD_MS" -mp 6100) ;;
    fork2) scen=$SIPP_DIR/uac-call-bench.xml inf=$OUT/users/calls-$FORK_CALLEE.csv port=$UAC_PORT
      extra=(-auth_uri "$FORK_CALLEE@$DOMAIN" -d "$CALL_HOLD_MS" -mp 6100) ;;
    fwd-noanswer) scen=$SIPP_DIR/uac-call-bench.xml inf=$OUT/users/calls-$FWD_CALLEE.csv port=$UAC_PORT
      extra=(-auth_uri "$FWD_CALLEE@$DOMAIN" -d "$CALL_HOLD_MS" -mp 6100)
      ring_s=$FWD_RING_S limit=$((LIMIT + rate * FWD_RING_S)) ;;
  esac
  name=$OUT/$TARGET-$kind-$rate
  rm -f "$name".stat.csv "$name".err.log
  local t0 c0 s0 b0 m0 t1 c1 s1 b1 m1 g0 g1 sp d0 d1 u0=0 u1=0 r0ok=0 r0f=0 r1ok=0 r1f=0
  [ "$kind" != reg ] && u0=$(tree_ticks $UAS_PIDS)
  [ -z "${RING_STAT:-}" ] || read -r r0ok r0f < <(sipp_counts "$RING_STAT")
  read -r c0 s0 b0 < <(cpu_stat); t0=$(tree_ticks $SIP_PIDS); m0=$(tree_ticks $MEDIA_PIDS); d0=$(udp_drops)
  local started ended; started=$(date +%s.%N)
  taskset -c "$SIPP_CPU" sipp "$SIP_HOST:$SIP_PORT" -sf "$scen" -inf "$inf" -p "$port" -r "$rate" -m "$total" -l "$limit" \
    -recv_timeout 5000 -timeout "$((DURATION * 3 + 30 + ring_s))" "${extra[@]}" "${SIPP_COMMON[@]}" \
    -stf "$name.stat.csv" -error_file "$name.err.log" >"$name.out" 2>&1 &
  sp=$!; PIDS+=("$sp")
  # sipp's own CPU, sampled until it exits
  g1=0; while kill -0 $sp 2>/dev/null; do g0=$(tree_ticks $sp); [ -n "$g0" ] && g1=$g0; sleep 0.5; done
  wait $sp 2>/dev/null || true; ended=$(date +%s.%N); forget $sp
  read -r c1 s1 b1 < <(cpu_stat); t1=$(tree_ticks $SIP_PIDS); m1=$(tree_ticks $MEDIA_PIDS); d1=$(udp_drops)
  [ "$kind" != reg ] && u1=$(tree_ticks $UAS_PIDS)
  g1=$((g1 + u1 - u0))   # the generator: the UAC sipp, and for calls the UAS sipps too
  STEP_udp_drops=$((d1 - d0))
  [ -s "$name.stat.csv" ] || { log "sipp wrote no statistics; its output ($name.out):"; tail -20 "$name.out" >&2; exit 1; }
  local k v
  STEP_successful=0 STEP_failed=0 STEP_retrans=0 STEP_rtt_ms=0 STEP_rtt_p99_ms=0 STEP_reasons=
  while IFS='=' read -r k v; do printf -v "STEP_$k" '%s' "$v"; done < <(sipp_stats "$name.stat.csv")
  # sipp's ElapsedTime is in whole seconds: the wall time of the sipp process instead
  STEP_elapsed_s=$(awk -v a="$started" -v b="$ended" 'BEGIN { printf "%.3f", b - a }')
  STEP_rate=$rate
  # completed rate: over the wall time, less the ring time every call of fwd-noanswer waits
  STEP_per_s=$(awk -v n="$STEP_successful" -v e="$STEP_elapsed_s" -v r="$ring_s" 'BEGIN { e -= r; printf "%.1f", (e > 0 ? n / e : 0) }')
  STEP_sip_us=$(awk -v t=$((t1 - t0)) -v n="$STEP_successful" -v hz="$HZ" 'BEGIN { printf "%.1f", (n > 0 ? t * 1e6 / hz / n : 0) }')
  STEP_media_us=$(awk -v t=$((m1 - m0)) -v n="$STEP_successful" -v hz="$HZ" 'BEGIN { printf "%.1f", (n > 0 ? t * 1e6 / hz / n : 0) }')
  STEP_sip_cpu_pct=$(awk -v t=$((t1 - t0)) -v e="$STEP_elapsed_s" -v hz="$HZ" 'BEGIN { printf "%.0f", (e > 0 ? t / hz / e * 100 : 0) }')
  STEP_media_cpu_pct=$(awk -v t=$((m1 - m0)) -v e="$STEP_elapsed_s" -v hz="$HZ" 'BEGIN { printf "%.0f", (e > 0 ? t / hz / e * 100 : 0) }')
  STEP_sipp_cpu_pct=$(awk -v t="$g1" -v e="$STEP_elapsed_s" -v hz="$HZ" 'BEGIN { printf "%.0f", (e > 0 ? t / hz / e * 100 : 0) }')
  # CPU used by anything else (another build, ...) while the step ran, in % of one CPU: the
  # figures are only clean when this is near 0.
  STEP_other_pct=$(awk -v b=$((b1 - b0 - (t1 - t0) - (m1 - m0) - g1)) -v e="$STEP_elapsed_s" -v hz="$HZ" \
    'BEGIN { v = (e > 0 ? b / hz / e * 100 : 0); printf "%.0f", (v < 0 ? 0 : v) }')
  STEP_steal_pct=$(awk -v d=$((c1 - c0)) -v s=$((s1 - s0)) 'BEGIN { printf "%.2f", (d > 0 ? s * 100 / d : 0) }')
  STEP_pass=$(awk -v ok="$STEP_successful" -v f="$STEP_failed" -v r="$STEP_retrans" -v tot="$total" -v ps="$STEP_per_s" \
    -v rate="$rate" -v fp="$FAIL_PCT" -v rp="$RETRANS_PCT" \
    'BEGIN { print ((ok > 0 && f * 100 <= fp * tot && r * 100 <= rp * tot && ps >= 0.95 * rate) ? 1 : 0) }')
  local ring_log="" ring_json=""
  if [ -n "${RING_STAT:-}" ]; then
    # The ringing contact's counters are written every second: read them once the step settled.
    sleep 2
    read -r r1ok r1f < <(sipp_counts "$RING_STAT")
    STEP_ring_ok=$((r1ok - r0ok)) STEP_ring_failed=$((r1f - r0f))
    STEP_pass=$(awk -v p="$STEP_pass" -v ok="$STEP_successful" -v rok="$STEP_ring_ok" -v rf="$STEP_ring_failed" -v tot="$total" -v fp="$FAIL_PCT" \
      'BEGIN { d = ok - rok; if (d < 0) d = 0; print ((p == 1 && rf * 100 <= fp * tot && d * 100 <= fp * tot) ? 1 : 0) }')
    ring_log=", ringing contact cancelled ${STEP_ring_ok} ok ${STEP_ring_failed} failed"
    ring_json=",\"ring_ok\":$STEP_ring_ok,\"ring_failed\":$STEP_ring_failed"
  fi
  log "  $kind $rate/s: $STEP_successful ok, $STEP_failed failed${STEP_reasons:+ ($STEP_reasons)}, $STEP_retrans retrans, $STEP_per_s/s, rtt avg ${STEP_rtt_ms%.*} ms p99 <${STEP_rtt_p99_ms} ms, CPU: SIP ${STEP_sip_cpu_pct}% = ${STEP_sip_us} µs/op, media ${STEP_media_cpu_pct}% = ${STEP_media_us} µs/op, sipp ${STEP_sipp_cpu_pct}%, other ${STEP_other_pct}%; steal ${STEP_steal_pct}%, kernel UDP drops ${STEP_udp_drops}${ring_log} -> $([ "$STEP_pass" = 1 ] && echo pass || echo FAIL)"
  STEPS_JSON+="${STEPS_JSON:+,}{\"kind\":\"$kind\",\"rate\":$rate,\"ok\":$STEP_successful,\"failed\":$STEP_failed,\"retrans\":$STEP_retrans,\"per_s\":$STEP_per_s,\"rtt_ms\":$STEP_rtt_ms,\"rtt_p99_ms\":$STEP_rtt_p99_ms,\"sip_cpu_us\":$STEP_sip_us,\"media_cpu_us\":$STEP_media_us,\"sip_cpu_pct\":$STEP_sip_cpu_pct,\"media_cpu_pct\":$STEP_media_cpu_pct,\"sipp_cpu_pct\":$STEP_sipp_cpu_pct,\"other_cpu_pct\":$STEP_other_pct,\"steal_pct\":$STEP_steal_pct,\"udp_drops\":$STEP_udp_drops${ring_json},\"pass\":$([ "$STEP_pass" = 1 ] && echo true || echo false)}"
  # Let the target's transactions expire before the next step (tm wait timer, retransmissions).
  [ -n "${RING_STAT:-}" ] || sleep 2
}

# search KIND FIXED START MAX -> BEST_* of the highest passing step (BEST_rate 0 if none)
search() {
  local kind=$1 fixed=$2 rate=$3 max=$4 fail=0 steps=0
  BEST_rate=0 BEST_per_s=0 BEST_sip_us=0 BEST_media_us=0 BEST_failed=0 BEST_retrans=0 BEST_rtt_ms=0 BEST_sipp_cpu_pct=0
  keep() { BEST_rate=$STEP_rate BEST_per_s=$STEP_per_s BEST_sip_us=$STEP_sip_us BEST_media_us=$STEP_media_us \
           BEST_failed=$STEP_failed BEST_retrans=$STEP_retrans BEST_rtt_ms=$STEP_rtt_ms BEST_sipp_cpu_pct=$STEP_sipp_cpu_pct; }
  if [ -n "$fixed" ]; then
    run_step "$kind" "$fixed"; keep; BEST_pass=$STEP_pass; return
  fi
  while [ "$rate" -le "$max" ] && [ $steps -lt 16 ]; do
    run_step "$kind" "$rate"; steps=$((steps + 1))
    if [ "$STEP_pass" = 1 ]; then keep; rate=$((rate * 2)); else fail=$rate; break; fi
  done
  local i=0 mid
  while [ $fail -gt 0 ] && [ "$BEST_rate" -gt 0 ] && [ $i -lt "$BISECT" ]; do
    mid=$(((BEST_rate + fail) / 2)); i=$((i + 1))
    [ $mid -gt "$BEST_rate" ] && [ $mid -lt $fail ] || break
    run_step "$kind" "$mid"
    if [ "$STEP_pass" = 1 ]; then keep; else fail=$mid; fi
  done
  BEST_pass=$([ "$BEST_rate" -gt 0 ] && echo 1 || echo 0)
}

# Registers the benchmark callee with its Contact on UAS_PORT, then starts the answering UAS.
start_uas() { # SCENARIO [sipp args...]
  local scen=$1; shift
  taskset -c "$SIPP_CPU" sipp "$SIP_HOST:$SIP_PORT" -sf "$SIPP_DIR/register.xml" -inf "$OUT/users/callees.csv" -p "$UAS_PORT" \
    -m "$(($(wc -l <"$OUT/users/callees.csv") - 1))" -auth_uri "$DOMAIN" -timeout 20 -nostdin -trace_err \
    -error_file "$OUT/$TARGET-uas-register.err.log" >"$OUT/$TARGET-uas-register.out" 2>&1 \
    || die "the callee could not register (see $OUT/$TARGET-uas-register.*)"
  taskset -c "$SIPP_CPU" sipp "$SIP_HOST:$SIP_PORT" -sf "$SIPP_DIR/$scen" -p "$UAS_PORT" -nostdin -trace_err \
    -error_file "$OUT/$TARGET-uas.err.log" -buff_size 4194304 "$@" >"$OUT/$TARGET-uas.out" 2>&1 &
  UAS_PID=$!; PIDS+=("$UAS_PID"); UAS_PIDS=$UAS_PID
  sleep 0.3
  kill -0 $UAS_PID 2>/dev/null || { log "UAS sipp exited:"; tail -20 "$OUT/$TARGET-uas.out" >&2; exit 1; }
}

# Registers USER (its CSV in $OUT/users) with its Contact on PORT.
register_contact() { # USER PORT
  local u=$1 port=$2 name=$OUT/$TARGET-register-$1-$2
  taskset -c "$SIPP_CPU" sipp "$SIP_HOST:$SIP_PORT" -sf "$SIPP_DIR/register.xml" -inf "$OUT/users/$u.csv" -p "$port" \
    -m 1 -auth_uri "$DOMAIN" -timeout 20 -nostdin -trace_err -error_file "$name.err.log" >"$name.out" 2>&1 \
    || die "$u could not register on :$port (see $name.*)"
}
# Starts a UAS sipp on PORT; its pid in LISTENER_PID, its counters (-trace_stat, every second) in
# $OUT/TARGET-NAME.stat.csv.
start_listener() { # NAME PORT SCENARIO [sipp args...]
  local name=$OUT/$TARGET-$1 port=$2 scen=$3; shift 3
  rm -f "$name.stat.csv"
  taskset -c "$SIPP_CPU" sipp "$SIP_HOST:$SIP_PORT" -sf "$SIPP_DIR/$scen" -p "$port" -nostdin -trace_err \
    -error_file "$name.err.log" -buff_size 4194304 -trace_stat -fd 1 -stf "$name.stat.csv" "$@" >"$name.out" 2>&1 &
  LISTENER_PID=$!; PIDS+=("$LISTENER_PID")
  sleep 0.3
  kill -0 $LISTENER_PID 2>/dev/null || { log "UAS sipp ($scen on :$port) exited:"; tail -20 "$name.out" >&2; exit 1; }
}

# The best step of a call search (BEST_*): JSON with the fields of "calls" (EXTRA: more fields),
# and the summary line (LABEL).
call_json() { # [EXTRA]
  local total_us
  total_us=$(awk -v a="$BEST_sip_us" -v b="$BEST_media_us" 'BEGIN { printf "%.1f", a + b }')
  echo "{\"max_rate\":$BEST_rate,\"per_s\":$BEST_per_s,\"cpu_us_per_call\":{\"sip\":$BEST_sip_us,\"media\":$BEST_media_us,\"total\":$total_us},\"failed\":$BEST_failed,\"retrans\":$BEST_retrans,\"rtt_ms\":$BEST_rtt_ms,\"sipp_cpu_pct\":$BEST_sipp_cpu_pct${1:-},\"pass\":$([ "$BEST_pass" = 1 ] && echo true || echo false)}"
}
call_summary() { # LABEL
  local total_us
  total_us=$(awk -v a="$BEST_sip_us" -v b="$BEST_media_us" 'BEGIN { printf "%.1f", a + b }')
  echo "$TARGET: $1 $BEST_per_s/s sustained (offered $BEST_rate/s, $BEST_failed failed, $BEST_retrans retrans, setup rtt $BEST_rtt_ms ms), CPU per call $BEST_sip_us µs SIP + $BEST_media_us µs media = $total_us µs, sipp at $BEST_sipp_cpu_pct% CPU"
}

# fork2: FORK_CALLEE registered from UAS_PORT (answers at once) and RING_PORT (rings, gets CANCEL).
fork2_mode() {
  log "  fork2 (uac-call-bench.xml -> $FORK_CALLEE with two contacts: uas-fast.xml on :$UAS_PORT answers, uas-ring-cancel.xml on :$RING_PORT rings and is cancelled; hold ${CALL_HOLD_MS} ms)"
  register_contact "$FORK_CALLEE" "$UAS_PORT"
  register_contact "$FORK_CALLEE" "$RING_PORT"
  local answer ring
  start_listener fork2-answer "$UAS_PORT" uas-fast.xml -mp 7100; answer=$LISTENER_PID
  start_listener fork2-ring "$RING_PORT" uas-ring-cancel.xml -mp 7200; ring=$LISTENER_PID
  UAS_PIDS="$answer $ring" RING_STAT=$OUT/$TARGET-fork2-ring.stat.csv
  search fork2 "$FORK2_RATE" "$CALL_RATE_START" "$CALL_RATE_MAX"
  stop "$answer"; stop "$ring"; RING_STAT=""
  FORK2_JSON=$(call_json)
  SUMMARY+=("$(call_summary "fork2 calls (2 contacts in parallel, 1 cancelled)")")
}

# fwd-noanswer: FWD_CALLEE rings on RING_PORT; FWD_RING_S later the call goes to FWD_TARGET on UAS_PORT.
fwd_noanswer_mode() {
  log "  fwd-noanswer (uac-call-bench.xml -> $FWD_CALLEE rings on :$RING_PORT (uas-ring-cancel.xml), after ${FWD_RING_S} s forwarded to $FWD_TARGET on :$UAS_PORT (uas-fast.xml); hold ${CALL_HOLD_MS} ms)"
  register_contact "$FWD_CALLEE" "$RING_PORT"
  register_contact "$FWD_TARGET" "$UAS_PORT"
  local answer ring
  start_listener fwd-answer "$UAS_PORT" uas-fast.xml -mp 7100; answer=$LISTENER_PID
  start_listener fwd-ring "$RING_PORT" uas-ring-cancel.xml -mp 7200; ring=$LISTENER_PID
  UAS_PIDS="$answer $ring" RING_STAT=$OUT/$TARGET-fwd-ring.stat.csv
  search fwd-noanswer "$FWD_RATE" "$CALL_RATE_START" "$CALL_RATE_MAX"
  stop "$answer"; stop "$ring"; RING_STAT=""
  FWD_JSON=$(call_json ",\"ring_s\":$FWD_RING_S")
  SUMMARY+=("$(call_summary "calls forwarded on no answer (${FWD_RING_S} s ring, in the rtt)")")
}

smoke() {
  log "  smoke: $CALLEE registers on :$UAS_PORT, one call with RTP both ways for 2 s"
  start_uas uas-answer.xml -rtp_echo -mp 7100
  (cd "$SIPP_DIR" && taskset -c "$SIPP_CPU" sipp "$SIP_HOST:$SIP_PORT" -sf uac-call.xml -inf "$OUT/users/calls.csv" -p "$UAC_PORT" \
     -mp 6100 -m 1 -d 2000 -auth_uri "$CALLEE@$DOMAIN" -timeout 30 -nostdin -trace_err -error_file "$OUT/$TARGET-smoke.err.log" \
     >"$OUT/$TARGET-smoke.out" 2>&1) || { log "smoke call failed: $OUT/$TARGET-smoke.err.log"; tail -20 "$OUT/$TARGET-smoke.err.log" >&2; exit 1; }
  stop "$UAS_PID"
}

# ---------------------------------------------------------------------------------------------
JSON_LINES=()
SUMMARY=()
UAS_PIDS="" RING_STAT=""
for TARGET in $TARGETS; do
  case $TARGET in kamailio|controlplane) ;; *) die "unknown target $TARGET (kamailio, controlplane)";; esac
  log "=== $TARGET: starting on CPU $TARGET_CPU, sipp on CPU $SIPP_CPU, $USERS users, ${DURATION}s steps"
  if ! "start_$TARGET"; then SUMMARY+=("$TARGET: skipped"); continue; fi
  log "$TARGET_VERSION: SIP on $SIP_HOST:$SIP_PORT (pids $SIP_PIDS), media pids $MEDIA_PIDS"
  STEPS_JSON=""
  read -r C0 S0 _ < <(cpu_stat)
  [ "${SKIP_SMOKE:-0}" = 1 ] || smoke

  REG_JSON=null
  if has_mode register; then
    log "  REGISTER storm (register.xml, $USERS users)"
    search reg "$REG_RATE" "$REG_RATE_START" "$REG_RATE_MAX"
    REG_JSON="{\"max_rate\":$BEST_rate,\"per_s\":$BEST_per_s,\"cpu_us_per_register\":$BEST_sip_us,\"failed\":$BEST_failed,\"retrans\":$BEST_retrans,\"rtt_ms\":$BEST_rtt_ms,\"sipp_cpu_pct\":$BEST_sipp_cpu_pct,\"pass\":$([ "$BEST_pass" = 1 ] && echo true || echo false)}"
    SUMMARY+=("$TARGET: REGISTER+auth $BEST_per_s/s sustained (offered $BEST_rate/s, $BEST_failed failed, $BEST_retrans retrans, rtt $BEST_rtt_ms ms), $BEST_sip_us µs CPU per REGISTER, sipp at $BEST_sipp_cpu_pct% CPU")
  fi

  CALL_JSON=null
  if has_mode calls; then
    log "  call rate (uac-call-short.xml -> uas-fast.xml, callee $CALLEE, hold ${CALL_HOLD_MS} ms)"
    start_uas uas-fast.xml -mp 7100
    search call "$CALL_RATE" "$CALL_RATE_START" "$CALL_RATE_MAX"
    stop "$UAS_PID"
    CALL_JSON=$(call_json)
    SUMMARY+=("$(call_summary calls)")
  fi

  NEW_JSON=""
  if has_mode fork2; then fork2_mode; NEW_JSON+=",\"fork2\":$FORK2_JSON"; fi
  if has_mode fwd-noanswer; then fwd_noanswer_mode; NEW_JSON+=",\"fwd_noanswer\":$FWD_JSON"; fi

  read -r C1 S1 _ < <(cpu_stat)
  steal=$(awk -v d=$((C1 - C0)) -v s=$((S1 - S0)) 'BEGIN { printf "%.2f", (d > 0 ? s * 100 / d : 0) }')
  SUMMARY+=("$TARGET: steal $steal% over the run")
  JSON_LINES+=("{\"target\":\"$TARGET\",\"version\":\"$TARGET_VERSION\",\"users\":$USERS,\"duration_s\":$DURATION,\"target_cpu\":$TARGET_CPU,\"sipp_cpu\":$SIPP_CPU,\"db_dir\":\"$DB_DIR\",\"register\":$REG_JSON,\"calls\":$CALL_JSON${NEW_JSON},\"steal_pct\":$steal,\"steps\":[$STEPS_JSON]}")
  cleanup
done

log "=== summary ($(nproc) CPUs, $(sipp -v 2>/dev/null | sed -n 's/.*SIPp \(v[^ ]*\).*/\1/p'), DB in $DB_DIR)"
for line in "${SUMMARY[@]}"; do log "$line"; done
for line in "${JSON_LINES[@]}"; do echo "$line"; done
