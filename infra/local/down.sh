#!/usr/bin/env bash
# Stop everything infra/local/up.sh started, in reverse order, by the pids in our own
# pid files (never by process name). Leaves the OAR database in place.
#
#   down.sh           stop daemons, remove our libvirt domains, OVS objects, mounts
#   down.sh --purge   also drop the OAR database (and so its resources), remove the
#                     /etc/hosts lines up.sh added, and delete the state folder
set -euo pipefail

# shellcheck source=infra/local/lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

PURGE=no

stop_step() { # NAME PATTERN [TIMEOUT]
  step_begin
  step_end "$1" "$(stop_daemon "$@")"
}

down_services() {
  local i n
  for ((i = ${#AGENT_NODES[@]} - 1; i >= 0; i--)); do
    n=${AGENT_NODES[$i]}
    stop_step "agent-$n" "$(pat_agent "$n")"
  done
  stop_step controller "$(pat_controller)"
}

# Domains carrying our metadata namespace are ours: destroy and undefine them while
# libvirtd is still up. Anything else is left alone.
down_domains() {
  step_begin
  local pid name removed=0
  if ! pid=$(running_pid libvirtd "$(pat_libvirtd)"); then
    step_end domains "skipped (libvirtd not running)"
    return
  fi
  while read -r name; do
    [[ -n $name ]] || continue
    virsh -c "$LIBVIRT_URI" dumpxml "$name" 2>/dev/null | grep -qF "$INSTANCE_XMLNS" || continue
    virsh -c "$LIBVIRT_URI" destroy "$name" >/dev/null 2>&1 || true
    virsh -c "$LIBVIRT_URI" undefine "$name" >/dev/null 2>&1 || true
    removed=$((removed + 1))
  done < <(virsh -c "$LIBVIRT_URI" list --all --name 2>/dev/null)
  step_end domains "removed $removed oarcloud domain(s)"
}

# Ports and bridges whose external_ids carry an oarcloud key are ours.
down_ovs_objects() {
  step_begin
  local port br removed=0
  if ! running_pid ovsdb-server "$(pat_ovsdb)" >/dev/null; then
    step_end ovs-objects "skipped (ovsdb-server not running)"
    return
  fi
  while read -r port; do
    [[ -n $port ]] || continue
    ovs-vsctl --timeout=5 --if-exists del-port "$port" && removed=$((removed + 1))
  done < <(ovs_marked Port)
  while read -r br; do
    [[ -n $br ]] || continue
    ovs-vsctl --timeout=10 --if-exists del-br "$br" && removed=$((removed + 1))
  done < <(ovs_marked Bridge)
  step_end ovs-objects "removed $removed port(s)/bridge(s)"
}

# ovs_marked TABLE : names of rows whose external_ids have a key starting "oarcloud".
ovs_marked() {
  ovs-vsctl --timeout=5 --format=csv --data=bare --no-headings --columns=name,external_ids \
    list "$1" 2>/dev/null | awk -F, '$2 ~ /(^| )oarcloud/ {print $1}'
}


# Emulated nodes: their OVS objects and daemons, their netns (which takes the netns ends
# of every veth with it), the host ends of the underlay veths and the host bridge.
down_node_networks() {
  local n ns dir
  for n in "${NET_NODES[@]}"; do
    step_begin
    dir=$(node_ovs_dir "$n")
    if running_pid "ovsdb-$n" "$(pat_node_ovsdb "$n")" >/dev/null; then
      while read -r br; do
        [[ -n $br ]] || continue
        ovs-vsctl --db="unix:$dir/db.sock" --timeout=10 --if-exists del-br "$br"
      done < <(ovs-vsctl --db="unix:$dir/db.sock" --timeout=5 --format=csv --data=bare --no-headings \
        --columns=name,external_ids list Bridge 2>/dev/null | awk -F, '$2 ~ /(^| )oarcloud/ {print $1}')
    fi
    local a b
    a=$(stop_daemon "vswitchd-$n" "$(pat_node_vswitchd "$n")")
    b=$(stop_daemon "ovsdb-$n" "$(pat_node_ovsdb "$n")")
    ns=${NODE_NETNS[$n]}
    [[ -e /var/run/netns/$ns ]] && ip netns del "$ns"
    ip link del "$(node_ul_veth "$n")" 2>/dev/null || true
    step_end "net-$n" "vswitchd $a, ovsdb $b, netns $ns removed"
  done
  ip link del "$UNDERLAY_HOST_BRIDGE" 2>/dev/null || true
}

# Overlays (deepest first), then the shared bind mount of the instances folder.
down_mounts() {
  step_begin
  local m count=0
  [[ -d $INSTANCES_DIR ]] || { step_end instances-mount "absent"; return; }
  while read -r m; do
    umount "$m" 2>/dev/null || umount -l "$m"
    count=$((count + 1))
  done < <(findmnt -rn -o TARGET | awk -v p="$INSTANCES_DIR/" 'index($0, p) == 1' | sort -r)
  while mountpoint -q "$INSTANCES_DIR"; do
    umount "$INSTANCES_DIR" 2>/dev/null || umount -l "$INSTANCES_DIR"
    count=$((count + 1))
  done
  step_end instances-mount "unmounted $count"
}

down_postgres() {
  step_begin
  if [[ ! -e $RUN_DIR/postgresql.started-by-us ]]; then
    step_end postgresql "left running (not started by up.sh)"
    return
  fi
  if pg_running; then
    pg_ctlcluster "$PG_VERSION" "$PG_CLUSTER" stop -m fast
    step_end postgresql "stopped"
  else
    step_end postgresql "not running"
  fi
  rm -f "$RUN_DIR/postgresql.started-by-us" "$(pid_file postgresql)"
}

# --purge: drop the OAR database (this also removes its resources). PostgreSQL must
# be up for that; if it is not, start it just for this.
purge_oar_database() {
  step_begin
  if ! pg_running; then
    pg_ctlcluster "$PG_VERSION" "$PG_CLUSTER" start 9>&-
    mkdir -p "$RUN_DIR"
    touch "$RUN_DIR/postgresql.started-by-us"
  fi
  if oar_db_exists; then
    oar-database --drop --db-is-local -y >/dev/null 2>&1 || die "oar-database --drop failed"
    step_end oar-database "dropped"
  else
    step_end oar-database "absent"
  fi
}

purge_etc_hosts() {
  step_begin
  if grep -qF "$HOSTS_MARK" /etc/hosts; then
    # In place (not a rename): /etc/hosts may be a bind mount in containers.
    local tmp
    tmp=$(mktemp)
    grep -vF "$HOSTS_MARK" /etc/hosts >"$tmp" || true
    cat "$tmp" >/etc/hosts
    rm -f "$tmp"
    step_end /etc/hosts "removed our lines"
  else
    step_end /etc/hosts "unchanged"
  fi
}

purge_state() {
  step_begin
  # Never delete through a live mount.
  if findmnt -rn -o TARGET | awk -v p="$STATE/" 'index($0, p) == 1' | grep -q .; then
    die "mounts remain under $STATE; not deleting it"
  fi
  case $STATE in /) die "refusing to delete $STATE" ;; esac
  rm -rf "$STATE"
  step_end state "removed $STATE"
}

main() {
  require_root
  case ${1:-} in
    --purge) PURGE=yes ;;
    "") ;;
    *) die "usage: $0 [--purge]" ;;
  esac
  local t0
  t0=$(now_ms)
  if [[ -d $STATE ]]; then
    exec 9>"$STATE/.lock"
    flock -w 30 9 || die "another up/down is running (lock $STATE/.lock)"
  fi
  down_services
  stop_step nats "$(pat_nats)"
  down_domains
  stop_step libvirtd "$(pat_libvirtd)" 15
  down_node_networks
  down_ovs_objects
  stop_step ovs-vswitchd "$(pat_vswitchd)"
  stop_step ovsdb-server "$(pat_ovsdb)"
  down_mounts
  stop_step almighty "$(pat_almighty)" 15
  stop_step oar-node-sshd "$(pat_sshd)"
  if [[ $PURGE == yes ]]; then
    purge_oar_database
    purge_etc_hosts
  fi
  down_postgres
  [[ $PURGE == yes ]] && purge_state
  local dt=$(($(now_ms) - t0))
  printf 'down%s: done in %d.%02ds\n' "$([[ $PURGE == yes ]] && echo ' --purge')" $((dt / 1000)) $((dt % 1000 / 10))
}

main "$@"
