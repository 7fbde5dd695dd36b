#!/usr/bin/env bash
# run-vm.sh IMAGE_DIR DEB [GUEST_TEST]: boot a cached guest (build-image.sh)
# under QEMU with a throwaway copy-on-write overlay, hand it the package and
# the guest test (default guest-test.sh; the image runs it as guest-test.sh)
# with guest-lib.sh on a second disk, and stream the test's output (the
# guest's second serial port) to stdout. Exit 0 only if the guest test passed.
#
# Acceleration: KVM when a short probe boots a kernel with it (nested KVM
# fails on some CI machines), else TCG. INTERLOCK_VM_ACCEL=kvm|tcg forces it.
set -euo pipefail
img=${1:?usage: run-vm.sh IMAGE_DIR DEB [GUEST_TEST]}
deb=${2:?usage: run-vm.sh IMAGE_DIR DEB [GUEST_TEST]}
here=$(cd "$(dirname "$0")" && pwd)
guest_test=${3:-$here/guest-test.sh}
timeout_s=${INTERLOCK_VM_TIMEOUT:-1200}
qemu=${QEMU:-qemu-system-x86_64}

run=$(mktemp -d /var/tmp/interlock-vm-run.XXXXXX)
keep=${INTERLOCK_VM_KEEP:-}
trap '[ -n "$keep" ] && echo "run-vm: kept $run" || rm -rf "$run"' EXIT

# probe_kvm boots the guest kernel with KVM and no root disk: it must reach
# the "cannot mount root" panic in seconds. An emulation failure, a hang or
# no /dev/kvm means TCG.
probe_kvm() {
  [ -r /dev/kvm ] && [ -w /dev/kvm ] || { echo "no usable /dev/kvm"; return 1; }
  timeout 15 "$qemu" -accel kvm -cpu host -m 256 -nodefaults -no-user-config -display none \
    -no-reboot -kernel "$img/vmlinuz" -append "console=ttyS0 panic=-1 root=/dev/nonexistent" \
    -serial "file:$run/kvm-probe.log" </dev/null >"$run/kvm-probe.err" 2>&1 || true
  if grep -q "Kernel panic" "$run/kvm-probe.log" 2>/dev/null &&
     ! grep -qiE "emulation failure|internal error" "$run/kvm-probe.err"; then
    return 0
  fi
  echo "KVM probe failed: $(tail -n 3 "$run/kvm-probe.err" | tr '\n' ' ')"
  return 1
}

accel=${INTERLOCK_VM_ACCEL:-}
if [ -z "$accel" ]; then
  if why=$(probe_kvm); then accel=kvm; else accel=tcg; echo "run-vm: $why; using TCG"; fi
fi
case "$accel" in
kvm) accel_args=(-accel kvm -cpu host) ;;
# One TCG thread for both vCPUs: with a thread each, Debian 13's 6.12 kernel
# panicked at boot in about half the runs ("Oops: int3" in sched_clock_cpu),
# a vCPU still executing code the other had just patched with int3.
tcg) accel_args=(-accel tcg,thread=single,tb-size=256 -cpu max) ;;
*) echo "run-vm: INTERLOCK_VM_ACCEL=$accel: want kvm or tcg" >&2; exit 2 ;;
esac

# Device units wait up to 10 min: under TCG on a loaded host, udev can take
# longer than systemd's default 90 s to announce the second disk, and
# no_timer_check skips the IO-APIC timer test that a starved TCG guest fails
# ("IO-APIC + timer doesn't work" panics at boot).
# The guest boots with the bpf LSM active (named explicitly, so the test
# does not hang on a kernel's default list), so the LSM programs load
# and their refusals are proven there; the host suite covers kernels
# without it.
lsm=${INTERLOCK_VM_LSM:-lockdown,capability,landlock,yama,apparmor,bpf}

qemu-img create -q -f qcow2 -F raw -b "$img/rootfs.img" "$run/root.qcow2"
mkdir "$run/share"
cp "$deb" "$run/share/interlock.deb"
cp "$guest_test" "$run/share/guest-test.sh"
cp "$here/guest-lib.sh" "$run/share/"
# INTERLOCK_VM_CAPS_PROBE=1: also find which capabilities interlockd uses.
[ "${INTERLOCK_VM_CAPS_PROBE:-}" = 1 ] && touch "$run/share/caps-probe"
mkfs.ext4 -q -L vmshare -d "$run/share" "$run/share.img" 128M

echo "run-vm: booting $img with $(basename "$guest_test") ($accel, timeout ${timeout_s}s)"
start=$(date +%s)
set +e
timeout "$timeout_s" "$qemu" "${accel_args[@]}" -smp 2 -m 1536 \
  -nodefaults -no-user-config -display none -no-reboot \
  -kernel "$img/vmlinuz" -initrd "$img/initrd.img" \
  -append "root=/dev/vda rw console=ttyS0 panic=-1 loglevel=4 systemd.show_status=1 net.ifnames=0 systemd.default_device_timeout_sec=600 no_timer_check lsm=$lsm" \
  -drive "file=$run/root.qcow2,if=virtio,format=qcow2,cache=unsafe" \
  -drive "file=$run/share.img,if=virtio,format=raw,readonly=on" \
  -serial "file:$run/console.log" -serial stdio \
  </dev/null 2>"$run/qemu.err" | tee "$run/result.log"
qrc=${PIPESTATUS[0]}
set -e
echo "run-vm: guest ran $(( $(date +%s) - start ))s (qemu exit $qrc)"

if grep -q '^VMTEST-EXIT 0' "$run/result.log"; then
  echo "run-vm: PASS"
  exit 0
fi
echo "run-vm: FAIL"
[ "$qrc" = 124 ] && echo "run-vm: the guest did not finish within ${timeout_s}s"
echo "--- qemu stderr"; cat "$run/qemu.err"
echo "--- guest console (last 80 lines)"; tail -n 80 "$run/console.log"
exit 1
