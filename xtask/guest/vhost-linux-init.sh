#!/bin/sh
# shellcheck shell=sh
# Init of the Debian Linux guest of the vhost-user scenario (qemu-pvh/pvkit-vhost-user/linux-peer):
# loads the virtio modules listed in /modules.list, writes 8 MiB of random data to the disk with
# O_DIRECT and reads it back, reads the host's half, discards a MiB, pings the echo peer.
# Everything it reports is a `PVKIT-LINUX key=value` line on the serial console; xtask checks
# them and the image (xtask/src/vhost.rs). Parameters come from the kernel command line
# (pvkit.ip=, pvkit.peer=, pvkit.pings=).
mkdir -p /proc /sys /dev /tmp
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev
ip=10.0.2.15
peer=10.0.2.1
pings=8
read -r cmdline </proc/cmdline
for w in $cmdline; do
    case $w in
    pvkit.ip=*) ip=${w#*=} ;;
    pvkit.peer=*) peer=${w#*=} ;;
    pvkit.pings=*) pings=${w#*=} ;;
    esac
done
while read -r m; do
    insmod "/$m" || echo "PVKIT-LINUX FAIL insmod $m"
done </modules.list
n=0
while [ ! -b /dev/vda ] && [ $n -lt 50 ]; do
    sleep 0.1
    n=$((n + 1))
done
echo "PVKIT-LINUX vda_sectors=$(cat /sys/block/vda/size)"
echo "PVKIT-LINUX discard_max=$(cat /sys/block/vda/queue/discard_max_bytes)"
# shellcheck disable=SC2046 # one word per queue directory
set -- /sys/block/vda/mq/*
echo "PVKIT-LINUX hw_queues=$#"
dd if=/dev/urandom of=/tmp/data bs=1M count=8 2>/dev/null
echo "PVKIT-LINUX wrote_sha256=$(sha256sum /tmp/data | cut -d' ' -f1)"
dd if=/tmp/data of=/dev/vda bs=1M oflag=direct conv=fsync 2>/dev/null || echo "PVKIT-LINUX FAIL dd write"
echo 3 >/proc/sys/vm/drop_caches
echo "PVKIT-LINUX readback_sha256=$(dd if=/dev/vda bs=1M count=8 iflag=direct 2>/dev/null | sha256sum | cut -d' ' -f1)"
echo "PVKIT-LINUX host_sha256=$(dd if=/dev/vda bs=1M skip=8 count=8 iflag=direct 2>/dev/null | sha256sum | cut -d' ' -f1)"
blkdiscard -o 25165824 -l 1048576 /dev/vda && echo "PVKIT-LINUX discarded=1"
echo "PVKIT-LINUX discard_sha256=$(dd if=/dev/vda bs=1M skip=24 count=1 iflag=direct 2>/dev/null | sha256sum | cut -d' ' -f1)"
ifconfig eth0 "$ip" netmask 255.255.255.0 up
ping -c "$pings" -i 0.2 -s 1400 "$peer" >/tmp/p1
echo "PVKIT-LINUX ping1400 $(grep 'packets transmitted' /tmp/p1)"
ping -c "$pings" -i 0.2 "$peer" >/tmp/p2
echo "PVKIT-LINUX ping56 $(grep 'packets transmitted' /tmp/p2)"
echo "PVKIT-LINUX done"
poweroff -f
