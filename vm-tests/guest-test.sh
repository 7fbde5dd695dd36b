#!/bin/bash
# guest-test.sh: runs inside the VM guest as root (interlock-vm-run.service),
# output on the host's stdout. Installs Interlock from the package, tags a
# systemd unit that runs a legacy client (psql) and checks that its
# statements are decided and recorded, and that it fails closed while
# interlockd is down. Every failure prints the guest journal.
set -uo pipefail
. /mnt/vmshare/guest-lib.sh
dump_units=(legacy-psql.service legacy-loop.service)
pg_connections() { grep -c 'connection received: host=127.0.0.1' "$pglog"; }

guest_info
install_package
wait_postgres
as_postgres <<'SQL' || fail "set up the database"
ALTER ROLE postgres PASSWORD 'vm-admin';
CREATE ROLE interlock_demo NOLOGIN;
CREATE DATABASE app;
\c app
CREATE TABLE customers (id int PRIMARY KEY, name text, email text);
INSERT INTO customers VALUES (1, 'Ada', 'ada@example.com'), (2, 'Grace', 'grace@example.com');
GRANT SELECT, INSERT, UPDATE, DELETE ON customers TO interlock_demo;
SQL
embedded_issuer postgres vm-admin interlock_demo
interlock status || fail "interlock status"

step "a legacy client unit, tagged"
useradd --system --no-create-home --shell /usr/sbin/nologin agent
cat >/usr/local/bin/legacy-client <<'SH'
#!/bin/sh
# Knows nothing of Interlock and has no password.
export PGCONNECT_TIMEOUT=20
psql -h 127.0.0.1 -U app -d app -w -X -c 'SELECT id, name FROM customers ORDER BY id'
echo "legacy-client: SELECT exit $?"
psql -h 127.0.0.1 -U app -d app -w -X -c 'DROP TABLE customers'
echo "legacy-client: DROP exit $?"
SH
cat >/usr/local/bin/legacy-loop <<'SH'
#!/bin/sh
while :; do
  if out=$(PGCONNECT_TIMEOUT=5 psql -h 127.0.0.1 -U app -d app -w -X -Atc "SELECT 'loop'" 2>&1); then
    echo "attempt ok"
  else
    echo "attempt failed: $(echo "$out" | head -n1)"
  fi
  sleep 2
done
SH
chmod 755 /usr/local/bin/legacy-client /usr/local/bin/legacy-loop
cat >/etc/systemd/system/legacy-psql.service <<'UNIT'
[Unit]
Description=Legacy client: psql against the local PostgreSQL (one shot)

[Service]
Type=oneshot
User=agent
ExecStart=/usr/local/bin/legacy-client
UNIT
cat >/etc/systemd/system/legacy-loop.service <<'UNIT'
[Unit]
Description=Legacy client: psql in a loop

[Service]
User=agent
ExecStart=/usr/local/bin/legacy-loop
UNIT
systemctl daemon-reload
interlock tag --unit legacy-psql.service --identity demo || fail "interlock tag --unit legacy-psql.service"
interlock tag --unit legacy-loop.service --identity demo || fail "interlock tag --unit legacy-loop.service"
systemd-analyze verify /etc/systemd/system/legacy-psql.service || fail "systemd-analyze verify legacy-psql.service with its drop-in"
echo "--- the unit being enforced:"
systemctl cat legacy-psql.service

step "run the tagged unit"
systemctl start legacy-psql.service
rc=$?
journalctl -b --no-pager -o cat -u legacy-psql.service
[ $rc = 0 ] || fail "legacy-psql.service failed"
cg=$(journalctl -b --no-pager -o cat -u legacy-psql.service | sed -n 's/^tagged legacy-psql.service (\(.*\)) as demo$/\1/p' | tail -n1)
[ -n "$cg" ] || fail "the unit's ExecStartPre did not tag its cgroup"
echo "enforced: legacy-psql.service, cgroup $cg, identity demo"
journalctl -b --no-pager -o cat -u legacy-psql.service | grep -q 'legacy-client: SELECT exit 0' || fail "the allowed SELECT did not succeed through the proxy"
journalctl -b --no-pager -o cat -u legacy-psql.service | grep -q 'legacy-client: DROP exit 0' && fail "DROP TABLE was not denied"

step "interlock exec: a one-off command under an identity"
n=$(interlock exec --identity demo -- psql -h 127.0.0.1 -U app -d app -w -X -Atc 'SELECT count(*) FROM customers') ||
  fail "interlock exec --identity demo -- psql"
[ "$n" = 2 ] || fail "interlock exec psql returned $n, want 2"
echo "interlock exec --identity demo -- psql: $n rows"

step "the bpf LSM: ways out a tagged task does not get"
# 6.1 has no cgroup/connect_unix or sendmsg_unix (6.7): those gaps are the
# kernel's, not the LSM's; any other gap fails the test.
check_gaps 'needs kernel 6.7'
# try WHAT CMD...: run CMD tagged as demo; it must fail with EPERM.
refused() {
  local what=$1; shift
  local out
  if out=$(interlock exec --identity demo -- "$@" 2>&1); then fail "$what: a tagged task succeeded: $out"; fi
  grep -q 'Operation not permitted' <<<"$out" || fail "$what: refused, but not with EPERM: $out"
  echo "refused (EPERM): $what"
}
# works WHAT CMD...: the same untagged, so each refusal above proves the hook.
works() {
  local what=$1; shift
  local out
  out=$("$@" 2>&1) || fail "$what: fails even untagged, so the tagged refusal proves nothing: $out"
  echo "untagged: $what: $out"
}
as_agent=(setpriv --reuid=agent --regid=agent --init-groups --)
# Socket families beyond inet, inet6, unix and netlink route.
sock='use Socket; socket(my $s, $ARGV[0], $ARGV[1], $ARGV[2]) or die "socket: $!\n"; print "created\n"'
works "AF_VSOCK socket" perl -e "$sock" 40 1 0
refused "AF_VSOCK socket" "${as_agent[@]}" perl -e "$sock" 40 1 0
works "netlink sock_diag socket" perl -e "$sock" 16 3 4
refused "netlink sock_diag socket" "${as_agent[@]}" perl -e "$sock" 16 3 4
interlock exec --identity demo -- "${as_agent[@]}" ip -o link show lo >/dev/null ||
  fail "netlink route (ip link) refused to a tagged task; getaddrinfo needs it"
echo "allowed: netlink route (ip link)"
# ptrace of a same-uid process outside the cgroup, with Yama out of the way.
sysctl -qw kernel.yama.ptrace_scope=0
"${as_agent[@]}" sleep 600 &
victim=$!
sleep 0.5
attach='my $r = syscall(101, 16, $ARGV[0] + 0, 0, 0); die "ptrace: $!\n" if $r < 0; print "attached\n"'
works "ptrace attach by the same uid" "${as_agent[@]}" perl -e "$attach" "$victim"
refused "ptrace attach of a same-uid process outside the identity" "${as_agent[@]}" perl -e "$attach" "$victim"
# SIGKILL, not SIGTERM: the attach stops its tracee, and when perl exits
# before the stop is taken the tracee stays stopped, with SIGTERM pending
# and this command substitution's pipe open (a hung guest, once in a while).
out=$(interlock exec --identity demo -- "${as_agent[@]}" sh -c 'sleep 600 & perl -e "$1" $!; r=$?; kill -KILL $!; exit $r' sh "$attach" 2>&1) ||
  fail "ptrace inside the identity (a debugger on its own child) refused: $out"
echo "allowed: ptrace of a task of the same identity ($out)"
kill -KILL "$victim"
# Root in a tagged cgroup, even with no capability, moving itself out.
refused "write cgroup.procs (root)" sh -c 'echo $$ >/sys/fs/cgroup/cgroup.procs'
refused "write cgroup.procs (root, no capabilities)" setpriv --inh-caps=-all --bounding-set=-all -- sh -c 'echo $$ >/sys/fs/cgroup/cgroup.procs'
refused "write cgroup.threads (root)" sh -c 'echo $$ >/sys/fs/cgroup/cgroup.threads'
# clone3(CLONE_INTO_CGROUP) into the root cgroup.
clone='use POSIX; sysopen(my $d, "/sys/fs/cgroup", O_RDONLY|O_DIRECTORY) or die "open: $!\n";
  my $args = pack("Q11", 0x200000000, 0, 0, 0, 17, 0, 0, 0, 0, 0, fileno($d));
  my $pid = syscall(435, $args, length $args); die "clone3: $!\n" if $pid < 0;
  POSIX::_exit(0) if $pid == 0; waitpid($pid, 0); print "child $pid in another cgroup\n"'
works "clone3(CLONE_INTO_CGROUP)" perl -e "$clone"
refused "clone3(CLONE_INTO_CGROUP) (root)" perl -e "$clone"
# bpf(): BPF_PROG_GET_NEXT_ID as root.
bpfcall='my $a = pack("L4", 0, 0, 0, 0); my $r = syscall(321, 11, $a, length $a); die "bpf: $!\n" if $r < 0; print "next prog id ", unpack("L", substr($a, 4, 4)), "\n"'
works "bpf(BPF_PROG_GET_NEXT_ID)" perl -e "$bpfcall"
refused "bpf(BPF_PROG_GET_NEXT_ID) (root)" perl -e "$bpfcall"
sleep 1
audit=$(journalctl -b --no-pager -o cat -u interlock.service)
for reason in socket ptrace cgroup-move bpf; do
  grep '"event":"kernel_deny"' <<<"$audit" | grep -q "\"reason\":\"$reason\"" || fail "no kernel_deny audit event with reason $reason"
done
echo "each refusal is a kernel_deny audit event (socket, ptrace, cgroup-move, bpf)"

step "decided and recorded"
audit=$(journalctl -b --no-pager -o cat -u interlock.service)
open=$(grep '"event":"connection_open"' <<<"$audit" | grep -F "\"cgroup\":\"$cg\"" | head -n1)
[ -n "$open" ] || fail "no connection_open audit event for $cg"
echo "audit connection_open: $open"
deny=$(grep '"event":"decision"' <<<"$audit" | grep '"action":"deny"' | grep -i 'drop' | head -n1)
[ -n "$deny" ] || fail "no deny decision for DROP TABLE in the audit log"
echo "denied statement: DROP TABLE customers"
echo "audit decision: $deny"
allow=$(grep '"event":"decision"' <<<"$audit" | grep -v '"action":"deny"' | head -n1)
echo "audit decision: $allow"
[ "$(as_postgres -d app -Atc 'SELECT count(*) FROM customers')" = 2 ] || fail "customers changed: the DROP reached PostgreSQL"
echo "PostgreSQL still has the customers table (2 rows)"

step "fail closed: interlockd killed, a running tagged unit reaches nothing"
systemctl start legacy-loop.service || fail "start legacy-loop.service"
wait_for 60 sh -c 'journalctl -b -o cat -u legacy-loop.service | grep -q "attempt ok"' || fail "the loop never got through the proxy"
# Keep systemd from restarting interlockd for this check.
mkdir -p /run/systemd/system/interlock.service.d
printf '[Service]\nRestart=no\n' >/run/systemd/system/interlock.service.d/zz-vm-test.conf
systemctl daemon-reload
systemctl kill --signal=SIGKILL interlock.service
wait_for 20 sh -c '! systemctl is-active -q interlock.service' || fail "interlockd did not die"
echo "interlock.service: $(systemctl is-active interlock.service)"
# Count from the moment interlockd is gone: a session it relayed just
# before the kill may still have reached PostgreSQL.
sleep 1
n0=$(pg_connections)
since=$(date '+%Y-%m-%d %H:%M:%S')
sleep 10
systemctl is-active -q legacy-loop.service || fail "legacy-loop.service stopped; expected it to keep running, enforced"
attempts=$(journalctl -b --no-pager -o cat -u legacy-loop.service --since "$since" | grep '^attempt')
echo "$attempts"
[ "$(grep -c 'attempt failed' <<<"$attempts")" -ge 2 ] || fail "fewer than two failed attempts while interlockd was down"
grep -q 'attempt ok' <<<"$attempts" && fail "a tagged connection succeeded while interlockd was down"
n1=$(pg_connections)
[ "$n0" = "$n1" ] || fail "PostgreSQL received $((n1 - n0)) connection(s) while interlockd was down"
echo "fail-closed: ok: every attempt failed and PostgreSQL received no connection ($n0 before, $n1 after)"
# A tagged unit cannot start while interlockd cannot: its ExecStartPre fails.
systemctl mask --runtime interlock.service >/dev/null
if systemctl start legacy-psql.service 2>/dev/null; then fail "legacy-psql.service started while interlockd was down"; fi
echo "fail-closed: legacy-psql.service refused to start while interlockd is down"
systemctl unmask --runtime interlock.service >/dev/null

step "interlockd back: enforcement resumes"
rm /run/systemd/system/interlock.service.d/zz-vm-test.conf
systemctl daemon-reload
systemctl start interlock.service || fail "restart interlockd"
since=$(date '+%Y-%m-%d %H:%M:%S')
wait_for 60 sh -c "journalctl -b -o cat -u legacy-loop.service --since '$since' | grep -q 'attempt ok'" || fail "the loop did not get through after interlockd came back"
echo "legacy-loop.service gets through again"
systemctl stop legacy-loop.service

step "a tagged unit restarted while its old processes live on (KillMode=process)"
# The GitHub Actions runner's unit uses KillMode=process: a stop leaves the
# children, so the next start's ExecStartPre runs in the still-tagged cgroup.
cat >/etc/systemd/system/legacy-runner.service <<'UNIT'
[Unit]
Description=Legacy client that leaves a child behind when stopped

[Service]
User=agent
KillMode=process
ExecStart=/bin/sh -c 'sleep 600 & exec /usr/local/bin/legacy-loop'
UNIT
systemctl daemon-reload
interlock tag --unit legacy-runner.service --identity demo || fail "interlock tag --unit legacy-runner.service"
systemctl start legacy-runner.service || fail "start legacy-runner.service"
# A simple unit's start returns once its shell is forked, which may be
# before the shell has started its child (the TCG guest was that slow once).
wait_for 30 pgrep -u agent -fx 'sleep 600' || fail "legacy-runner.service did not start its child"
systemctl stop legacy-runner.service
pgrep -u agent -fx 'sleep 600' >/dev/null || fail "KillMode=process left no process behind; the test proves nothing"
since=$(date '+%Y-%m-%d %H:%M:%S')
systemctl start legacy-runner.service || fail "restart of legacy-runner.service with its old processes alive failed"
wait_for 60 sh -c "journalctl -b -o cat -u legacy-runner.service --since '$since' | grep -q 'attempt ok'" ||
  fail "the restarted unit did not get through the proxy"
journalctl -b -o cat -u legacy-runner.service --since "$since" | grep -q '^tagged legacy-runner.service' ||
  fail "the restarted unit's ExecStartPre did not re-tag it"
echo "legacy-runner.service restarted with its old child alive, enforced as demo"
# The drop-in's NoNewPrivileges=yes: nothing the agent runs gains privileges
# through a set-user-ID program (sudo and su refuse).
pid=$(systemctl show -p MainPID --value legacy-runner.service)
grep -q '^NoNewPrivs:[[:space:]]*1$' "/proc/$pid/status" || fail "the tagged unit's main process runs without no_new_privs"
echo "legacy-runner.service runs with no_new_privs"
systemctl kill --kill-whom=all legacy-runner.service
systemctl stop legacy-runner.service

if [ -e "$share/caps-probe" ]; then
  # Which of the unit's capabilities does interlockd really use? Drop one at
  # a time, load the data path from scratch and proxy a tagged psql session
  # (which needs the executable of another user's process).
  step "capability probe (INTERLOCK_VM_CAPS_PROBE=1; informational)"
  caps=$(sed -n 's/^CapabilityBoundingSet=//p' /lib/systemd/system/interlock.service)
  for cap in $caps; do
    printf '[Service]\nCapabilityBoundingSet=~%s\n' "$cap" >/run/systemd/system/interlock.service.d/zz-cap.conf
    systemctl daemon-reload
    interlock uninstall >/dev/null 2>&1
    since=$(date '+%Y-%m-%d %H:%M:%S')
    if ! timeout 90 systemctl restart interlock.service 2>/dev/null; then
      why=$(journalctl -b -o cat -u interlock.service --since "$since" | grep -m1 '"level":"error"' | cut -c1-160)
      echo "without $cap: NEEDED: interlockd does not start: $why"
      continue
    fi
    systemctl start legacy-psql.service 2>/dev/null
    select=$(journalctl -b -o cat -u legacy-psql.service --since "$since" | grep -m1 'SELECT exit')
    exe=$(journalctl -b -o cat -u interlock.service --since "$since" | grep -m1 '"event":"connection_open"' | grep -o '"exe":"[^"]*"')
    execd=$(interlock exec --identity demo -- true 2>&1 && echo ok)
    if [ "$select" = "legacy-client: SELECT exit 0" ] && [ "$exe" = "\"exe\":\"/usr/lib/postgresql/$pgver/bin/psql\"" ] && [ "$execd" = ok ]; then
      echo "without $cap: not needed for start, tagging, a proxied session and exec"
    else
      echo "without $cap: NEEDED (${select:-no SELECT}; connection_open ${exe:-without exe}; exec: $execd)"
    fi
  done
  rm -f /run/systemd/system/interlock.service.d/zz-cap.conf
  systemctl daemon-reload
  systemctl restart interlock.service || fail "interlockd does not start with its full capability set"
fi

step "uninstall"
interlock untag --unit legacy-psql.service 2>/dev/null || true
dpkg --purge interlock || fail "dpkg --purge"
[ ! -e /sys/fs/bpf/interlock ] || fail "pins left after dpkg --purge: $(ls /sys/fs/bpf/interlock)"
echo "dpkg --purge: programs detached, pins removed"
echo "VM-TEST PASS ($(( $(date +%s) - t0 ))s in the guest)"
