#!/bin/sh
# shellcheck shell=sh
# pvkit dom0 vif hotplug script: instead of a bridge, dom0's end of the vif gets 10.99.0.1/24, so
# dom0's own kernel answers the domU's ARP and ICMP echo requests. libxl runs it with `online` /
# `offline` and $vif, $XENBUS_PATH in the environment, and waits for `hotplug-status`.
# shellcheck disable=SC2154 # $vif and $XENBUS_PATH come from libxl.
case $1 in
online | add)
    if ip link set dev "$vif" up && ip addr add 10.99.0.1/24 dev "$vif"; then
        xenstore-write "$XENBUS_PATH/hotplug-status" connected
    else
        xenstore-write "$XENBUS_PATH/hotplug-status" error
    fi
    ;;
offline | remove)
    ip link set dev "$vif" down 2>/dev/null
    ;;
esac
exit 0
