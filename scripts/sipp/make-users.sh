#!/usr/bin/env bash
# Writes the subscriber set of the SIP benchmarks, in the formats each tool reads:
#
#   scripts/sipp/make-users.sh N [OUT_DIR]        (OUT_DIR default: target/sipp under the repo)
#
#   users.csv        sipp -inf, SEQUENTIAL: user1..userN, for register.xml storms:
#                      USER;PASSWORD;DOMAIN;[authentication username=USER password=PASSWORD]
#   callees.csv      the same for the first CALLEES users (they register on the UAS port)
#   storm.csv        the same for the other users: a REGISTER storm must not register a callee
#                    a second time from the storm's port (its calls would fork to a contact
#                    nobody answers)
#   calls.csv        sipp -inf for the uac-*.xml scenarios, one line per caller:
#                      CALLER;PASSWORD;DOMAIN;[authentication ...];CALLEE
#                    callers: the users after the first CALLEES (all if N == CALLEES); CALLEE
#                    cycles over the first CALLEES users
#   subscribers.tsv  USER<TAB>DOMAIN<TAB>PASSWORD (alice, bob, carol, dave, then user1..userN)
#                    (the control plane imports users.csv directly: `subscriber import`)
#   subscribers.sql  the same as INSERTs into Kamailio's subscriber table (ha1 = MD5 of
#                    user:realm:password, ha1b = MD5 of user@domain:realm:password)
#
# Env: DOMAIN (sip.test, also the realm), PASSWORD (secret), CALLEES (1: sipp 3.6.1 puts
# uri="sip:REMOTE_IP:PORT" in its digest unless -auth_uri is given, and -auth_uri is one value per
# run, so a registrar that checks the digest uri against the Request-URI needs one callee per run;
# see README.md).
set -euo pipefail
N=${1:?usage: make-users.sh N [OUT_DIR]}
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
OUT=${2:-$ROOT/target/sipp}
DOMAIN=${DOMAIN:-sip.test}
PASSWORD=${PASSWORD:-secret}
CALLEES=${CALLEES:-1}
case $N in ''|*[!0-9]*) echo "make-users: N must be a number" >&2; exit 2;; esac
[ "$N" -ge 1 ] && [ "$N" -le 1000000 ] || { echo "make-users: N must be 1..1000000" >&2; exit 2; }
[ "$CALLEES" -ge 1 ] && [ "$CALLEES" -le "$N" ] || { echo "make-users: CALLEES must be 1..N" >&2; exit 2; }
mkdir -p "$OUT"
python3 - "$N" "$OUT" "$DOMAIN" "$PASSWORD" "$CALLEES" <<'PY'
import hashlib, os, sys
n, out, domain, password, callees = int(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4], int(sys.argv[5])
md5 = lambda s: hashlib.md5(s.encode()).hexdigest()
users = ["user%d" % i for i in range(1, n + 1)]
def auth(u): return "[authentication username=%s password=%s]" % (u, password)
with open(os.path.join(out, "users.csv"), "w") as f:
    f.write("SEQUENTIAL\n")
    f.writelines("%s;%s;%s;%s\n" % (u, password, domain, auth(u)) for u in users)
with open(os.path.join(out, "callees.csv"), "w") as f:
    f.write("SEQUENTIAL\n")
    f.writelines("%s;%s;%s;%s\n" % (u, password, domain, auth(u)) for u in users[:callees])
with open(os.path.join(out, "storm.csv"), "w") as f:
    f.write("SEQUENTIAL\n")
    f.writelines("%s;%s;%s;%s\n" % (u, password, domain, auth(u)) for u in (users[callees:] or users))
callers = users[callees:] or users  # callees do not call (themselves), unless everyone is one
with open(os.path.join(out, "calls.csv"), "w") as f:
    f.write("SEQUENTIAL\n")
    f.writelines("%s;%s;%s;%s;%s\n" % (u, password, domain, auth(u), users[i % callees]) for i, u in enumerate(callers))
everyone = ["alice", "bob", "carol", "dave"] + users
with open(os.path.join(out, "subscribers.tsv"), "w") as f:
    f.writelines("%s\t%s\t%s\n" % (u, domain, password) for u in everyone)
with open(os.path.join(out, "subscribers.sql"), "w") as f:
    f.write("BEGIN;\n")
    for u in everyone:
        f.write("INSERT OR REPLACE INTO subscriber (username, domain, password, ha1, ha1b) VALUES "
                "('%s', '%s', '', '%s', '%s');\n" % (u, domain, md5("%s:%s:%s" % (u, domain, password)),
                                                     md5("%s@%s:%s:%s" % (u, domain, domain, password))))
    f.write("COMMIT;\n")
PY
echo "make-users: $N users (+ alice bob carol dave) in $OUT: users.csv callees.csv storm.csv calls.csv subscribers.tsv subscribers.sql" >&2
