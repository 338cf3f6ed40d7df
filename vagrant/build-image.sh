#!/usr/bin/env bash
# Builds the Debian 12 (bookworm) guest image that vagrant/run-vm-suite boots: the same
# system the Vagrant box gives (systemd as PID 1, unified cgroup v2, journald), made
# from the distribution's archive with mmdebstrap, for machines where Vagrant boxes
# cannot be downloaded (CI). Needs root and apt.
#
#   vagrant/build-image.sh          prints the image directory on stdout
#
# The image is cached in $HOSTD_VM_CACHE (default /var/tmp/hostd-vm, outside the
# checkout, so fresh CI clones on the same machine reuse it) under a key = hash of
# this script + the package list + the mirror: editing either builds a new image, an
# unchanged one costs nothing. Layout: $HOSTD_VM_CACHE/image-<key>/{rootfs.img,vmlinuz,initrd.img}.
# Env: HOSTD_VM_CACHE, HOSTD_VM_MIRROR (default: the host's apt mirror), HOSTD_VM_SIZE (3G)
set -euo pipefail
cache=${HOSTD_VM_CACHE:-/var/tmp/hostd-vm}
size=${HOSTD_VM_SIZE:-3G}
# What the guest needs: systemd + journald, a kernel with 9p, python3 + venv (hostd and
# pytest are installed from a wheelhouse built on the host: the guest has no network);
# sshd, sudo and rsync for the Vagrant box made from this image (vagrant/build-box; sshd
# is off here and turned on in the box).
pkgs=systemd,systemd-sysv,udev,dbus,linux-image-amd64,python3,python3-venv
pkgs+=,iproute2,procps,kmod,curl,ca-certificates,psmisc
pkgs+=,openssh-server,sudo,rsync
mirror=${HOSTD_VM_MIRROR:-$(grep -hoE '^(URIs:|deb) *https?://[^ ]+' /etc/apt/sources.list.d/*.sources \
          /etc/apt/sources.list 2>/dev/null | grep -oE 'https?://[^ ]+/debian$' | head -1 || true)}
mirror=${mirror:-http://deb.debian.org/debian}

key=$( (cat "$0"; echo "$pkgs $size $mirror") | sha256sum | cut -c1-16)
img=$cache/image-$key
log() { echo "build-image: $*" >&2; }

mkdir -p "$cache"
exec 9>"$cache/.lock"
flock 9                     # one build at a time; a second caller waits and reuses it
if [ -f "$img/rootfs.img" ]; then
  log "cached image $img"; echo "$img"; exit 0
fi

need=()
for t in mmdebstrap:mmdebstrap qemu-system-x86_64:qemu-system-x86 mkfs.ext4:e2fsprogs; do
  command -v "${t%%:*}" >/dev/null || need+=("${t#*:}")
done
if [ ${#need[@]} -gt 0 ]; then
  log "installing host tools: ${need[*]}"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${need[@]}" >&2
fi

tmp=$img.tmp
rm -rf "$tmp"; mkdir -p "$tmp"
trap 'rm -rf "$tmp"' EXIT
root=$tmp/rootfs
t0=$(date +%s)
log "mmdebstrap bookworm from $mirror (~2 min)"
mmdebstrap --variant=apt --mode=root --include="$pkgs" --aptopt='Acquire::Retries "3"' \
  bookworm "$root" \
  "deb $mirror bookworm main" "deb $mirror bookworm-updates main" \
  "deb ${mirror%/debian}/debian-security bookworm-security main" >&2
t1=$(date +%s)

# ---- guest configuration --------------------------------------------------------
echo hostd-vm > "$root/etc/hostname"
printf '127.0.0.1 localhost\n127.0.1.1 hostd-vm\n::1 localhost\n' > "$root/etc/hosts"
# a fixed machine-id: an empty one makes every boot a "first boot"
python3 -c 'import uuid; print(uuid.uuid4().hex)' > "$root/etc/machine-id"
echo '/dev/vda / ext4 rw,relatime 0 0' > "$root/etc/fstab"
chroot "$root" passwd -d root >/dev/null            # console login (--shell) without password
mkdir -p "$root/mnt/ctl"
# small initrd, fast boot: only what mounting /dev/vda needs
sed -i 's/^MODULES=.*/MODULES=list/' "$root/etc/initramfs-tools/initramfs.conf"
printf 'virtio_pci\nvirtio_blk\next4\n' >> "$root/etc/initramfs-tools/modules"
chroot "$root" update-initramfs -u -k all >/dev/null
# nothing periodic, no getty on tty1, no wait for a network that is not there; no sshd
# (run-vm-suite talks to the guest over 9p; build-box turns sshd on for Vagrant), and no
# host keys made once for every machine booted from this image
rm -f "$root"/etc/systemd/system/timers.target.wants/* \
      "$root/etc/systemd/system/getty.target.wants/getty@tty1.service" \
      "$root/etc/systemd/system/multi-user.target.wants/ssh.service" \
      "$root"/etc/ssh/ssh_host_*
# static address on qemu's user-mode network (host port forwards reach 10.0.2.15)
cat > "$root/etc/systemd/network/10-slirp.network" <<'EOF'
[Match]
Type=ether
[Network]
Address=10.0.2.15/24
Gateway=10.0.2.2
EOF
ln -sf /lib/systemd/system/systemd-networkd.service \
  "$root/etc/systemd/system/multi-user.target.wants/systemd-networkd.service"

# The guest side of run-vm-suite: mount the "ctl" 9p share (run.sh, env, wheelhouse;
# output and exit status go back there) and the checkout ("src", at the host's absolute
# path), run ctl/run.sh, power off (unless ctl/keep-running exists: --shell). Booted
# without a ctl share it does nothing.
cat > "$root/usr/local/sbin/hostd-vm-runner" <<'EOF'
#!/bin/bash
ctl=/mnt/ctl
o=trans=virtio,version=9p2000.L,msize=262144
mount -t 9p -o "$o" ctl "$ctl" 2>/dev/null || { echo "hostd-vm-runner: no ctl share, idle"; exit 0; }
echo "boot_s=$(cut -d' ' -f1 /proc/uptime)" > "$ctl/guest-timing"
src=$(cat "$ctl/src-path")
mkdir -p "$src" && mount -t 9p -o "$o,ro" src "$src" && cd "$src"
( set -a; . "$ctl/env"; set +a; exec bash "$ctl/run.sh" ) > "$ctl/output" 2>&1 < /dev/null
echo $? > "$ctl/rc.tmp"
echo "done_s=$(cut -d' ' -f1 /proc/uptime)" >> "$ctl/guest-timing"
sync; mv "$ctl/rc.tmp" "$ctl/rc"; sync
[ -e "$ctl/keep-running" ] || systemctl poweroff --no-block   # --shell: stay up
EOF
chmod 755 "$root/usr/local/sbin/hostd-vm-runner"
# Type=exec, not oneshot: a oneshot would keep multi-user.target (and so the boot)
# from finishing while the suite runs, and `systemctl is-system-running` says "starting"
cat > "$root/etc/systemd/system/hostd-vm-runner.service" <<'EOF'
[Unit]
Description=hostd VM suite runner (9p "ctl" share from vagrant/run-vm-suite)
After=network-online.target systemd-logind.service dbus.service local-fs.target systemd-journald.service
Wants=network-online.target
[Service]
Type=exec
ExecStart=/usr/local/sbin/hostd-vm-runner
StandardOutput=journal+console
[Install]
WantedBy=multi-user.target
EOF
ln -sf /etc/systemd/system/hostd-vm-runner.service \
  "$root/etc/systemd/system/multi-user.target.wants/hostd-vm-runner.service"

# ---- image ---------------------------------------------------------------------
cp "$root"/boot/vmlinuz-* "$tmp/vmlinuz"
cp "$root"/boot/initrd.img-* "$tmp/initrd.img"
truncate -s "$size" "$tmp/rootfs.img"
mkfs.ext4 -q -L hostd-vm -d "$root" "$tmp/rootfs.img"
rm -rf "$root"
t2=$(date +%s)
mv "$tmp" "$img"
trap - EXIT
# older images (another key) are dead weight
for d in "$cache"/image-*; do [ "$d" = "$img" ] || rm -rf "$d"; done
log "built $img: mmdebstrap $((t1-t0))s, configure+mkfs $((t2-t1))s," \
    "$(du -h "$img/rootfs.img" | cut -f1) on disk"
echo "$img"
