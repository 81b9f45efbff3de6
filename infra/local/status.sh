#!/usr/bin/env bash
# One line per component of the local cluster (running (pid) / stopped), plus OAR
# nodes, OVS bridges and the libvirt domain count.
#   status.sh [--json]
# Exit 0 if every component is up, 3 otherwise. The controller and agents count only
# when they are built (packages/*/dist/main.js exists).
set -euo pipefail

# shellcheck source=infra/local/lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

JSON=no
ALL_UP=yes
COMP_JSON=()
TEXT_LINES=()

json_str() { # minimal JSON string escaping (our values are plain words and paths)
  local s=${1//\\/\\\\}
  s=${s//\"/\\\"}
  s=${s//$'\n'/\\n}
  s=${s//$'\t'/ }
  printf '"%s"' "$s"
}

# record NAME STATE [PID]
record() {
  local name=$1 state=$2 pid=${3:-}
  [[ $state == running || $state == not-built ]] || ALL_UP=no
  TEXT_LINES+=("$(printf '%-16s %s%s' "$name" "$state" "${pid:+ (pid $pid)}")")
  COMP_JSON+=("{\"name\":$(json_str "$name"),\"state\":$(json_str "$state"),\"pid\":${pid:-null}}")
}

check_daemon() { # NAME PATTERN
  local pid
  if pid=$(running_pid "$1" "$2"); then record "$1" running "$pid"; else record "$1" stopped; fi
}

check_node_service() { # NAME MAIN PATTERN
  if [[ ! -f $2 ]]; then record "$1" not-built; else check_daemon "$1" "$3"; fi
}

check_postgres() {
  local pid
  if pg_running; then
    pid=$(cat "$(pid_file postgresql)" 2>/dev/null || true)
    [[ $pid =~ ^[0-9]+$ ]] || pid=''
    record postgresql running "$pid"
  else
    record postgresql stopped
  fi
}

# "host: N Alive[, M Suspected]" per host, from `oarnodes -s`.
oar_nodes_summary() {
  timeout 10 oarnodes -s 2>/dev/null | awk '
    /^[^ \t]/ { host = $1; if (!(host in seen)) { seen[host] = 1; order[++n] = host } next }
    /:/ { st = $NF; key = host SUBSEP st; if (!(key in cnt)) { states[host] = states[host] " " st } cnt[key]++ }
    END {
      for (i = 1; i <= n; i++) {
        h = order[i]; line = h ":"; split(substr(states[h], 2), s, " "); sep = " "
        for (j = 1; j in s; j++) { line = line sep cnt[h SUBSEP s[j]] " " s[j]; sep = ", " }
        print line
      }
    }'
}

main() {
  [[ ${1:-} == --json ]] && JSON=yes
  local n
  check_postgres
  check_daemon oar-node-sshd "$(pat_sshd)"
  check_daemon almighty "$(pat_almighty)"
  check_daemon libvirtd "$(pat_libvirtd)"
  check_daemon ovsdb-server "$(pat_ovsdb)"
  check_daemon ovs-vswitchd "$(pat_vswitchd)"
  check_daemon nats "$(pat_nats)"
  for n in "${NET_NODES[@]}"; do
    check_daemon "ovsdb-$n" "$(pat_node_ovsdb "$n")"
    check_daemon "vswitchd-$n" "$(pat_node_vswitchd "$n")"
    if [[ -e /var/run/netns/${NODE_NETNS[$n]} ]]; then record "netns-$n" running; else record "netns-$n" stopped; fi
  done
  check_node_service controller "$(controller_main)" "$(pat_controller)"
  for n in "${AGENT_NODES[@]}"; do
    check_node_service "agent-$n" "$(agent_main)" "$(pat_agent "$n")"
  done

  local nodes='' bridges='' domains=null
  if pg_running && running_pid almighty "$(pat_almighty)" >/dev/null; then nodes=$(oar_nodes_summary || true); fi
  if running_pid ovsdb-server "$(pat_ovsdb)" >/dev/null; then
    bridges=$(ovs-vsctl --timeout=3 list-br 2>/dev/null | while read -r b; do
      printf '%s(%s) ' "$b" "$(ovs-vsctl --timeout=3 get bridge "$b" datapath_type | tr -d '"')"
    done || true)
  fi
  if running_pid libvirtd "$(pat_libvirtd)" >/dev/null; then
    domains=$(virsh -c "$LIBVIRT_URI" list --all --name 2>/dev/null | grep -c . || true)
  fi

  if [[ $JSON == yes ]]; then
    local nj=() l b bj=()
    while IFS= read -r l; do [[ -n $l ]] && nj+=("$(json_str "$l")"); done <<<"$nodes"
    for b in $bridges; do bj+=("$(json_str "$b")"); done
    printf '{"up":%s,"state":%s,"components":[%s],"oarnodes":[%s],"bridges":[%s],"domains":%s}\n' \
      "$([[ $ALL_UP == yes ]] && echo true || echo false)" "$(json_str "$STATE")" \
      "$(IFS=,; echo "${COMP_JSON[*]}")" "$(IFS=,; echo "${nj[*]}")" "$(IFS=,; echo "${bj[*]}")" "$domains"
  else
    printf '%s\n' "${TEXT_LINES[@]}"
    echo "oarnodes:"
    if [[ -n $nodes ]]; then printf '  %s\n' "${nodes//$'\n'/$'\n'  }"; else echo "  (unavailable)"; fi
    echo "ovs bridges:     ${bridges:-(none or ovsdb down)}"
    for n in "${NET_NODES[@]}"; do
      printf 'node %-10s netns %s, underlay %s, ovs: %s\n' "$n" "${NODE_NETNS[$n]}" "${NODE_UNDERLAY[$n]}" \
        "$(ovs-vsctl --db="unix:$(node_ovs_sock "$n")" --timeout=3 show 2>/dev/null | awk '/Bridge/{b=$2} /Port/{p[b]++} END{for (x in b2) ; for (x in p) printf "%s(%d ports) ", x, p[x]}')"
    done
    echo "libvirt domains: $([[ $domains == null ]] && echo '(libvirtd down)' || echo "$domains")"
  fi
  [[ $ALL_UP == yes ]] || exit 3
}

main "$@"
