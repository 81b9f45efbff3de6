#!/usr/bin/env bash
# Wire the oarcloud hooks into OAR: point SERVER_PROLOGUE_EXEC_FILE,
# SERVER_EPILOGUE_EXEC_FILE, PROLOGUE_EXEC_FILE and EPILOGUE_EXEC_FILE of oar.conf at
# infra/oar/hooks/*, and write /etc/oar/oarcloud-hooks.env with what the hooks must
# know (repository path resolved now, node binary, log file, timeout).
# Idempotent: prints "configured" when it changed something, "unchanged" otherwise.
#
# Usage: install.sh [--repo DIR] [--log-dir DIR] [--conf FILE] [--timeout SECONDS]
#                   [--env KEY=VALUE]...   (extra variables exported to the CLI)
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=${OARCLOUD_REPO:-$(cd "$HERE/../.." && pwd)}
LOG_DIR_HOOKS=/var/log/oarcloud
OAR_CONF=/etc/oar/oar.conf
HOOK_TIMEOUT=20
ENV_FILE=/etc/oar/oarcloud-hooks.env
EXTRA_ENV=()

die() { printf 'install.sh: %s\n' "$*" >&2; exit 1; }

parse_args() {
  while (($#)); do
    case $1 in
      --repo) REPO=$(cd "$2" && pwd); shift 2 ;;
      --log-dir) LOG_DIR_HOOKS=$2; shift 2 ;;
      --conf) OAR_CONF=$2; shift 2 ;;
      --timeout) HOOK_TIMEOUT=$2; shift 2 ;;
      --env)
        [[ $2 =~ ^[A-Za-z_][A-Za-z0-9_]*=[^\']*$ ]] || die "bad --env $2 (KEY=VALUE, no single quote)"
        EXTRA_ENV+=("$2"); shift 2 ;;
      -h | --help) sed -n '2,10p' "$0"; exit 0 ;;
      *) die "unknown argument: $1" ;;
    esac
  done
}

# set_conf FILE KEY VALUE : KEY="VALUE", replacing an active line or appending one.
set_conf() {
  local file=$1 key=$2 value=$3
  if grep -qE "^[[:space:]]*$key=" "$file"; then
    sed -i -E "s|^[[:space:]]*$key=.*|$key=\"$value\"|" "$file"
  else
    printf '%s="%s"\n' "$key" "$value" >>"$file"
  fi
}

# replace_if_changed DEST MODE OWNER SRC : returns 0 if DEST was (re)written.
replace_if_changed() {
  local dest=$1 mode=$2 owner=$3 src=$4
  if [[ -f $dest ]] && cmp -s "$src" "$dest"; then
    rm -f "$src"
    return 1
  fi
  chmod "$mode" "$src"
  chown "$owner" "$src"
  mv -f "$src" "$dest"
}

main() {
  parse_args "$@"
  [[ $EUID -eq 0 ]] || die "run as root"
  [[ -f $OAR_CONF ]] || die "$OAR_CONF not found (is oar-server installed?)"
  local k kv node changed=no tmp
  for k in server-prologue server-epilogue prologue epilogue run-hook; do
    [[ -x $HERE/hooks/$k ]] || die "missing executable $HERE/hooks/$k"
  done
  # Hooks run as oar: its log folder must be writable by oar.
  install -d -o oar -g oar -m 755 "$LOG_DIR_HOOKS"
  node=$(command -v node || echo /usr/bin/node)

  tmp=$(mktemp "$ENV_FILE.XXXXXX")
  cat >"$tmp" <<ENV
# Written by $HERE/install.sh: read by the oarcloud OAR hooks.
OARCLOUD_REPO='$REPO'
OARCLOUD_NODE='$node'
OARCLOUD_HOOK_LOG='$LOG_DIR_HOOKS/hooks.log'
OARCLOUD_HOOK_TIMEOUT=$HOOK_TIMEOUT
ENV
  for kv in "${EXTRA_ENV[@]}"; do printf "%s='%s'\n" "${kv%%=*}" "${kv#*=}" >>"$tmp"; done
  replace_if_changed "$ENV_FILE" 644 root:root "$tmp" && changed=yes

  # oar.conf must stay owned by oar, mode 600 (notes/OAR.md).
  tmp=$(mktemp "$OAR_CONF.XXXXXX")
  cp "$OAR_CONF" "$tmp"
  set_conf "$tmp" SERVER_PROLOGUE_EXEC_FILE "$HERE/hooks/server-prologue"
  set_conf "$tmp" SERVER_EPILOGUE_EXEC_FILE "$HERE/hooks/server-epilogue"
  set_conf "$tmp" PROLOGUE_EXEC_FILE "$HERE/hooks/prologue"
  set_conf "$tmp" EPILOGUE_EXEC_FILE "$HERE/hooks/epilogue"
  replace_if_changed "$OAR_CONF" 600 oar:root "$tmp" && changed=yes

  if [[ $changed == yes ]]; then echo "configured (hooks in $HERE/hooks)"; else echo "unchanged"; fi
}

main "$@"
