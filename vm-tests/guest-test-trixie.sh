#!/bin/bash
# guest-test-trixie.sh: runs inside the Debian 13 guest (kernel 6.12,
# PostgreSQL 17) as root, output on the host's stdout. What guest-test.sh
# proves on Debian 12 (units, fail-closed, the LSM refusals) is not repeated:
# this test installs the package, sets up the README's embedded issuer with
# a CREATEROLE admin that is not a superuser, runs psql sessions through
# `interlock exec` in plain text and TLS (require, verify-full, PostgreSQL
# 17's direct negotiation, libpq's default prefer), and checks that each
# session's minted role is gone from pg_roles within a second of the
# session's end (10 s under TCG), that no revocation failed, and that
# kernel 6.12 with the bpf LSM leaves no gap.
set -uo pipefail
. /mnt/vmshare/guest-lib.sh

guest_info
install_package
wait_postgres
[ "$pgver" = 17 ] || fail "the Debian 13 guest runs PostgreSQL $pgver, want 17"

step "the README's embedded issuer, with a CREATEROLE admin"
# As the README's "Just-in-time credentials" section says, for PostgreSQL 16
# and later (ADMIN OPTION on the template).
as_postgres <<'SQL' || fail "set up the database"
CREATE ROLE interlock_admin LOGIN CREATEROLE PASSWORD 'vm-admin';
CREATE ROLE agent_readonly NOLOGIN;
GRANT agent_readonly TO interlock_admin WITH ADMIN OPTION;
CREATE DATABASE app;
\c app
CREATE TABLE customers (id int PRIMARY KEY, name text);
INSERT INTO customers VALUES (1, 'Ada'), (2, 'Grace');
GRANT SELECT ON ALL TABLES IN SCHEMA public TO agent_readonly;
SQL
[ "$(as_postgres -Atc "SELECT rolsuper FROM pg_roles WHERE rolname = 'interlock_admin'")" = f ] ||
  fail "interlock_admin is a superuser"
embedded_issuer interlock_admin vm-admin agent_readonly
echo "interlockd started with admin interlock_admin (CREATEROLE, not a superuser) on PostgreSQL $pgver"

step "sessions through interlock exec; each role dropped at the session's end"
useradd --system --no-create-home --shell /usr/sbin/nologin agent
# The promise is 1 s. Under TCG the guest's CPU is emulated, an order of
# magnitude slower than under KVM, and dropping a role takes several round
# trips through interlockd and PostgreSQL: there the bound is 10 s, and the
# times printed say how far from 1 s it is (a direct psql login, for scale).
# A revocation that failed and was retried is caught either way: every
# failure is logged at error level, which fails the test below.
if [ "$(systemd-detect-virt)" = qemu ]; then limit_ms=10000; else limit_ms=1000; fi
ref_start=$(date +%s%3N)
PGPASSWORD=vm-admin psql -h 127.0.0.1 -U interlock_admin -d postgres -w -X -Atc 'SELECT 1' >/dev/null || fail "direct psql login"
echo "virtualization: $(systemd-detect-virt); a direct psql login and SELECT 1 takes $(( $(date +%s%3N) - ref_start )) ms here; bound: $limit_ms ms"
# watch_role: a server-side loop, started before a session, that waits for
# the session's minted role to appear (2 min) and then to go (10 s), and
# prints its name and when it went (epoch ms). Watching from inside PostgreSQL measures the drop,
# not the start-up of a polling psql, which takes seconds under TCG.
watch_role() {
  as_postgres -At -v "app=role-watch-$BASHPID" <<'SQL'
CREATE TEMP TABLE gone (rolname text, ms bigint);
SET application_name = :'app';
DO $$
DECLARE r text;
BEGIN
  FOR i IN 1..6000 LOOP
    SELECT rolname INTO r FROM pg_roles WHERE rolname LIKE 'interlock\_demo\_%';
    EXIT WHEN r IS NOT NULL;
    PERFORM pg_sleep(0.02);
  END LOOP;
  FOR i IN 1..500 LOOP
    EXIT WHEN NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = r);
    PERFORM pg_sleep(0.02);
  END LOOP;
  INSERT INTO gone VALUES (r, CASE WHEN NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = r)
    THEN (extract(epoch FROM clock_timestamp()) * 1000)::bigint END);
END$$;
SELECT coalesce(rolname, 'no role appeared') || ' ' || coalesce(ms::text, 'still there 10 s later') FROM gone;
SQL
}
# session WHAT CONNINFO: one psql session as the agent user under identity
# demo (the embedded default policy); prints how long it took and how long
# after its end (psql's exit) its role was gone, which must be within
# limit_ms.
session() {
  local what=$1 conninfo=$2 out user tls start end watcher watched gone
  watch_role >"/tmp/watch.$$" 2>&1 &
  watcher=$!
  wait_for 60 sh -c "[ \"\$(runuser -u postgres -- psql -XAtc \"SELECT count(*) FROM pg_stat_activity WHERE application_name = 'role-watch-$watcher'\")\" = 1 ]" ||
    fail "$what: the role watcher did not start: $(cat "/tmp/watch.$$")"
  start=$(date +%s%3N)
  # The end is read the moment psql exits, without a fork (EPOCHREALTIME).
  out=$(interlock exec --identity demo --user agent -- bash -c 'psql "$1" -w -X -At -v ON_ERROR_STOP=1 \
    -c "\\conninfo" -c "SELECT current_user, count(*) FROM customers" && echo "${EPOCHREALTIME/./}"' bash "$conninfo" 2>&1) ||
    fail "$what: psql through interlock exec: $out"
  end=$(( $(tail -n1 <<<"$out") / 1000 ))
  user=$(tail -n2 <<<"$out" | head -n1)
  [[ $user =~ ^(interlock_demo_[a-z0-9_]+)\|2$ ]] || fail "$what: want a minted role and 2 rows, got: $out"
  user=${BASH_REMATCH[1]}
  tls=$(grep -o 'SSL connection ([^)]*)' <<<"$out")
  case $what in
  plain) [ -z "$tls" ] || fail "$what: the session used TLS: $out" ;;
  *) [ -n "$tls" ] || fail "$what: the session did not use TLS: $out" ;;
  esac
  wait "$watcher"
  watched=$(cat "/tmp/watch.$$")
  [[ $watched =~ ^$user\ ([0-9]+)$ ]] || fail "$what: the watcher saw $watched, want $user and when it went"
  gone=$((BASH_REMATCH[1] - end))
  printf '%-26s %-28s session %5d ms, role gone %4d ms after its end%s\n' "$what" "$user" \
    $((end - start)) "$gone" "${tls:+, $tls}"
  [ "$gone" -le "$limit_ms" ] || fail "$what: role $user was dropped $gone ms after its session ended, want within $limit_ms ms"
  roles+=("$user")
}
roles=()
session plain "host=127.0.0.1 dbname=app user=app sslmode=disable"
session "sslmode=require" "host=127.0.0.1 dbname=app user=app sslmode=require"
session "sslmode=verify-full" "host=127.0.0.1 dbname=app user=app sslmode=verify-full"
session "verify-full, direct, SNI" "host=localhost hostaddr=127.0.0.1 dbname=app user=app sslmode=verify-full sslnegotiation=direct"
session "prefer (libpq's default)" "host=127.0.0.1 dbname=app user=app"

step "every revocation logged, none failed"
log=$(journalctl -b --no-pager -o cat -u interlock.service)
for user in "${roles[@]}"; do
  grep '"event":"credential_revoked"' <<<"$log" | grep -qF "\"username\":\"$user\"" ||
    fail "no credential_revoked event for $user"
done
echo "credential_revoked for each of the ${#roles[@]} roles"
errors=$(grep '"level":"error"' <<<"$log")
[ -z "$errors" ] || fail "interlockd logged at error level: $errors"
echo "interlockd logged nothing at error level"
left=$(as_postgres -Atc "SELECT string_agg(rolname, ' ') FROM pg_roles WHERE rolname LIKE 'interlock\_demo\_%'")
[ -z "$left" ] || fail "minted roles left in pg_roles: $left"
echo "no minted role left in pg_roles"

step "kernel $(uname -r) with the bpf LSM: no gap"
check_gaps

echo "VM-TEST PASS ($(( $(date +%s) - t0 ))s in the guest)"
