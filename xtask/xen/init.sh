#!/bin/sh
# shellcheck shell=sh
# pvkit dom0 init: PID 1 of the Xen harness's dom0 (packed into its initramfs by xtask, see
# xtask/src/xen/). It starts the Xen toolstack, runs the domU scenarios listed in /pvkit/scenarios
# one after another, reports everything on its console (hvc0, i.e. Xen's serial line) as
# `PVKIT-XEN ...` lines, and powers the machine off.
#
# Per scenario (directory /pvkit/s/<name>): `domain.cfg` (xl config), `timeout` (seconds),
# optional `pre`, `running` and `post` (calls of the hook library /pvkit/lib.sh, xtask/xen/dom0-lib.sh,
# sourced before creation, once the domain exists with $domid set, and after the domain is gone;
# they report with `check key=value ...` and `note text`), optional `paused` (create paused,
# unpause after `running`).
#
# Output (parsed by xtask/src/xen/report.rs):
#   PVKIT-XEN DOM0 READY uptime=<s>
#   PVKIT-XEN SCENARIO <name> BEGIN
#   PVKIT-XEN SCENARIO <name> CREATED domid=<n> create_ms=<n>
#   PVKIT-XEN CONSOLE <name> | <one line of the domU's console>
#   PVKIT-XEN SCENARIO <name> CHECK <key>=<value> ...
#   PVKIT-XEN SCENARIO <name> NOTE <text>
#   PVKIT-XEN SCENARIO <name> END reason=<poweroff|crash|reboot|suspend|watchdog|soft_reset|timeout|create-failed|unknown> run_ms=<n>
#   PVKIT-XEN HARNESS END

export PATH=/usr/lib/xen-4.17/bin:/usr/sbin:/usr/bin:/sbin:/bin
export LD_LIBRARY_PATH=/lib/x86_64-linux-gnu:/usr/lib/x86_64-linux-gnu

say() { echo "PVKIT-XEN $*"; }
fatal() {
    say "FATAL $*"
    poweroff -f
}
# Milliseconds since boot (from /proc/uptime, 10 ms resolution).
now_ms() {
    read -r up _ </proc/uptime
    frac=${up#*.}
    echo $((${up%.*} * 1000 + ${frac#0} * 10))
}

mkdir -p /proc /sys /dev
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
mkdir -p /dev/pts /dev/shm /run /tmp /var/log/xen/console /var/lib/xen/dump
mount -t devpts devpts /dev/pts
# What udev would add; the hotplug scripts' locking stats /dev/stdin.
ln -s /proc/self/fd /dev/fd
ln -s fd/0 /dev/stdin
ln -s fd/1 /dev/stdout
ln -s fd/2 /dev/stderr
mount -t tmpfs tmpfs /run
mount -t tmpfs tmpfs /tmp
ln -s /run /var/run
mkdir -p /run/xen /run/xenstored /run/xen-hotplug
# Keep the kernel's own messages off the shared serial line.
echo 1 >/proc/sys/kernel/printk

while read -r ko; do
    insmod "$ko" || fatal "insmod $ko failed"
done </pvkit/modules
mount -t xenfs xenfs /proc/xen || fatal "mount xenfs failed"

xenstored --pid-file /run/xenstored.pid || fatal "xenstored failed"
xen-init-dom0 >/tmp/xen-init-dom0.log 2>&1 || {
    cat /tmp/xen-init-dom0.log
    fatal "xen-init-dom0 failed"
}
xenconsoled --pid-file=/run/xenconsoled.pid --log=guest --log-dir=/var/log/xen/console ||
    fatal "xenconsoled failed"
read -r up _ </proc/uptime
# From here on each scenario reports the kernel's reports of dom0 processes that crashed during it.
dmesg -c >/dev/null 2>&1
say "DOM0 READY uptime=$up"
# For the whole boot: does the platform keep user programs' FS base, fresh pages and vector
# registers? (PVKIT-XEN PLATFORM lines)
/pvkit/pvkit-platform-watch /tmp/platform-stop &
platform_pid=$!

# Prints the domU console log with a prefix, minus carriage returns.
dump_console() {
    log=/var/log/xen/console/guest-$1.log
    [ -f "$log" ] || {
        say "SCENARIO $1 NOTE no console log $log"
        return
    }
    tr -d '\r' <"$log" | while IFS= read -r line || [ -n "$line" ]; do
        echo "PVKIT-XEN CONSOLE $1 | $line"
    done
}

# Waits (up to ~3 s) until the console log has stopped growing: xenconsoled drains the ring of a
# domain that has shut down but still exists.
settle_console() {
    log=/var/log/xen/console/guest-$1.log
    last=-1
    for _ in 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15; do
        size=$(stat -c %s "$log" 2>/dev/null || echo 0)
        [ "$size" = "$last" ] && return
        last=$size
        sleep 0.2
    done
}

reason_name() {
    case $1 in
    0) echo poweroff ;; 1) echo reboot ;; 2) echo suspend ;; 3) echo crash ;;
    4) echo watchdog ;; 5) echo soft_reset ;; *) echo unknown ;;
    esac
}

run_scenario() {
    name=$1
    dir=/pvkit/s/$name
    say "SCENARIO $name BEGIN"
    check() { say "SCENARIO $name CHECK $*"; }
    note() { say "SCENARIO $name NOTE $*"; }
    # shellcheck disable=SC1090,SC1091 # generated per scenario
    [ -f "$dir/pre" ] && . "$dir/pre"
    timeout=$(cat "$dir/timeout")
    out=/tmp/xl-$name.log
    t0=$(now_ms)
    # -F: stay in the foreground until the domain shuts down and report why.
    paused=
    [ -f "$dir/paused" ] && paused=-p
    xl create -F $paused "$dir/domain.cfg" >"$out" 2>&1 &
    xl_pid=$!
    created=
    reason=
    deadline=$((t0 + timeout * 1000))
    while :; do
        if [ -z "$created" ] && domid=$(xl domid "$name" 2>/dev/null); then
            created=1
            say "SCENARIO $name CREATED domid=$domid create_ms=$(($(now_ms) - t0))"
            # shellcheck disable=SC1090,SC1091 # generated per scenario
            [ -f "$dir/running" ] && . "$dir/running"
            [ -n "$paused" ] && { xl unpause "$name" || note "xl unpause failed"; }
        fi
        if ! kill -0 "$xl_pid" 2>/dev/null; then
            wait "$xl_pid"
            status=$?
            code=$(sed -n 's/.*has shut down, reason code \([0-9]*\).*/\1/p' "$out" | head -n 1)
            if [ -n "$code" ]; then
                reason=$(reason_name "$code")
            elif [ -z "$created" ] || [ "$status" != 0 ]; then
                reason=create-failed
            else
                reason=unknown
            fi
            break
        fi
        if [ "$(now_ms)" -ge "$deadline" ]; then
            reason=timeout
            break
        fi
        sleep 0.2
    done
    run_ms=$(($(now_ms) - t0))
    settle_console "$name"
    xl destroy "$name" >/dev/null 2>&1
    kill "$xl_pid" 2>/dev/null
    wait "$xl_pid" 2>/dev/null
    if [ "$reason" != poweroff ]; then
        sed "s/^/PVKIT-XEN SCENARIO $name NOTE xl: /" "$out"
        [ -f /var/log/xen/xen-hotplug.log ] &&
            tail -n 20 /var/log/xen/xen-hotplug.log | sed "s/^/PVKIT-XEN SCENARIO $name NOTE hotplug: /"
    fi
    rm -f /var/log/xen/xen-hotplug.log
    dump_console "$name"
    # shellcheck disable=SC1090,SC1091 # generated per scenario
    [ -f "$dir/post" ] && . "$dir/post"
    # dom0 programs that died of a fault while the scenario ran (the kernel names them).
    dmesg -c 2>/dev/null | grep -E 'segfault|general protection|trap ' |
        sed "s/^/PVKIT-XEN SCENARIO $name NOTE dom0-kernel: /"
    say "SCENARIO $name END reason=$reason run_ms=$run_ms"
}

# The hook library (functions only).
# shellcheck source=xtask/xen/dom0-lib.sh
. /pvkit/lib.sh
while read -r name; do
    run_scenario "$name"
done </pvkit/scenarios
touch /tmp/platform-stop
wait "$platform_pid" || say "PLATFORM watcher-exit status=$?"
say "HARNESS END"
poweroff -f
