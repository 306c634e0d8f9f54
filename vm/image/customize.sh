#!/bin/sh
# Runs inside the new root filesystem (chroot) after the packages are installed.
set -eu

echo unitchaos > /etc/hostname
echo '/dev/vda / ext4 rw,relatime 0 1' > /etc/fstab
# A fixed machine id: every instance boots from the same read-only base, and an
# empty id would make each boot a "first boot" (presets, slower start).
echo 5ad7e3c0a3f14b0d9c6c0f1e2d3c4b5a > /etc/machine-id

# Journal in memory: the root disk stays quiet, and writing to it is not what we test.
mkdir -p /etc/systemd/journald.conf.d
printf '[Journal]\nStorage=volatile\nRuntimeMaxUse=32M\n' > /etc/systemd/journald.conf.d/unitchaos.conf

systemctl enable systemd-networkd.service unitchaos-ready.service unitchaos-cmdd.service unitchaos-health.service docker.service
# Nothing in the experiments needs these, and under emulation every unit costs time.
systemctl mask apt-daily.timer apt-daily-upgrade.timer e2scrub_all.timer e2scrub_reap.service \
    fstrim.timer systemd-networkd-wait-online.service getty@tty1.service serial-getty@ttyS0.service \
    systemd-timesyncd.service man-db.timer dpkg-db-backup.timer xfs_scrub_all.timer 2>/dev/null || true
# systemd loads these at boot whatever the hardware (see /etc/modprobe.d/unitchaos.conf for
# why fewer module loads matter here); none is used: Docker's overlay2 needs no loop device.
systemctl mask modprobe@drm.service modprobe@efi_pstore.service modprobe@fuse.service \
    modprobe@loop.service modprobe@dm_mod.service systemd-binfmt.service \
    proc-sys-fs-binfmt_misc.automount 2>/dev/null || true

# Direct kernel boot: a small initramfs with just what the root disk and fw_cfg need.
sed -i 's/^MODULES=.*/MODULES=list/' /etc/initramfs-tools/initramfs.conf
printf 'virtio_pci\nvirtio_blk\nqemu_fw_cfg\n' > /etc/initramfs-tools/modules
update-initramfs -u -k all >/dev/null

mkdir -p /root/.ssh
chmod 700 /root/.ssh
chmod 600 /root/.ssh/authorized_keys
sed -i 's/^#\?UseDNS.*/UseDNS no/' /etc/ssh/sshd_config
