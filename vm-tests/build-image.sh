#!/usr/bin/env bash
# build-image.sh OUTDIR [SUITE]: build a guest for the VM test from Debian's
# packages with debootstrap (SUITE bookworm, the default, or trixie), and
# leave in OUTDIR
#   rootfs.img   raw ext4 root filesystem (booted read-only through a qcow2 overlay)
#   vmlinuz      Debian's linux-image-cloud-amd64 kernel (6.1 in bookworm, 6.12 in trixie)
#   initrd.img   its initramfs
# Needs root, debootstrap and e2fsprogs; no loop devices or mounts of the
# image (mkfs.ext4 -d fills the filesystem from a directory).
set -euo pipefail
out=${1:?usage: build-image.sh OUTDIR [SUITE]}
suite=${2:-bookworm}
here=$(cd "$(dirname "$0")" && pwd)

# The host's Debian mirror, so this works where only that mirror is
# reachable; it serves every suite, whichever one the host runs.
mirror=${INTERLOCK_VM_MIRROR:-}
if [ -z "$mirror" ]; then
  mirror=$(awk '/^URIs:/{print $2; exit}' /etc/apt/sources.list.d/debian.sources 2>/dev/null || true)
fi
if [ -z "$mirror" ]; then
  mirror=$(awk '$1=="deb" && $3 ~ /^bookworm$/ {print $2; exit}' /etc/apt/sources.list 2>/dev/null || true)
fi
mirror=${mirror:-http://deb.debian.org/debian}

work=$(mktemp -d /var/tmp/interlock-vm-build.XXXXXX)
root=$work/root
cleanup() {
  for m in dev/pts dev proc sys; do
    mountpoint -q "$root/$m" 2>/dev/null && umount -l "$root/$m"
  done
  rm -rf "$work"
}
trap cleanup EXIT

echo "build-image: debootstrap $suite from $mirror"
# Two stages, so that dpkg in the second one already runs without an fsync
# per file (the image is rebuilt, never repaired) and without
# documentation, manual pages and translations nobody reads here.
debootstrap --foreign --variant=minbase --include=ca-certificates "$suite" "$root" "$mirror" >"$work/debootstrap.log" 2>&1 || {
  tail -n 40 "$work/debootstrap.log" "$root/debootstrap/debootstrap.log" 2>/dev/null
  exit 1
}
mkdir -p "$root/etc/dpkg/dpkg.cfg.d"
cat >"$root/etc/dpkg/dpkg.cfg.d/interlock-vm" <<DPKG
force-unsafe-io
path-exclude=/usr/share/doc/*
path-exclude=/usr/share/man/*
path-exclude=/usr/share/locale/*
path-exclude=/usr/share/info/*
DPKG
chroot "$root" /debootstrap/debootstrap --second-stage >>"$work/debootstrap.log" 2>&1 || {
  tail -n 40 "$work/debootstrap.log" "$root/debootstrap/debootstrap.log" 2>/dev/null
  exit 1
}
cat >"$root/etc/apt/sources.list" <<SOURCES
deb $mirror $suite main
deb $mirror $suite-updates main
SOURCES
# No service starts inside the chroot.
printf '#!/bin/sh\nexit 101\n' >"$root/usr/sbin/policy-rc.d"
chmod +x "$root/usr/sbin/policy-rc.d"
mount -t proc proc "$root/proc"
mount -t sysfs sys "$root/sys"
mount --bind /dev "$root/dev"
mount -t devpts devpts "$root/dev/pts"

install -m 0755 "$here/provision.sh" "$root/tmp/provision.sh"
install -m 0755 "$here/vm-run" "$root/tmp/vm-run"
install -m 0644 "$here/interlock-vm-run.service" "$root/tmp/interlock-vm-run.service"
echo "build-image: provision (packages: systemd, linux-image-cloud-amd64, postgresql, psql)"
chroot "$root" /tmp/provision.sh image >"$work/provision.log" 2>&1 || {
  tail -n 60 "$work/provision.log"
  exit 1
}
rm -f "$root/usr/sbin/policy-rc.d" "$root"/tmp/provision.sh "$root"/tmp/vm-run "$root"/tmp/interlock-vm-run.service
for m in dev/pts dev proc sys; do umount "$root/$m"; done

mkdir -p "$out"
kernel=$(ls "$root"/boot/vmlinuz-* | sort -V | tail -n 1)
cp "$kernel" "$out/vmlinuz.tmp"
cp "$root/boot/initrd.img-${kernel##*/vmlinuz-}" "$out/initrd.img.tmp"
rm -f "$out/rootfs.img.tmp"
mkfs.ext4 -q -F -L interlock-vm -d "$root" "$out/rootfs.img.tmp" 3G
for f in vmlinuz initrd.img rootfs.img; do mv "$out/$f.tmp" "$out/$f"; done
echo "build-image: done: kernel ${kernel##*/vmlinuz-}, $(du -sh --apparent-size "$out/rootfs.img" | cut -f1) image"
