#!/usr/bin/env bash
# Runs proxyd's IPVS tests (or any Python command) inside a qemu VM whose kernel has IPVS.
#
#   tests/vm/run.sh                      # python -m pytest on tests/vm/guest, in the guest
#   tests/vm/run.sh bench/bench_ipvs.py  # any python arguments, run from the repo root
#
# The machine's kernel has no IPVS and its KVM cannot boot a stock kernel, so this boots
# Debian's current linux-image-*-amd64 under TCG (software emulation) with a busybox
# initramfs that loads the IPVS/netfilter/ipset modules, mounts the machine's root file
# system read-only over 9p, mounts this repository read-write at the same path and
# chroots into it: the guest runs the machine's own Python and packages. The guest's exit
# code is this script's exit code. Everything downloaded or built is cached in
# tests/vm/.cache (gitignored); the kernel package is re-resolved every run because old
# ABI versions vanish from the archive (the cached one is used when apt cannot answer).
#
# Environment: PROXYD_VM_MEM (MiB, default 1024), PROXYD_VM_TIMEOUT (s, default 600).
# One vCPU: two vCPUs on this 2-core machine made run times swing widely. Arguments
# travel through a file, one per line, so they may hold spaces but not newlines.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../.." && pwd)
cache=$here/.cache  # inside the repository: the guest writes its exit code there
mem=${PROXYD_VM_MEM:-1024}
timeout_s=${PROXYD_VM_TIMEOUT:-600}

log() { echo "vm: $*" >&2; }
die() { log "$*"; exit 97; }

case "$repo$cache" in *" "*) die "paths with spaces cannot pass the kernel command line: $repo";; esac
for tool in qemu-system-x86_64 busybox cpio depmod modprobe dpkg-deb apt-get apt-cache; do
  command -v "$tool" >/dev/null || die "missing tool: $tool (run .ci/install)"
done
[ -x /bin/busybox ] && file_is_static=$(ldd /bin/busybox 2>&1 || true)
case "${file_is_static:-}" in *"not a dynamic"*|*"statically linked"*) ;; *) die "/bin/busybox must be busybox-static";; esac
mkdir -p "$cache"

# --- kernel: resolve the ABI package behind linux-image-amd64, download, unpack -------------
resolve_pkg() { apt-cache depends linux-image-amd64 2>/dev/null | awk '/Depends: linux-image-[0-9]/{print $2; exit}'; }
fetch_kernel() {  # prints the kernel version; falls back to the cached one when apt fails
  local pkg
  pkg=$(resolve_pkg)
  if [ -z "$pkg" ] || ! ls "$cache/debs/${pkg}_"*.deb >/dev/null 2>&1; then
    mkdir -p "$cache/debs"
    if [ -z "$pkg" ] || ! (cd "$cache/debs" && apt-get download -qq "$pkg" >/dev/null 2>&1); then
      log "refreshing apt lists to find the kernel package"
      apt-get update -qq >/dev/null 2>&1 || true
      pkg=$(resolve_pkg)
      [ -n "$pkg" ] && (cd "$cache/debs" && apt-get download -qq "$pkg" >/dev/null 2>&1) || pkg=
    fi
  fi
  if [ -n "$pkg" ] && ls "$cache/debs/${pkg}_"*.deb >/dev/null 2>&1; then
    echo "${pkg#linux-image-}"
  elif [ -s "$cache/KVER" ]; then
    log "apt could not provide the kernel; using the cached $(cat "$cache/KVER")"
    cat "$cache/KVER"
  else
    die "cannot download linux-image-amd64's kernel package"
  fi
}
kver=$(fetch_kernel)
kroot=$cache/kroot-$kver
if [ ! -f "$kroot/.unpacked" ]; then
  log "unpacking linux-image-$kver"
  rm -rf "$kroot" && mkdir -p "$kroot"
  dpkg-deb -x "$cache/debs/linux-image-${kver}_"*.deb "$kroot"
  depmod -b "$kroot" "$kver"
  touch "$kroot/.unpacked"
  # keep only this version's package and tree
  find "$cache/debs" -name 'linux-image-*.deb' ! -name "linux-image-${kver}_*" -delete
  find "$cache" -maxdepth 1 -name 'kroot-*' ! -name "kroot-$kver" -exec rm -rf {} +
fi
echo "$kver" > "$cache/KVER"

# --- initramfs: busybox, modules in dependency order, an init that chroots into the host fs --
# IPVS and schedulers, devices for the test topology (sctp: the pods' SCTP servers), 9p,
# and what proxyd's iptables rules and ipsets need (nft and legacy), so nothing is loaded
# on demand later.
modules="virtio_pci 9pnet_virtio 9p veth dummy bridge sctp
  ip_vs ip_vs_rr ip_vs_wrr ip_vs_lc ip_vs_wlc ip_vs_lblc ip_vs_lblcr ip_vs_dh ip_vs_sh
  ip_vs_sed ip_vs_nq ip_vs_mh
  nf_conntrack nf_conntrack_netlink nf_nat nf_tables nft_compat nft_chain_nat nft_ct nft_reject_inet
  ip_tables iptable_nat iptable_filter ip6_tables ip6table_nat ip6table_filter
  xt_set xt_MASQUERADE xt_mark xt_addrtype xt_conntrack xt_comment xt_multiport
  xt_statistic xt_recent ipt_REJECT ip6t_REJECT
  ip_set ip_set_hash_ip ip_set_hash_ipport ip_set_hash_ipportip ip_set_hash_ipportnet
  ip_set_hash_net ip_set_bitmap_port"
initrd=$cache/initrd-$kver.img
stamp=$(cat "$0" | sha256sum | cut -c1-16)
if [ ! -f "$initrd" ] || [ "$(cat "$initrd.stamp" 2>/dev/null)" != "$stamp" ]; then
  log "building initramfs for $kver"
  rm -rf "$cache"/initramfs.*
  w=$(mktemp -d "$cache/initramfs.XXXXXX")
  mkdir -p "$w"/{bin,proc,sys,dev,newroot}
  cp /bin/busybox "$w/bin/busybox"
  for a in sh mount umount mkdir insmod cat echo chroot poweroff sync; do ln -s busybox "$w/bin/$a"; done
  for m in $modules; do
    modprobe -d "$kroot" -S "$kver" --show-depends "$m" | awk '$1=="insmod"{print $2}'
  done | awk '!seen[$0]++' | while read -r f; do
    rel=${f#"$kroot"/}
    mkdir -p "$w/$(dirname "$rel")"
    cp "$f" "$w/$rel"
    echo "/$rel" >> "$w/modlist"
  done
  cat > "$w/init" <<'EOF'
#!/bin/sh
export PATH=/bin
mount -t proc proc /proc; mount -t sysfs sys /sys; mount -t devtmpfs dev /dev
for m in $(cat /modlist); do insmod "$m" 2>/dev/null || echo "vm-guest: insmod failed: $m"; done
for w in $(cat /proc/cmdline); do
  case $w in proxyd.repo=*) REPO=${w#*=};; proxyd.run=*) RUN=${w#*=};; esac
done
o=trans=virtio,version=9p2000.L,msize=512000
mount -t 9p -o $o,ro,cache=loose hostroot /newroot || echo "vm-guest: root share failed"
for d in proc sys dev; do mount --rbind /$d /newroot/$d; done
mount -t tmpfs tmp /newroot/tmp; mount -t tmpfs run /newroot/run
# a checkout under /tmp or /run is hidden by the tmpfs above: make its mount point there
[ -d "/newroot$REPO" ] || mkdir -p "/newroot$REPO"
mount -t 9p -o $o repo /newroot$REPO || echo "vm-guest: repo share failed"
chroot /newroot /bin/sh "$REPO/tests/vm/guest.sh" "$RUN"
echo $? > /newroot$RUN/rc
sync; umount /newroot$REPO
poweroff -f
EOF
  chmod +x "$w/init"
  (cd "$w" && find . | cpio -o -H newc --quiet | gzip -1 > "$initrd.tmp")
  mv "$initrd.tmp" "$initrd"; echo "$stamp" > "$initrd.stamp"
  rm -rf "$w"
fi

# --- run: the command goes through a file (the kernel command line splits on spaces) --------
run=$(mktemp -d "$cache/run.XXXXXX")
trap 'rm -rf "$run"' EXIT
python3 -c 'import sys; print(sys.executable)' > "$run/python"
if [ $# -eq 0 ]; then
  set -- -m pytest -c tests/vm/guest/pytest.ini -q tests/vm/guest
fi
printf '%s\n' "$@" > "$run/args"
log "booting $kver (TCG, ${mem} MiB): python $*"
start=$(date +%s.%N)
set +e
timeout "$timeout_s" qemu-system-x86_64 -accel tcg -cpu max -m "$mem" -smp 1 \
  -nographic -nodefaults -serial stdio -no-reboot \
  -kernel "$kroot/boot/vmlinuz-$kver" -initrd "$initrd" \
  -append "console=ttyS0 quiet loglevel=3 panic=-1 proxyd.repo=$repo proxyd.run=$run" \
  -virtfs local,path=/,mount_tag=hostroot,security_model=none,readonly=on,multidevs=remap \
  -virtfs "local,path=$repo,mount_tag=repo,security_model=none,multidevs=remap" \
  </dev/null
qrc=$?
set -e
log "qemu exit $qrc after $(python3 -c "print(round($(date +%s.%N) - $start, 1))") s"
[ -s "$run/rc" ] || die "the guest wrote no exit code (qemu $qrc)"
exit "$(cat "$run/rc")"
