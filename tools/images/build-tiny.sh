#!/bin/bash
# Builds the "tiny:latest" image in seconds from Debian packages of this machine:
# busybox-static (shell, init, ip, hostname…) + dropbear (SSH server, dynamically linked:
# copied with its shared libraries and the loader) + ethtool (tx offload off).
#
#   tools/images/build-tiny.sh OUT_DIR
#
# Output format: see lib.sh (OUT_DIR/layer.tar, OUT_DIR/image.json). Cached: the build is
# skipped while this script, lib.sh, rc.sh and the package versions are unchanged.
# The image:
#   /sbin/init          busybox init; /etc/inittab runs /etc/oarcloud/rc at sysinit and
#                       respawns `dropbear -F -E -R -p 22` (busybox init reaps orphans)
#   /etc/oarcloud/rc    network, hostname (rc.sh; reads /etc/oarcloud/net)
#   no SSH host keys    dropbear -R makes them at first connection, in the instance's own
#                       writable layer, so every instance has its own
#   /dev empty          libvirt populates it
# Runs without root (ownership is forced to 0:0 in the tarball).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
. "$here/lib.sh"

[ $# -eq 1 ] || die "usage: $0 OUT_DIR"
out=$1
mkdir -p "$out"
out=$(cd "$out" && pwd)

pkgs="busybox-static dropbear-bin ethtool libc6 libtomcrypt1 libtommath1 zlib1g libcrypt1 libgmp10 libmnl0"
versions=$(dpkg-query -W -f '${Package}=${Version}\n' $pkgs 2>/dev/null) || die "missing packages (need: $pkgs)"
stamp=$(stamp_of "$(sha256sum "$0" "$here/lib.sh" "$here/rc.sh")" "$versions")
if cached "$out" "$stamp"; then
  log "up to date: $out/image.json"
  exit 0
fi

work=$(mktemp -d "$out/.build.XXXXXX")
trap 'rm -rf "$work"' EXIT
r=$work/rootfs
mkdir -p "$r"
cd "$r"
mkdir -p bin sbin usr/bin usr/sbin lib lib64 etc/oarcloud etc/dropbear root/.ssh tmp dev proc sys run var/log var/run home
chmod 0700 root root/.ssh
chmod 1777 tmp

install -m 0755 /bin/busybox bin/busybox
# One symlink per applet, at busybox's own idea of its path (bin/sh, sbin/init, …).
for applet in $(/bin/busybox --list-full); do
  [ -e "$applet" ] || [ -L "$applet" ] || ln -s /bin/busybox "$applet"
done

copy_with_libs "$r" /usr/sbin/dropbear /usr/bin/dropbearkey /usr/sbin/ethtool

install -m 0755 "$here/rc.sh" etc/oarcloud/rc
cat >etc/inittab <<'INITTAB'
::sysinit:/etc/oarcloud/rc
::respawn:/usr/sbin/dropbear -F -E -R -p 22
::restart:/sbin/init
::shutdown:/bin/sync
INITTAB
cat >etc/passwd <<'X'
root:x:0:0:root:/root:/bin/sh
nobody:x:65534:65534:nobody:/nonexistent:/bin/false
X
cat >etc/group <<'X'
root:x:0:
nogroup:x:65534:
X
# "*": no password login, but not locked ("!" would make dropbear refuse keys too).
printf 'root:*:19000:0:99999:7:::\nnobody:*:19000:0:99999:7:::\n' >etc/shadow
chmod 0600 etc/shadow
echo /bin/sh >etc/shells
echo 'hosts: files' >etc/nsswitch.conf
echo tiny >etc/hostname
printf '127.0.0.1\tlocalhost\n::1\tlocalhost\n' >etc/hosts
: >etc/resolv.conf
printf 'export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin\n' >etc/profile

pack "$r" "$out" tiny:latest "$stamp" --owner=0 --group=0
