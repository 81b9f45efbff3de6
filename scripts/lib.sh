# Shared by scripts/test.sh and scripts/demo.sh: get a fresh machine to a built tree.
# shellcheck shell=bash

repo_root() { cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd; }

step() { printf '\n\033[1m== %s\033[0m\n' "$*"; }

# Node dependencies: `npm ci` when node_modules is missing or older than the lock file.
ensure_node_modules() {
  local root=$1
  if [ ! -d "$root/node_modules" ] || [ "$root/package-lock.json" -nt "$root/node_modules/.package-lock.json" ]; then
    # The lock lists every platform's optional builds (e.g. @rollup/rollup-*), so `npm ci`
    # installs exactly what it pins, and only this platform's binaries.
    step "npm ci (from package-lock.json)"
    (cd "$root" && npm ci --no-fund --no-audit)
  fi
}

# The Debian packages the build itself needs (the cluster's are installed by infra/local/up.sh).
ensure_build_packages() {
  local missing=()
  local pkg
  for pkg in protobuf-compiler; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q 'install ok installed' || missing+=("$pkg")
  done
  if [ ${#missing[@]} -gt 0 ]; then
    step "apt-get install ${missing[*]}"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}"
  fi
}

build_all() {
  local root=$1
  step "build"
  (cd "$root" && NX_DAEMON=false npx nx run-many -t build --output-style=static)
}
