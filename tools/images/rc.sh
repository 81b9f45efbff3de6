#!/bin/sh
# oarcloud instance start-up, run once at boot by the image's init (before sshd).
# Installed as /etc/oarcloud/rc in every oarcloud image (tools/images/build-*.sh).
#
# 1. brings up lo;
# 2. configures each interface listed in /etc/oarcloud/net, one per line:
#        IFACE ADDRESS/PREFIX GATEWAY MTU
#    e.g. "eth0 10.20.0.5/24 10.20.0.1 1446". GATEWAY and MTU may be "-" (none / keep);
#    ADDRESS may be "-" (link up only). Blank lines and lines starting with # are ignored.
#    The first line with a gateway sets the default route. The agent writes this file.
# 3. turns tx checksum offload off on those interfaces if ethtool is present (the OVS
#    userspace datapath drops TCP otherwise: notes/HOST.md);
# 4. sets the hostname from /etc/hostname.
# It never fails the boot: every step is best effort and logs to the console.
PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
export PATH

log() { echo "oarcloud-rc: $*"; }

ip link set dev lo up 2>/dev/null || log "cannot bring lo up"

if [ -r /etc/oarcloud/net ]; then
  route_set=
  while read -r iface addr gw mtu _rest; do
    case "$iface" in '' | '#'*) continue ;; esac
    if ! ip link show dev "$iface" >/dev/null 2>&1; then
      log "no interface $iface"
      continue
    fi
    if [ -n "$mtu" ] && [ "$mtu" != "-" ]; then
      ip link set dev "$iface" mtu "$mtu" || log "cannot set mtu $mtu on $iface"
    fi
    ip link set dev "$iface" up || log "cannot bring $iface up"
    if [ -n "$addr" ] && [ "$addr" != "-" ]; then
      ip addr flush dev "$iface" scope global 2>/dev/null
      ip addr add "$addr" dev "$iface" || log "cannot add $addr to $iface"
    fi
    if command -v ethtool >/dev/null 2>&1; then
      ethtool -K "$iface" tx off >/dev/null 2>&1 || log "cannot turn tx offload off on $iface"
    fi
    if [ -z "$route_set" ] && [ -n "$gw" ] && [ "$gw" != "-" ]; then
      ip route replace default via "$gw" dev "$iface" && route_set=1 || log "cannot set default route via $gw"
    fi
  done </etc/oarcloud/net
fi

if [ -s /etc/hostname ]; then
  read -r name </etc/hostname
  [ -n "$name" ] && { hostname "$name" 2>/dev/null || log "cannot set hostname $name"; }
fi
exit 0
