#!/usr/bin/env bash
# floor-test.sh CACHE_DIR INTERLOCKD: boot Debian 11's kernel (5.10, below
# interlockd's 5.15 floor) under QEMU with a throwaway initramfs that holds
# busybox and interlockd, and check that interlockd refuses to start and says
# why. No disk and no systemd: the kernel and one process are all the check
# needs, so it boots in seconds under TCG.
#
# The kernel package comes from the host's Debian mirror, verified the way apt
# verifies it: InRelease against the archive keyring, the Packages index
# against InRelease, the package against the index. It is cached in CACHE_DIR.
set -euo pipefail
cache=${1:?usage: floor-test.sh CACHE_DIR INTERLOCKD}
interlockd=${2:?usage: floor-test.sh CACHE_DIR INTERLOCKD}
qemu=${QEMU:-qemu-system-x86_64}
suite=bullseye
keyring=/usr/share/keyrings/debian-archive-keyring.gpg

mirror=${INTERLOCK_VM_MIRROR:-}
if [ -z "$mirror" ]; then
  mirror=$(awk '/^URIs:/{print $2; exit}' /etc/apt/sources.list.d/debian.sources 2>/dev/null || true)
fi
mirror=${mirror:-http://deb.debian.org/debian}

kernel=$cache/$suite-vmlinuz
run=$(mktemp -d /var/tmp/interlock-floor.XXXXXX)
trap 'rm -rf "$run"' EXIT

if [ ! -s "$kernel" ]; then
  echo "floor-test: fetching Debian 11's kernel from $mirror"
  curl -fsS -o "$run/InRelease" "$mirror/dists/$suite/InRelease"
  gpgv --keyring "$keyring" --output "$run/Release" "$run/InRelease" 2>"$run/gpgv.log" ||
    { cat "$run/gpgv.log"; echo "floor-test: $suite InRelease does not verify"; exit 1; }
  idx=main/binary-amd64/Packages.xz
  want=$(awk -v f="$idx" '/^SHA256:/{s=1; next} /^[A-Za-z]/{s=0} s && $3==f {print $1; exit}' "$run/Release")
  curl -fsS -o "$run/Packages.xz" "$mirror/dists/$suite/$idx"
  echo "$want  $run/Packages.xz" | sha256sum -c --quiet - || { echo "floor-test: $idx checksum mismatch"; exit 1; }
  xz -d "$run/Packages.xz"
  # The newest 5.10 cloud kernel in the index.
  read -r file sum < <(awk '
    /^Package: /{p=$2} /^Filename: /{f=$2} /^SHA256: /{s=$2}
    /^$/{ if (p ~ /^linux-image-5\.10\.0-[0-9]+-cloud-amd64-unsigned$/) print f, s; p=f=s="" }' "$run/Packages" |
    sort -V | tail -n1)
  [ -n "${file:-}" ] || { echo "floor-test: no 5.10 cloud kernel in $suite"; exit 1; }
  curl -fsS -o "$run/kernel.deb" "$mirror/$file"
  echo "$sum  $run/kernel.deb" | sha256sum -c --quiet - || { echo "floor-test: $file checksum mismatch"; exit 1; }
  dpkg-deb -x "$run/kernel.deb" "$run/kernel"
  mkdir -p "$cache"
  cp "$(ls "$run"/kernel/boot/vmlinuz-* | head -n1)" "$kernel.tmp"
  mv "$kernel.tmp" "$kernel"
fi

# The initramfs: busybox, interlockd and the shared libraries it links.
root=$run/root
mkdir -p "$root"/{bin,dev,proc,sys,run,tmp}
cp /bin/busybox "$root/bin/busybox"
cp "$interlockd" "$root/bin/interlockd"
for lib in $(ldd "$interlockd" | grep -o '/[^ ]*'); do
  mkdir -p "$root$(dirname "$lib")"
  cp -L "$lib" "$root$lib"
done
cat >"$root/init" <<'INIT'
#!/bin/busybox sh
/bin/busybox --install -s /bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs dev /dev
mount -t tmpfs tmpfs /run
mkdir -p /sys/fs/cgroup /sys/fs/bpf
mount -t cgroup2 cgroup2 /sys/fs/cgroup
mount -t bpf bpf /sys/fs/bpf
mkdir -p /sys/fs/cgroup/floor-test
echo "floor-test: guest kernel $(uname -r)"
interlockd --cgroup-root /sys/fs/cgroup/floor-test --bpffs /sys/fs/bpf/floor-test \
  --state-dir /tmp/state --socket /run/interlock.sock >/tmp/out 2>&1 &
pid=$!
# A daemon that passed the check would keep running: give it 20 s.
for _ in $(seq 20); do kill -0 $pid 2>/dev/null || break; sleep 1; done
if kill -0 $pid 2>/dev/null; then
  echo "floor-test: interlockd is still running on $(uname -r)"; kill $pid
  rc=running
else
  wait $pid; rc=$?
fi
echo "floor-test: interlockd exit $rc"
cat /tmp/out
if [ "$rc" != running ] && [ "$rc" != 0 ] && grep -q 'older than 5.15' /tmp/out; then
  echo "FLOOR-TEST PASS"
else
  echo "FLOOR-TEST FAIL"
fi
poweroff -f
INIT
chmod 755 "$root/init"
(cd "$root" && find . | cpio -o -H newc --quiet | gzip -1) >"$run/initrd.gz"

echo "floor-test: booting $(basename "$kernel") with interlockd"
timeout 300 "$qemu" -accel tcg -cpu max -m 512 -nodefaults -no-user-config -display none -no-reboot \
  -kernel "$kernel" -initrd "$run/initrd.gz" -append "console=ttyS0 panic=-1 quiet rdinit=/init" \
  -serial stdio </dev/null 2>"$run/qemu.err" | tr -d '\r' | tee "$run/out.log" | grep -E '^(floor-test|FLOOR-TEST|\{)' || true
grep -q '^FLOOR-TEST PASS' "$run/out.log" && { echo "floor-test: PASS"; exit 0; }
echo "floor-test: FAIL"; cat "$run/qemu.err"; tail -n 40 "$run/out.log"
exit 1
