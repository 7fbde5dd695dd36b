# guest-lib.sh: sourced by the guest tests (guest-test.sh on Debian 12,
# guest-test-trixie.sh on Debian 13), which run inside the VM guest as root
# with their output on the host's stdout. What every guest test does the
# same way: report steps with their time, print the guest's logs on failure,
# install the package, wait for PostgreSQL, check the kernel's gaps.
export LC_ALL=C.UTF-8 SYSTEMD_PAGER= SYSTEMD_COLORS=0
share=/mnt/vmshare
pgver=$(ls /etc/postgresql)
pglog=/var/log/postgresql/postgresql-$pgver-main.log
t0=$(date +%s)
# Units whose journal a failure prints besides interlockd's; each test adds its own.
dump_units=()

step() { echo; echo "== [$(( $(date +%s) - t0 ))s] $*"; }
dump() {
  echo "--- systemctl --failed"; systemctl --failed --no-legend
  echo "--- journal: interlock.service"; journalctl -b --no-pager -o short-monotonic -u interlock.service | tail -n 60
  if [ "${#dump_units[@]}" -gt 0 ]; then
    echo "--- journal: ${dump_units[*]}"
    journalctl -b --no-pager -o short-monotonic "${dump_units[@]/#/--unit=}" | tail -n 60
  fi
  echo "--- journal: errors"; journalctl -b --no-pager -p warning | tail -n 40
  echo "--- postgresql log"; tail -n 30 "$pglog"
}
fail() { echo "VM-TEST FAIL: $*"; dump; exit 1; }
# wait_for SECONDS CMD...: poll CMD once a second.
wait_for() {
  local n=$1; shift
  for _ in $(seq "$n"); do "$@" >/dev/null 2>&1 && return 0; sleep 1; done
  return 1
}
as_postgres() { runuser -u postgres -- psql -X -v ON_ERROR_STOP=1 -q "$@"; }

# guest_info prints what the guest runs.
guest_info() {
  step "guest"
  echo "guest kernel: $(uname -r) ($(uname -v))"
  echo "host name: $(hostname), systemd $(systemctl --version | head -n1 | cut -d' ' -f2), cgroup: $(stat -fc %T /sys/fs/cgroup)"
}

# install_package installs the .deb from the share and waits for the unit
# it starts.
install_package() {
  step "install the package"
  dpkg -i "$share/interlock.deb" || fail "dpkg -i"
  systemd-analyze verify /lib/systemd/system/interlock.service || fail "systemd-analyze verify interlock.service"
  echo "systemd-analyze verify interlock.service: ok"
  wait_for 60 systemctl is-active interlock.service || fail "interlock.service is not active after install"
  echo "interlock.service: $(systemctl is-active interlock.service) (Type=notify: ready means the data path is armed)"
}

# wait_postgres waits for the guest's PostgreSQL to accept connections.
wait_postgres() {
  step "PostgreSQL $pgver in the guest"
  wait_for 120 pg_isready -q -h 127.0.0.1 || fail "PostgreSQL did not start"
  echo "server: $(as_postgres -Atc 'SELECT version()')"
}

# check_gaps [EXCUSED]: the guest booted with the bpf LSM active, and
# interlockd reports no gap, in `interlock status` or its journal, but
# those matching the extended regex EXCUSED (the kernel's own, by version).
check_gaps() {
  local excused=${1:-} lsms st gaps
  lsms=$(cat /sys/kernel/security/lsm)
  echo "active LSMs: $lsms"
  grep -qw bpf <<<"${lsms//,/ }" || fail "the guest did not boot with the bpf LSM (lsm=...,bpf)"
  st=$(interlock status) || fail "interlock status"
  echo "$st"
  gaps=$(sed -n 's/^not enforced  *//p' <<<"$st"
    journalctl -b --no-pager -o cat -u interlock.service | grep '"not enforced on this kernel"')
  if [ -n "$excused" ]; then gaps=$(grep -vE "$excused" <<<"$gaps"); fi
  [ -z "$gaps" ] || fail "interlockd reports gaps with the bpf LSM active: $gaps"
  if [ -n "$excused" ]; then echo "interlockd reports no gap but the kernel's ($excused)"
  else echo "interlockd reports no gap"; fi
}

# embedded_issuer ADMIN PASSWORD TEMPLATE: interlockd issues a short-lived
# role per session, a member of TEMPLATE, from this admin login (the
# embedded issuer); the client never has a password. interlockd checks the
# admin at start and refuses to start if it could not drop a session's role.
embedded_issuer() {
  install -m 0600 /dev/null /etc/interlock/pg-admin.dsn
  echo "host=127.0.0.1 port=5432 user=$1 password=$2 dbname=postgres" >/etc/interlock/pg-admin.dsn
  cat >>/etc/interlock/interlockd.yaml <<YAML
credentials:
  embedded:
    pg:
      admin_dsn_file: /etc/interlock/pg-admin.dsn
      template: $3
      ttl: 15m
YAML
  systemctl restart interlock.service || fail "restart interlock.service with the embedded issuer (admin $1, template $3)"
}
