#!/bin/bash
# Builds the "debian:12" image: debootstrap --variant=minbase bookworm with openssh-server,
# iproute2 and ethtool, from the Debian mirror configured in /etc/apt (the only one
# reachable). Needs root; ~45 s, ~240 MB.
#
#   tools/images/build-debian.sh OUT_DIR
#
# Output format: see lib.sh. Cached: skipped while this script, lib.sh, rc.sh, the mirror
# and the versions of debootstrap and busybox-static are unchanged (the mirror's package
# versions are not part of the stamp: delete OUT_DIR/.stamp to force a rebuild).
# The image:
#   /sbin/oarcloud-init  (also /sbin/init) runs /etc/oarcloud/rc, then execs busybox init
#                        (busybox-static copied in, as a reaper and supervisor): inittab
#                        runs `ssh-keygen -A` at sysinit and respawns `/usr/sbin/sshd -D -e`
#   no SSH host keys     made at first boot, in the instance's own writable layer
#   pam_loginuid optional (it cannot write loginuid inside a user namespace)
#   /root/.ssh 0700, /etc/hostname and /etc/resolv.conf emptied (injected per instance)
# File ownership is kept as debootstrap made it (root, plus a few system groups).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
. "$here/lib.sh"

[ $# -eq 1 ] || die "usage: $0 OUT_DIR"
[ "$(id -u)" = 0 ] || die "must run as root (debootstrap)"
out=$1
mkdir -p "$out"
out=$(cd "$out" && pwd)
suite=bookworm

# The first mirror of the suite in /etc/apt (deb822 .sources or one-line format).
mirror() {
  local f
  for f in /etc/apt/sources.list.d/*.sources; do
    [ -f "$f" ] || continue
    awk -v suite="$suite" '
      /^[ \t]*$/ { if (uri != "" && ok) { print uri; exit } uri = ""; ok = 0; next }
      /^URIs:/ { uri = $2 }
      /^Suites:/ { for (i = 2; i <= NF; i++) if ($i == suite) ok = 1 }
      END { if (uri != "" && ok) print uri }' "$f" | head -n1
  done
  cat /etc/apt/sources.list /etc/apt/sources.list.d/*.list 2>/dev/null |
    awk -v suite="$suite" '$1 == "deb" { for (i = 2; i <= NF; i++) if ($i !~ /^\[/ && $i ~ /:\/\//) { if ($(i + 1) == suite) print $i; break } }'
}
url=$(mirror 2>/dev/null | head -n1 || true)
[ -n "$url" ] || die "no Debian mirror for $suite in /etc/apt/sources.list{,.d}"

versions=$(dpkg-query -W -f '${Package}=${Version}\n' debootstrap busybox-static 2>/dev/null) || die "need debootstrap and busybox-static"
stamp=$(stamp_of "$(sha256sum "$0" "$here/lib.sh" "$here/rc.sh")" "$versions" "$url" "$suite")
if cached "$out" "$stamp"; then
  log "up to date: $out/image.json"
  exit 0
fi

work=$(mktemp -d "$out/.build.XXXXXX")
trap 'rm -rf "$work"' EXIT
r=$work/rootfs
log "debootstrap $suite from $url"
debootstrap --variant=minbase --include=openssh-server,iproute2,ethtool "$suite" "$r" "$url" >"$work/debootstrap.log" 2>&1 ||
  { tail -n 30 "$work/debootstrap.log" >&2; die "debootstrap failed"; }

# Host keys are per instance: made at first boot.
rm -f "$r"/etc/ssh/ssh_host_*
sed -i 's/^session\s\+required\s\+pam_loginuid.so/session optional pam_loginuid.so/' "$r/etc/pam.d/sshd"
install -d -m 0700 "$r/root/.ssh"
install -d -m 0755 "$r/etc/oarcloud" "$r/usr/local/lib/oarcloud"
install -m 0755 /bin/busybox "$r/usr/local/lib/oarcloud/busybox"
install -m 0755 "$here/rc.sh" "$r/etc/oarcloud/rc"
cat >"$r/sbin/oarcloud-init" <<'INIT'
#!/bin/sh
# oarcloud init: instance set-up, then busybox init as PID 1 (reaps orphans, respawns sshd).
/etc/oarcloud/rc
mkdir -p /run/sshd
chmod 0755 /run/sshd
exec /usr/local/lib/oarcloud/busybox init
INIT
chmod 0755 "$r/sbin/oarcloud-init"
ln -sf oarcloud-init "$r/sbin/init"
cat >"$r/etc/inittab" <<'INITTAB'
::sysinit:/usr/bin/ssh-keygen -A
::respawn:/usr/sbin/sshd -D -e
::shutdown:/bin/sync
INITTAB
: >"$r/etc/hostname"
: >"$r/etc/resolv.conf"
rm -rf "$r"/var/cache/apt/archives/*.deb "$r"/var/lib/apt/lists/* "$r"/var/log/*.log "$r"/var/log/apt/* "$r"/tmp/* "$r"/dev/*

pack "$r" "$out" debian:12 "$stamp"
