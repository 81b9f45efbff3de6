#!/usr/bin/env bash
# The whole test suite, from a fresh machine: install what is missing, check the generated
# code is current, build, lint, unit tests, bring the local cluster up (real OAR, libvirtd,
# Open vSwitch, NATS), integration and end-to-end tests, fault rounds, bad-input fuzzing,
# and one closing summary line.
#
#   npm test                       everything
#   npm test -- --unit             unit tests only (no root, no cluster)
#   OARCLOUD_KEEP_CLUSTER=1        leave a cluster this run started up at the end
#   OARCLOUD_BENCH=1               also the quick benchmarks (always under CI)
#   OARCLOUD_FAULT_ROUNDS=N        fault rounds (default 7: each part killed once; the soak, `npm run bench -- faults`: 42), OARCLOUD_FAULT_SEED=S replays a run
#   OARCLOUD_FUZZ_RUNS=N           fast-check runs per property (default 25)
#   OARCLOUD_ALLOW_SKIP=1          let integration suites skip on a missing prerequisite (they fail by default)
set -euo pipefail
# shellcheck source=scripts/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
root=$(repo_root)
cd "$root"

unit_only=0
[ "${1:-}" = "--unit" ] && unit_only=1

ensure_build_packages
ensure_node_modules "$root"

step "generated code is current"
bash tools/codegen/proto.sh
if git rev-parse --git-dir >/dev/null 2>&1 && ! git diff --exit-code --stat -- packages/api/src/gen; then
  echo "packages/api/src/gen is stale: run 'npm run codegen' and commit the result" >&2
  exit 1
fi

build_all "$root"
step "lint"
NX_DAEMON=false npx nx run-many -t lint --output-style=static
npx eslint tools test
npx tsc -p tsconfig.tools.json

results=$(mktemp -d)
trap 'rm -rf "$results"' EXIT

# Each step leaves its exit code (and a vitest step its output) in $results, so the closing
# summary can say which step failed and why even when no single test did (a failing
# beforeAll/afterAll hook, an unhandled error caught by vitest, a benchmark group).
run_vitest() {
  local name=$1
  shift
  step "tests: $name"
  local rc=0
  npx vitest run "$@" --reporter=default --reporter=json --outputFile.json="$results/$name.json" 2>&1 \
    | tee "$results/$name.out" || rc=$?
  echo "$rc" >"$results/$name.rc"
  return $rc
}

status=0
run_vitest unit --project unit || status=1

if [ $unit_only -eq 0 ]; then
  # This script installs and starts every prerequisite, so a suite that would skip means a
  # broken setup: fail instead (CI or not). OARCLOUD_ALLOW_SKIP=1 lets suites skip again.
  if [ "${OARCLOUD_ALLOW_SKIP:-0}" != "1" ]; then export OARCLOUD_REQUIRE_INTEGRATION=1; fi
  was_up=0
  bash infra/local/status.sh >/dev/null 2>&1 && was_up=1
  step "local cluster up"
  bash infra/local/up.sh
  if [ $was_up -eq 0 ] && [ "${OARCLOUD_KEEP_CLUSTER:-0}" != "1" ]; then
    trap 'rm -rf "$results"; step "local cluster down"; bash infra/local/down.sh || true' EXIT
  fi
  # Real host resources are shared: one test file at a time.
  run_vitest integration --project integration --no-file-parallelism || status=1
  run_vitest e2e --project e2e --no-file-parallelism || status=1
  # Fault rounds: kill -9 of a part at a random point of a job's start or end, then every
  # invariant (seeded: the seed is printed; OARCLOUD_FAULT_SEED replays it).
  OARCLOUD_FAULT_ROUNDS=${OARCLOUD_FAULT_ROUNDS:-7} run_vitest faults --project faults --no-file-parallelism || status=1
  # Bad input (fast-check) against the live servers, in-process servers and the CLI.
  run_vitest fuzz --project fuzz --no-file-parallelism || status=1
  # In CI, the quick benchmarks too (a few minutes), kept apart from the committed results:
  # .ci/artifacts/bench/{results.json,RESULTS.md,ratios.svg}.
  if [ "${CI:-}" = "true" ] || [ "${OARCLOUD_BENCH:-0}" = "1" ]; then
    step "bench --quick (results in .ci/artifacts/bench)"
    rc=0
    OARCLOUD_BENCH_DIR="$root/.ci/artifacts/bench" npx tsx tools/bench/main.ts --quick agent controller net images sim 2>&1 \
      | tee "$results/bench.out" || rc=$?
    echo "$rc" >"$results/bench.rc"
    [ $rc -eq 0 ] || status=1
  fi
fi

node scripts/test-summary.mjs "$results"
exit $status
