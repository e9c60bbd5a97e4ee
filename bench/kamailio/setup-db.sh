#!/usr/bin/env bash
# Creates the SQLite database of bench/kamailio/kamailio.cfg: Kamailio 5.6's own schema for the
# version, subscriber (auth_db) and location (usrloc) tables, in WAL journal mode, filled with the
# subscribers of scripts/sipp/make-users.sh.
#
#   bench/kamailio/setup-db.sh DB_FILE [SUBSCRIBERS_SQL]
#
# SUBSCRIBERS_SQL defaults to target/sipp/subscribers.sql, written first (make-users.sh $USERS,
# USERS default 1000) if missing. An existing DB_FILE is replaced.
set -euo pipefail
DB=${1:?usage: setup-db.sh DB_FILE [SUBSCRIBERS_SQL]}
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
SQL=${2:-$ROOT/target/sipp/subscribers.sql}
SCHEMA=/usr/share/kamailio/db_sqlite
for f in standard-create.sql auth_db-create.sql usrloc-create.sql; do
  [ -r "$SCHEMA/$f" ] || { echo "setup-db: $SCHEMA/$f missing: apt-get install kamailio-sqlite-modules" >&2; exit 1; }
done
command -v sqlite3 >/dev/null || { echo "setup-db: sqlite3 missing: apt-get install sqlite3" >&2; exit 1; }
if [ ! -r "$SQL" ]; then
  "$ROOT/scripts/sipp/make-users.sh" "${USERS:-1000}" "$(dirname "$SQL")"
fi
mkdir -p "$(dirname "$DB")"
rm -f "$DB" "$DB-wal" "$DB-shm" "$DB-journal"
{
  echo "PRAGMA journal_mode=WAL;"
  cat "$SCHEMA/standard-create.sql" "$SCHEMA/auth_db-create.sql" "$SCHEMA/usrloc-create.sql"
  cat "$SQL"
} | sqlite3 "$DB" >/dev/null
echo "setup-db: $DB: $(sqlite3 "$DB" 'SELECT count(*) FROM subscriber') subscribers, journal $(sqlite3 "$DB" 'PRAGMA journal_mode')" >&2
