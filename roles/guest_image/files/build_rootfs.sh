#!/bin/bash
# Build a bootable guest disk offline from the distribution mirror (debootstrap), then
# pack the tree into an ext4 image with `mkfs.ext4 -d` (no loop device, no mount).
# Outputs in OUT_DIR: disk.img (raw ext4), vmlinuz, initrd.img, ssh_host_ed25519_key.pub.
# Everything is built in a work directory beside OUT_DIR and moved in at the end, so an
# interrupted build never leaves a half image that looks complete.
# Inputs (environment): OUT_DIR SUITE MIRROR KEYRING PACKAGES SIZE_MIB AUTHORIZED_KEY
#                       HOSTNAME_BASE
set -euo pipefail

: "${OUT_DIR:?}" "${SUITE:?}" "${MIRROR:?}" "${PACKAGES:?}" "${SIZE_MIB:?}" "${AUTHORIZED_KEY:?}"
HOSTNAME_BASE="${HOSTNAME_BASE:-cvmh-guest}"
work="$(mktemp -d "${OUT_DIR%/}.build.XXXXXX")"
root="$work/rootfs"
cleanup() {
    # debootstrap may leave proc/sys mounted in the chroot when interrupted
    for m in proc sys dev/pts dev; do
        mountpoint -q "$root/$m" 2>/dev/null && umount -l "$root/$m" || true
    done
    rm -rf "$work"
}
trap cleanup EXIT

keyring_args=()
if [ -n "${KEYRING:-}" ] && [ -f "$KEYRING" ]; then
    keyring_args=(--keyring="$KEYRING")
fi

debootstrap --variant=minbase --merged-usr "${keyring_args[@]}" \
    --include="$PACKAGES" "$SUITE" "$root" "$MIRROR"

in_root() { chroot "$root" /usr/bin/env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin "$@"; }

echo "$HOSTNAME_BASE" > "$root/etc/hostname"
printf '127.0.0.1 localhost\n127.0.1.1 %s\n::1 localhost ip6-localhost\n' \
    "$HOSTNAME_BASE" > "$root/etc/hosts"
printf '/dev/vda / ext4 defaults,noatime 0 1\n' > "$root/etc/fstab"
# Same mirror as the host, for roles that install packages inside the guest.
printf 'deb %s %s main\n' "$MIRROR" "$SUITE" > "$root/etc/apt/sources.list"
printf 'deb-src %s %s main\n' "$MIRROR" "$SUITE" >> "$root/etc/apt/sources.list"

# Any virtio NIC gets DHCP (QEMU user networking, or a libvirt NAT network).
mkdir -p "$root/etc/systemd/network"
printf '[Match]\nName=en* eth*\n\n[Network]\nDHCP=ipv4\n' \
    > "$root/etc/systemd/network/20-cvmh.network"
in_root systemctl enable systemd-networkd.service
printf 'nameserver 10.0.2.3\n' > "$root/etc/resolv.conf"

# Host key generated here, once per image build, and pinned by the role in the
# harness's known_hosts; no other key type, so there is nothing else to trust.
rm -f "$root"/etc/ssh/ssh_host_*
ssh-keygen -q -t ed25519 -N '' -C "$HOSTNAME_BASE" -f "$root/etc/ssh/ssh_host_ed25519_key"
cat > "$root/etc/ssh/sshd_config.d/cvmh.conf" <<CONF
HostKey /etc/ssh/ssh_host_ed25519_key
PermitRootLogin prohibit-password
PasswordAuthentication no
UseDNS no
CONF
install -d -m 0700 "$root/root/.ssh"
printf '%s\n' "$AUTHORIZED_KEY" > "$root/root/.ssh/authorized_keys"
chmod 0600 "$root/root/.ssh/authorized_keys"
in_root passwd -l root >/dev/null

# Quiet, fast boot: no timers that start apt in the middle of a measurement, no
# distribution nginx on port 80 (the bench instance is separate).
for unit in apt-daily.timer apt-daily-upgrade.timer man-db.timer e2scrub_all.timer \
            fstrim.timer nginx.service; do
    in_root systemctl disable "$unit" >/dev/null 2>&1 || true
done
for unit in systemd-timesyncd.service e2scrub_reap.service systemd-binfmt.service \
            getty-static.service systemd-networkd-wait-online.service; do
    in_root systemctl mask "$unit" >/dev/null 2>&1 || true
done

# A small initramfs with only what a virtio guest needs to mount its root: under TCG
# every megabyte of initramfs costs boot time.
printf 'MODULES=list\n' > "$root/etc/initramfs-tools/conf.d/cvmh.conf"
printf '%s\n' virtio_pci virtio_blk virtio_scsi virtio_net ext4 >> "$root/etc/initramfs-tools/modules"
in_root update-initramfs -u -k all >/dev/null
in_root apt-get clean
rm -rf "$root"/var/lib/apt/lists/* "$root"/tmp/* "$root"/var/tmp/*

kernel="$(ls "$root"/boot/vmlinuz-* | sort -V | tail -n 1)"
initrd="$(ls "$root"/boot/initrd.img-* | sort -V | tail -n 1)"
cp "$kernel" "$work/vmlinuz"
cp "$initrd" "$work/initrd.img"
cp "$root/etc/ssh/ssh_host_ed25519_key.pub" "$work/ssh_host_ed25519_key.pub"
basename "$kernel" | sed 's/^vmlinuz-//' > "$work/kernel-release"

mkfs.ext4 -q -F -L cvmh-root -d "$root" "$work/disk.img" "${SIZE_MIB}M"

mkdir -p "$OUT_DIR"
for f in disk.img vmlinuz initrd.img ssh_host_ed25519_key.pub kernel-release; do
    mv -f "$work/$f" "$OUT_DIR/$f"
done
