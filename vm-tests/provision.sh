#!/usr/bin/env bash
# provision.sh MODE: make a Debian 12 or 13 system an Interlock test guest.
#
# Shared by the two ways the guest is built, so they cannot drift apart:
#   image    run by build-image.sh inside the debootstrapped chroot (no
#            systemd running, no network but the apt mirror);
#   vagrant  run by the Vagrantfile's shell provisioner on a booted
#            debian/bookworm64 box; adds Go, the BPF toolchain and the real
#            HashiCorp Vault so the whole privileged suite runs there.
set -euo pipefail
mode=${1:?usage: provision.sh image|vagrant}
export DEBIAN_FRONTEND=noninteractive LC_ALL=C.UTF-8

# What every guest has: systemd as init, Debian's own kernel (6.1 in 12,
# 6.12 in 13), the release's PostgreSQL server (15 in 12, 17 in 13) with
# the legacy client psql, and the tools the guest test uses. Keep the list
# in step with build-image.sh's hash (it is: the hash covers this file).
guest_packages=(
  systemd systemd-sysv udev dbus kmod procps iproute2 util-linux e2fsprogs
  linux-image-cloud-amd64 initramfs-tools
  postgresql postgresql-client netcat-openbsd ca-certificates
)

if [ "$mode" = image ]; then
  # The QEMU guest boots from a virtio disk with an ext4 root: an initramfs
  # with just those drivers is built in seconds and unpacked fast under TCG.
  mkdir -p /etc/initramfs-tools/conf.d
  echo MODULES=list >/etc/initramfs-tools/conf.d/interlock-vm.conf
  mkdir -p /usr/share/initramfs-tools/modules.d
  printf 'virtio_pci\nvirtio_blk\next4\n' >/usr/share/initramfs-tools/modules.d/interlock-vm
fi
apt-get update -q
apt-get install -y -q --no-install-recommends "${guest_packages[@]}"

# PostgreSQL records every connection it receives: the fail-closed check
# proves from the server's own log that a tagged client reached nothing.
pgmain=(/etc/postgresql/*/main)
[ "${#pgmain[@]}" = 1 ] && [ -d "${pgmain[0]}" ] || { echo "provision.sh: want one PostgreSQL cluster, have: ${pgmain[*]}" >&2; exit 1; }
pgconf=${pgmain[0]}/conf.d/interlock-vm.conf
mkdir -p "$(dirname "$pgconf")"
cat >"$pgconf" <<'PGCONF'
log_connections = on
log_disconnections = off
log_statement = 'all'
listen_addresses = '127.0.0.1'
PGCONF

case "$mode" in
image)
  echo interlock-vm >/etc/hostname
  printf '127.0.0.1 localhost\n127.0.1.1 interlock-vm\n::1 localhost\n' >/etc/hosts
  printf '/dev/vda / ext4 rw,errors=remount-ro 0 1\n' >/etc/fstab
  # Root logs in on the console without a password: the guest is a throwaway
  # under QEMU with no network.
  passwd -d root
  # The console carries the test's output; no login prompt on it.
  systemctl mask serial-getty@ttyS0.service serial-getty@ttyS1.service getty@tty1.service
  # Nothing waits for a network that does not exist.
  systemctl mask systemd-networkd-wait-online.service apt-daily.timer apt-daily-upgrade.timer \
    man-db.timer e2scrub_all.timer fstrim.timer 2>/dev/null || true
  install -m 0755 /tmp/vm-run /usr/local/sbin/interlock-vm-run
  install -m 0644 /tmp/interlock-vm-run.service /etc/systemd/system/interlock-vm-run.service
  systemctl enable interlock-vm-run.service
  apt-get clean
  rm -rf /var/lib/apt/lists/*
  ;;
vagrant)
  apt-get install -y -q --no-install-recommends \
    clang llvm libbpf-dev bpftool linux-libc-dev make gcc git curl gnupg \
    postgresql-contrib pgbouncer haproxy tshark
  # Go from go.dev (the version go.mod asks for).
  gover=$(awk '/^go /{print $2; exit}' /vagrant/go.mod)
  if ! /usr/local/go/bin/go version 2>/dev/null | grep -q "go$gover"; then
    curl -fsSL "https://go.dev/dl/go${gover}.linux-amd64.tar.gz" | tar -C /usr/local -xz
  fi
  # The real HashiCorp Vault, from HashiCorp's apt repository.
  if ! command -v vault >/dev/null; then
    curl -fsSL https://apt.releases.hashicorp.com/gpg | gpg --dearmor -o /usr/share/keyrings/hashicorp.gpg
    echo "deb [signed-by=/usr/share/keyrings/hashicorp.gpg] https://apt.releases.hashicorp.com bookworm main" \
      >/etc/apt/sources.list.d/hashicorp.list
    apt-get update -q
    apt-get install -y -q vault
  fi
  # Vault in dev mode as a unit: in-memory, unsealed, a known root token.
  cat >/etc/systemd/system/vault-dev.service <<'UNIT'
[Unit]
Description=HashiCorp Vault in dev mode (tests only)
After=network.target

[Service]
ExecStart=/usr/bin/vault server -dev -dev-root-token-id=interlock-dev -dev-listen-address=127.0.0.1:8200
Restart=on-failure

[Install]
WantedBy=multi-user.target
UNIT
  # Dev mode keeps everything in memory: configure the engines the
  # credential tests use (the same shape as the in-tree vaultcompat server)
  # every time Vault starts.
  cat >/usr/local/sbin/vault-dev-setup <<'SETUP'
#!/bin/sh
set -eu
export VAULT_ADDR=http://127.0.0.1:8200 VAULT_TOKEN=interlock-dev
for _ in $(seq 60); do vault status >/dev/null 2>&1 && break; sleep 1; done
runuser -u postgres -- psql -Xq -c "ALTER ROLE postgres PASSWORD 'vault-admin'"
runuser -u postgres -- psql -Xq -c "DO \$\$BEGIN CREATE ROLE agent_readonly NOLOGIN; EXCEPTION WHEN duplicate_object THEN NULL; END\$\$"
vault secrets enable database
vault write database/config/local plugin_name=postgresql-database-plugin allowed_roles=readonly \
  connection_url='postgresql://{{username}}:{{password}}@127.0.0.1:5432/postgres' username=postgres password=vault-admin
vault write database/roles/readonly db_name=local default_ttl=1m max_ttl=1h \
  creation_statements="CREATE ROLE \"{{name}}\" WITH LOGIN PASSWORD '{{password}}' VALID UNTIL '{{expiration}}' IN ROLE agent_readonly;"
vault secrets enable ssh
vault write ssh/config/ca generate_signing_key=true
vault write ssh/roles/agents key_type=ca allow_user_certificates=true allowed_users=deploy,backup default_user=deploy ttl=10m
vault kv put secret/app username=app password=kv-pass region=eu
vault auth enable approle
printf 'path "database/creds/*" { capabilities = ["read"] }\npath "sys/leases/*" { capabilities = ["update"] }\npath "ssh/sign/*" { capabilities = ["update"] }\npath "secret/data/*" { capabilities = ["read"] }\n' | vault policy write interlockd -
vault write auth/approle/role/interlockd token_policies=interlockd
vault write auth/approle/role/interlockd/role-id role_id=role-1
vault write auth/approle/role/interlockd/custom-secret-id secret_id=secret-1
SETUP
  chmod 755 /usr/local/sbin/vault-dev-setup
  cat >/etc/systemd/system/vault-dev-setup.service <<'UNIT'
[Unit]
Description=Configure the dev-mode Vault for Interlock's credential tests
Requires=vault-dev.service
After=vault-dev.service postgresql.service
PartOf=vault-dev.service

[Service]
Type=oneshot
RemainAfterExit=yes
ExecStart=/usr/local/sbin/vault-dev-setup

[Install]
WantedBy=vault-dev.service
UNIT
  systemctl daemon-reload
  systemctl restart postgresql.service
  systemctl enable --now vault-dev.service
  systemctl enable --now vault-dev-setup.service
  ;;
*)
  echo "provision.sh: unknown mode $mode" >&2
  exit 2
  ;;
esac
