#!/bin/sh
# shellcheck shell=sh
# The domU runs it with busybox ash, whose `read -t` (a timeout) POSIX sh lacks.
# shellcheck disable=SC3045
# Init of the harness's Linux PV domU (rows xen-pv/linux/linux-peer and xen-pv/pvkit-xen/linux-peer):
# writes the nonce to the start of its disk, writes and reads back a pattern, pings dom0 over its
# vif, a line each way through hvc1 if asked (pvkit.hvc1=1), reads a line dom0 types on its
# console, echoes the nonce. Everything it needs comes from the command line (pvkit.*=); it reports
# `PVKIT-SELFCHECK ...` lines that xtask/src/xen/scenario.rs checks.
mkdir -p /proc /sys /dev
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
nonce=
ip=
peer=
pings=1
hvc1=0
read -r cmdline </proc/cmdline
for w in $cmdline; do
    case $w in
    pvkit.nonce=*) nonce=${w#*=} ;;
    pvkit.ip=*) ip=${w#*=} ;;
    pvkit.peer=*) peer=${w#*=} ;;
    pvkit.pings=*) pings=${w#*=} ;;
    pvkit.hvc1=*) hvc1=${w#*=} ;;
    esac
done
for ko in /modules/*.ko; do insmod "$ko"; done
for _ in $(seq 300); do [ -b /dev/xvda ] && [ -e /sys/class/net/eth0 ] && break; sleep 0.1; done
[ -b /dev/xvda ] || echo "PVKIT-SELFCHECK error=no-xvda"
[ -e /sys/class/net/eth0 ] || echo "PVKIT-SELFCHECK error=no-eth0"
printf 'PVKIT-SELFCHECK-DISK nonce=%s\n' "$nonce" | dd of=/dev/xvda bs=512 conv=sync,fsync 2>/dev/null &&
    echo "PVKIT-SELFCHECK disk=written"
sync
mkdir -p /tmp
dd if=/dev/urandom of=/tmp/pattern bs=65536 count=4 2>/dev/null
dd if=/tmp/pattern of=/dev/xvda bs=65536 seek=8 conv=fsync 2>/dev/null &&
    echo "PVKIT-SELFCHECK pattern=written"
echo 3 >/proc/sys/vm/drop_caches
want=$(sha256sum </tmp/pattern | cut -d' ' -f1)
got=$(dd if=/dev/xvda bs=65536 skip=8 count=4 2>/dev/null | sha256sum | cut -d' ' -f1)
[ "$got" = "$want" ] && echo "PVKIT-SELFCHECK pattern=read-back"
echo "PVKIT-SELFCHECK disk_sha256=$(sha256sum </dev/xvda | cut -d' ' -f1)"
ip link set dev eth0 up || echo "PVKIT-SELFCHECK error=ip-link-status-$?"
ip addr add "$ip/24" dev eth0 || echo "PVKIT-SELFCHECK error=ip-addr-status-$?"
# A client that dies of a signal fails the row; the kernel's line about it is printed. (Busybox's
# ping used to die of SIGSEGV now and then: Xen's lazy FPU switching under QEMU's TCG lost its
# vector registers; the harness now boots Xen with eager switching, see xtask/src/xen/boot.rs.)
ping -c "$pings" -W 5 "$peer" >/tmp/ping.out 2>&1
status=$?
echo "PVKIT-SELFCHECK ping-status=$status"
sed 's/^/PVKIT-SELFCHECK ping-output: /' /tmp/ping.out
if [ "$status" -ge 128 ]; then
    dmesg | grep -i segfault | tail -n 1 | sed 's/^/PVKIT-SELFCHECK dmesg: /'
fi
got=$(sed -n 's/.* \([0-9]*\) packets received.*/\1/p' /tmp/ping.out)
echo "PVKIT-SELFCHECK ping=${got:-0}/$pings"
# With pvkit.hvc1=1 our daemon serves device/console/1, which hvc_xen makes hvc1 (every /dev/hvcN
# node exists anyway, so wait for the xenbus device's driver). One open for the write and the read:
# input the tty took in while open is dropped at its last close.
if [ "$hvc1" = 1 ]; then
    for _ in $(seq 50); do [ -e /sys/bus/xen/devices/console-1/driver ] && break; sleep 0.1; done
    if [ -e /sys/bus/xen/devices/console-1/driver ]; then
        (
            exec 3<>/dev/hvc1
            stty -echo <&3 2>/dev/null
            echo "PVKIT-SELFCHECK hvc1 nonce=$nonce" >&3
            read -r -t 10 line <&3
            echo "PVKIT-SELFCHECK hvc1-input=$(echo "$line" | tr -d '\r')"
        )
    else
        echo "PVKIT-SELFCHECK error=no-hvc1"
    fi
fi
echo "PVKIT-SELFCHECK console-ready"
read -r -t 30 line
echo "PVKIT-SELFCHECK input=$(echo "$line" | tr -d '\r')"
echo "PVKIT-SELFCHECK nonce=$nonce"
poweroff -f
