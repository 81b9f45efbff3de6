#!/usr/bin/env bash
# The main job, end to end, from a fresh machine: install what is missing, build, bring the
# local cluster up (OAR, PostgreSQL, libvirtd, Open vSwitch, NATS, controller, agents), then a
# user reserves 2 hosts with 4 instances, logs into one over SSH, releases the job, and every
# host is left clean (tools/demo/main.ts). The cluster stays up: `npm run cluster:down`.
set -euo pipefail
# shellcheck source=scripts/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
root=$(repo_root)
cd "$root"
ensure_build_packages
ensure_node_modules "$root"
build_all "$root"
step "local cluster up"
bash infra/local/up.sh
step "the main job"
npx tsx tools/demo/main.ts
