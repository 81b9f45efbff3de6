#!/usr/bin/env bash
# Bring up (idempotently, without systemd) a one-machine oarcloud cluster:
# PostgreSQL + OAR 2.5.9 (server + 3 emulated hosts), libvirtd (LXC), Open vSwitch,
# NATS JetStream, and the oarcloud controller + one agent per emulated node when built.
# A second run on a live cluster changes nothing and takes a few seconds.
# See README.md in this folder.
set -euo pipefail

# shellcheck source=infra/local/lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

FAILED=0

# ---------------------------------------------------------------------------
# Machine preparation
# ---------------------------------------------------------------------------
up_packages() {
  step_begin
  ensure_pkgs "${REQUIRED_PKGS[@]}"
  step_end packages "ok"
}

up_state_dirs() {
  mkdir -p "$STATE" "$RUN_DIR" "$LOG_DIR" "$INSTANCES_DIR" "$STATE/ovs" "$STATE/nats" \
    "$STATE/libvirt" "$STATE/controller"
  local n
  for n in "${AGENT_NODES[@]}"; do mkdir -p "$STATE/agents/$n" "$INSTANCES_DIR/$n"; done
}

# Names of the emulated hosts on their own loopback addresses (127.0.0.0/8 is
# routed to lo, nothing to configure on the interface).
up_etc_hosts() {
  step_begin
  local n added=()
  for n in "${NODES[@]}"; do
    if ! grep -qE "^[[:space:]]*${NODE_ADDR[$n]//./\\.}[[:space:]]+$n([[:space:]]|\$)" /etc/hosts; then
      printf '%s %s %s\n' "${NODE_ADDR[$n]}" "$n" "$HOSTS_MARK" >>/etc/hosts
      added+=("$n")
    fi
  done
  if ((${#added[@]})); then step_end /etc/hosts "added ${added[*]}"; else step_end /etc/hosts "unchanged"; fi
}

# ---------------------------------------------------------------------------
# PostgreSQL + OAR
# ---------------------------------------------------------------------------
up_postgres() {
  step_begin
  local outcome datadir
  if ! pg_lsclusters -h 2>/dev/null | awk '{print $1, $2}' | grep -qx "$PG_VERSION $PG_CLUSTER"; then
    pg_createcluster "$PG_VERSION" "$PG_CLUSTER" >/dev/null
  fi
  if pg_running; then
    if [[ -e $RUN_DIR/postgresql.started-by-us ]]; then
      outcome="already running"
    else
      outcome="already running (not ours: down leaves it)"
    fi
  else
    # The postmaster keeps every descriptor it inherits: start it with none but 0-2 (not our
    # lock, fd 9, nor a caller's, e.g. `flock FILE bash -c '... up.sh'`, held for good otherwise).
    (
      for fd in /proc/$BASHPID/fd/*; do
        fd=${fd##*/}
        if ((fd > 2)); then eval "exec $fd>&-" 2>/dev/null || true; fi
      done
      exec pg_ctlcluster "$PG_VERSION" "$PG_CLUSTER" start
    )
    # down.sh stops PostgreSQL only if we are the ones who started it.
    touch "$RUN_DIR/postgresql.started-by-us"
    outcome="started"
  fi
  datadir=$(pg_lsclusters -h | awk -v v="$PG_VERSION" -v c="$PG_CLUSTER" '$1 == v && $2 == c {print $6}')
  head -n1 "$datadir/postmaster.pid" >"$(pid_file postgresql)"
  step_end postgresql "$outcome (pid $(cat "$(pid_file postgresql)"))"
}

random_password() { head -c 12 /dev/urandom | od -An -tx1 | tr -d ' \n'; }

# oar.conf as notes/OAR.md says: non-empty DB passwords (oar-database refuses
# empty ones), SERVER_HOSTNAME=localhost, no 5 s pause between scheduler passes.
# The file must stay owned by oar, mode 600.
up_oar_conf() {
  step_begin
  local tmp pw pw_ro
  tmp=$(mktemp)
  cp "$OAR_CONF" "$tmp"
  pw=$(oar_conf_get DB_BASE_PASSWD)
  pw_ro=$(oar_conf_get DB_BASE_PASSWD_RO)
  [[ -n $pw ]] || set_conf "$tmp" DB_BASE_PASSWD "$(random_password)"
  [[ -n $pw_ro ]] || set_conf "$tmp" DB_BASE_PASSWD_RO "$(random_password)"
  set_conf "$tmp" SERVER_HOSTNAME localhost
  set_conf "$tmp" SCHEDULER_MIN_TIME_BETWEEN_2_CALLS 0
  if write_if_changed "$OAR_CONF" 600 oar:root <"$tmp"; then
    step_end oar.conf "updated"
  else
    step_end oar.conf "unchanged"
  fi
  rm -f "$tmp"
}

# set_conf FILE KEY VALUE : KEY="VALUE" in a shell-style config file.
set_conf() {
  local file=$1 key=$2 value=$3
  if grep -qE "^[[:space:]]*$key=" "$file"; then
    sed -i -E "s|^[[:space:]]*$key=.*|$key=\"$value\"|" "$file"
  else
    printf '%s="%s"\n' "$key" "$value" >>"$file"
  fi
}

up_oar_database() {
  step_begin
  if oar-database --check >/dev/null 2>&1; then
    step_end oar-database "present"
    return
  fi
  if oar_db_exists; then
    die "the OAR database exists but 'oar-database --check' fails: run it by hand (or down.sh --purge)"
  fi
  oar-database --create --db-is-local -y >"$LOG_DIR/oar-database.log" 2>&1 ||
    { log_tail "$LOG_DIR/oar-database.log"; die "oar-database --create failed"; }
  step_end oar-database "created"
}

# The NOTIFY trigger on job_state_logs + SELECT grants for the read-only user the
# controller connects as. CREATE OR REPLACE everywhere: re-applying changes nothing.
up_db_trigger() {
  step_begin
  local db ro
  db=$(oar_conf_get DB_BASE_NAME)
  ro=$(oar_conf_get DB_BASE_LOGIN_RO)
  runuser -u postgres -- psql -X -q -v ON_ERROR_STOP=1 -v ro_user="$ro" -d "${db:-oar}" \
    -f - <"$OAR_INFRA_DIR/db-trigger.sql" >"$LOG_DIR/db-trigger.log" 2>&1 ||
    { log_tail "$LOG_DIR/db-trigger.log"; die "applying db-trigger.sql failed"; }
  step_end db-trigger "applied (grants to $ro)"
}

# Admit the `cloud` job type: add our regex to the rule "Check if job types are valid"
# through oaradmissionrules, as notes/OAR.md describes.
up_admission_rule() {
  step_begin
  local id f
  id=$(psql_oar "SELECT id FROM admission_rules WHERE rule LIKE '# Check if job types are valid%' ORDER BY id LIMIT 1")
  [[ -n $id ]] || die "admission rule 'Check if job types are valid' not found"
  if [[ -n $(psql_oar "SELECT 1 FROM admission_rules WHERE id=$id AND rule LIKE '%qr/^cloud(%'") ]]; then
    step_end admission-rule "cloud type already admitted (rule $id)"
    return
  fi
  f=$(mktemp)
  # oaradmissionrules runs as oar (setuid wrapper): it must be able to read the file.
  chmod 644 "$f"
  oaradmissionrules -s "$id" -f -H >"$f"
  # shellcheck disable=SC2016 # a literal Perl regex, no shell expansion wanted
  sed -i 's/^my @types = ($/&\n    qr\/^cloud(?:=[\\w.:-]+)?$\/,/' "$f"
  grep -qF 'qr/^cloud(?:=[\w.:-]+)?$/' "$f" || { rm -f "$f"; die "could not edit admission rule $id"; }
  oaradmissionrules -m "$id" -r "$f" >/dev/null
  rm -f "$f"
  step_end admission-rule "cloud type admitted (rule $id)"
}

# The oar user's key: OAR reaches every node over ssh as oar (port 6667).
up_oar_ssh_key() {
  step_begin
  local d=$OAR_HOME/.ssh line changed=no
  if [[ ! -d $d ]]; then install -d -o oar -g oar -m 700 "$d"; fi
  if [[ ! -f $d/id_rsa ]]; then
    runuser -u oar -- ssh-keygen -q -t rsa -N '' -f "$d/id_rsa"
    changed=yes
  fi
  line="environment=\"OAR_KEY=1\" $(cat "$d/id_rsa.pub")"
  if ! grep -qxF "$line" "$d/authorized_keys" 2>/dev/null; then
    printf '%s\n' "$line" >>"$d/authorized_keys"
    chown oar:oar "$d/authorized_keys"
    changed=yes
  fi
  if [[ ! -f $d/config ]]; then
    printf 'Host *\nForwardX11 no\nStrictHostKeyChecking no\nPasswordAuthentication no\nAddressFamily inet\n' >"$d/config"
    chown oar:oar "$d/config"
    changed=yes
  fi
  step_end oar-ssh-key "$([[ $changed == yes ]] && echo updated || echo unchanged)"
}

# oar-node's sshd, started directly (the init script's stop does nothing here, see
# notes/OAR.md), listening only on the loopback addresses of our hosts.
up_oar_node_sshd() {
  step_begin
  local pid listen=() n
  if pid=$(running_pid oar-node-sshd "$(pat_sshd)"); then
    step_end oar-node-sshd "already running (pid $pid)"
    return
  fi
  listen+=(-o "ListenAddress=127.0.0.1")
  for n in "${NODES[@]}"; do listen+=(-o "ListenAddress=${NODE_ADDR[$n]}"); done
  install -d -m 755 /run/sshd
  spawn oar-node-sshd "$LOG_DIR/oar-node-sshd.log" /usr/sbin/sshd -D -e -f /etc/oar/sshd_config \
    -o PidFile=none "${listen[@]}"
  pid=$(cat "$(pid_file oar-node-sshd)")
  if ! wait_port "${NODE_ADDR[${NODES[-1]}]}" "$OAR_NODE_SSH_PORT" 10 "$pid"; then
    log_tail "$LOG_DIR/oar-node-sshd.log"
    die "oar-node sshd did not open port $OAR_NODE_SSH_PORT (in use? an sshd started by /etc/init.d/oar-node keeps its pid in /var/run/oar-node_sshd.pid)"
  fi
  step_end oar-node-sshd "started (pid $pid)"
}

# Almighty with a clean environment: server hooks inherit it (notes/OAR.md).
up_almighty() {
  step_begin
  local pid
  if pid=$(running_pid almighty "$(pat_almighty)"); then
    step_end almighty "already running (pid $pid)"
    return
  fi
  # Almighty was down, so every job the database still calls live lost its oarexec with it
  # (the machine or the session went away): OAR would retry killing a dead pid forever and
  # keep its hosts busy. Such jobs end in Error; the job-state trigger tells the controller.
  local stale
  stale=$(psql_oar "UPDATE jobs SET state = 'Error', stop_time = EXTRACT(EPOCH FROM now())::int
    WHERE state IN ('toLaunch','Launching','Running','Finishing','Suspended','Resuming','toError','toAckReservation')
      AND start_time > 0 RETURNING job_id" | tr '\n' ' ')
  spawn almighty "$LOG_DIR/almighty.log" env -i PATH="$CLEAN_PATH" /usr/sbin/Almighty
  pid=$(cat "$(pid_file almighty)")
  if ! wait_port 127.0.0.1 "$(oar_conf_get SERVER_PORT)" 15 "$pid"; then
    log_tail "$LOG_DIR/almighty.log"
    log_tail /var/log/oar.log
    die "Almighty did not open its port"
  fi
  step_end almighty "started (pid $pid)${stale:+; jobs left live by a dead Almighty ended in Error: $stale}"
}

# Resources, created once: per host CORES_PER_HOST resources, one per core, with cpuset
# ids CPUSET_IDS in turn. host/cpu/core as notes/OAR.md; cpu and core ids are cluster-wide
# unique (a new core gets the next free id). Only missing ones are added.
up_oar_resources() {
  step_begin
  local have h hi k n core n_added=0
  have=$(psql_oar "SELECT column_name FROM information_schema.columns WHERE table_name='resources' AND column_name IN ('host','cpu','core')")
  grep -qx host <<<"$have" || oarproperty -q -c -a host
  grep -qx cpu <<<"$have" || oarproperty -q -a cpu
  grep -qx core <<<"$have" || oarproperty -q -a core
  core=$(psql_oar "SELECT COALESCE(MAX(core), 0) FROM resources")
  for hi in "${!OAR_HOSTS[@]}"; do
    h=${OAR_HOSTS[$hi]}
    n=$(psql_oar "SELECT count(*) FROM resources WHERE network_address = '$h'")
    for ((k = n; k < CORES_PER_HOST; k++)); do
      core=$((core + 1))
      oarnodesetting -a -h "$h" -p "host=$h" -p "cpu=$((hi + 1))" -p "core=$core" -p "cpuset=${CPUSET_IDS[k % ${#CPUSET_IDS[@]}]}" >/dev/null
      n_added=$((n_added + 1))
    done
  done
  # localhost is also the OAR server: let the scheduler prefer the emulated nodes
  # (SCHEDULER_RESOURCE_ORDER starts with "scheduler_priority ASC").
  psql_oar "UPDATE resources SET scheduler_priority = 10 WHERE network_address = 'localhost' AND scheduler_priority <> 10" >/dev/null
  if ((n_added)); then step_end oar-resources "created $n_added"; else step_end oar-resources "unchanged"; fi
}

up_test_users() {
  step_begin
  local u added=()
  for u in alice bob; do
    if ! id -u "$u" >/dev/null 2>&1; then
      useradd -m -s /bin/bash "$u"
      added+=("$u")
    fi
  done
  if ((${#added[@]})); then step_end users "created ${added[*]}"; else step_end users "unchanged"; fi
}

# Point OAR's hook settings at infra/oar/hooks, only if those scripts exist.
up_oar_hooks() {
  step_begin
  local k
  for k in server-prologue server-epilogue prologue epilogue; do
    if [[ ! -x $OAR_INFRA_DIR/hooks/$k ]]; then
      step_end oar-hooks "skipped (no $OAR_INFRA_DIR/hooks/$k)"
      return
    fi
  done
  local out
  # The prologue waits up to 30 s for instances: the wrapper's hard timeout is above that.
  out=$(OARCLOUD_REPO="$REPO" "$OAR_INFRA_DIR/install.sh" --log-dir "$LOG_DIR/oar-hooks" --timeout 40 \
    --env "OARCLOUD_CONTROLLER=$CONTROLLER_LISTEN" --env "OARCLOUD_HOOK_TOKEN_FILE=$STATE/controller/hook.token")
  step_end oar-hooks "$out"
}

# ---------------------------------------------------------------------------
# libvirtd (LXC) with the two workarounds of notes/HOST.md
# ---------------------------------------------------------------------------
# Instance overlays are mounted later by the agent in the host namespace; they only
# reach libvirtd's private mount namespace if they sit under a SHARED mount, which
# must exist before libvirtd starts.
up_instances_mount() {
  step_begin
  local outcome=unchanged
  mkdir -p "$INSTANCES_DIR"
  if ! mountpoint -q "$INSTANCES_DIR"; then
    mount --bind "$INSTANCES_DIR" "$INSTANCES_DIR"
    outcome="bind-mounted"
  fi
  if [[ $(findmnt -n -o PROPAGATION --mountpoint "$INSTANCES_DIR" | tail -n1) != shared ]]; then
    mount --make-shared "$INSTANCES_DIR"
    outcome="$outcome, made shared"
  fi
  step_end instances-mount "$outcome"
}

# A driver folder holding only the lxc/network/nodedev drivers: with the QEMU driver
# loaded libvirtd aborts (no libvirt-qemu user).
write_libvirt_files() {
  local d f
  mkdir -p "$LIBVIRT_DRIVER_DIR_LOCAL"
  for f in "$LIBVIRT_DRIVER_DIR_LOCAL"/*; do
    [[ -e $f || -L $f ]] || continue
    case $(basename "$f") in
      libvirt_driver_lxc.so | libvirt_driver_network.so | libvirt_driver_nodedev.so) ;;
      *) rm -f "$f" ;;
    esac
  done
  for d in lxc network nodedev; do
    [[ -e $LIBVIRT_CONN_DRIVERS/libvirt_driver_$d.so ]] || die "missing $LIBVIRT_CONN_DRIVERS/libvirt_driver_$d.so"
    ln -sfn "$LIBVIRT_CONN_DRIVERS/libvirt_driver_$d.so" "$LIBVIRT_DRIVER_DIR_LOCAL/libvirt_driver_$d.so"
  done
  write_if_changed "$LIBVIRT_CONF" 644 root:root <<EOF || true
# libvirtd of the oarcloud local cluster (written by infra/local/up.sh).
# Local UNIX sockets only; no TCP/TLS listener (libvirtd runs without --listen).
unix_sock_group = "root"
unix_sock_rw_perms = "0770"
log_outputs = "3:stderr"
EOF
}

libvirt_ready() { virsh -c "$LIBVIRT_URI" uri; }

up_libvirtd() {
  step_begin
  local pid
  write_libvirt_files
  if pid=$(running_pid libvirtd "$(pat_libvirtd)"); then
    # A libvirtd started before the shared instances mount would never see overlays.
    if findmnt -N "$pid" -n --mountpoint "$INSTANCES_DIR" >/dev/null 2>&1; then
      step_end libvirtd "already running (pid $pid)"
      return
    fi
    log "libvirtd (pid $pid) does not see $INSTANCES_DIR: restarting it (containers survive)"
    stop_pid libvirtd "$pid" 15 || die "could not stop libvirtd"
  fi
  # Own mount namespace: the hybrid layout's cgroup2 mount at /sys/fs/cgroup/unified
  # makes every LXC start fail ("Unable to create directory /sys/fs/cgroup/unified"),
  # so remove it there only. On a pure cgroup-v2 host there is nothing to unmount.
  # --propagation unchanged keeps the shared instances mount shared with us.
  # shellcheck disable=SC2016 # $1/$2 are expanded by the inner sh
  spawn libvirtd "$LOG_DIR/libvirtd.log" env LIBVIRT_DRIVER_DIR="$LIBVIRT_DRIVER_DIR_LOCAL" \
    unshare -m --propagation unchanged sh -c '
      if mountpoint -q /sys/fs/cgroup/unified; then umount /sys/fs/cgroup/unified || exit 1; fi
      exec libvirtd --config "$1" --pid-file "$2"' sh "$LIBVIRT_CONF" "$(pid_file libvirtd)"
  pid=$(cat "$(pid_file libvirtd)")
  if ! wait_for 20 libvirt_ready || ! pid_alive "$pid"; then
    log_tail "$LOG_DIR/libvirtd.log"
    die "libvirtd did not come up"
  fi
  step_end libvirtd "started (pid $pid)"
}

# ---------------------------------------------------------------------------
# Open vSwitch, started directly: ovs-ctl would modprobe (no module on this host kind)
# ---------------------------------------------------------------------------
ovs_ready() { ovs-vsctl --timeout=1 --no-wait show; }

up_ovsdb() {
  step_begin
  local pid outcome
  mkdir -p "$STATE/ovs" "$OVS_RUN"
  if pid=$(running_pid ovsdb-server "$(pat_ovsdb)"); then
    step_end ovsdb-server "already running (pid $pid)"
    return
  fi
  # Someone else's ovsdb-server on the default socket: do not fight it.
  if [[ -S $OVS_SOCK ]] && ovs_ready >/dev/null 2>&1; then
    die "an ovsdb-server we did not start answers on $OVS_SOCK (see $OVS_RUN/ovsdb-server.pid); stop it first"
  fi
  outcome=started
  if [[ ! -f $OVS_DB ]]; then
    ovsdb-tool create "$OVS_DB" "$OVS_SCHEMA"
    outcome="started (new db)"
  elif [[ $(ovsdb-tool needs-conversion "$OVS_DB" "$OVS_SCHEMA") == yes ]]; then
    ovsdb-tool convert "$OVS_DB" "$OVS_SCHEMA"
  fi
  spawn ovsdb-server "$LOG_DIR/ovsdb-server.log" ovsdb-server "$OVS_DB" \
    --remote="punix:$OVS_SOCK" --remote=db:Open_vSwitch,Open_vSwitch,manager_options \
    --pidfile="$OVS_RUN/ovsdb-server.pid" --unixctl="$OVS_RUN/ovsdb-server.ctl"
  pid=$(cat "$(pid_file ovsdb-server)")
  wait_for 10 ovs_ready || { log_tail "$LOG_DIR/ovsdb-server.log"; die "ovsdb-server did not come up"; }
  ovs-vsctl --no-wait init
  step_end ovsdb-server "$outcome (pid $pid)"
}

up_vswitchd() {
  step_begin
  local pid
  if pid=$(running_pid ovs-vswitchd "$(pat_vswitchd)"); then
    step_end ovs-vswitchd "already running (pid $pid)"
    return
  fi
  spawn ovs-vswitchd "$LOG_DIR/ovs-vswitchd.stdout.log" ovs-vswitchd "unix:$OVS_SOCK" \
    --pidfile="$OVS_RUN/ovs-vswitchd.pid" --log-file="$LOG_DIR/ovs-vswitchd.log"
  pid=$(cat "$(pid_file ovs-vswitchd)")
  if ! wait_for 10 ovs-appctl -t ovs-vswitchd version || ! pid_alive "$pid"; then
    log_tail "$LOG_DIR/ovs-vswitchd.log"
    die "ovs-vswitchd did not come up"
  fi
  step_end ovs-vswitchd "started (pid $pid)"
}

up_bridge() {
  step_begin
  local dp cur mark
  dp=$(ovs_datapath)
  cur=$(ovs-vsctl --timeout=5 --if-exists get bridge "$BRIDGE" datapath_type 2>/dev/null | tr -d '"')
  mark=$(ovs-vsctl --timeout=5 --if-exists get bridge "$BRIDGE" "external_ids:$OVS_MARK_KEY" 2>/dev/null | tr -d '"' || true)
  if [[ $cur == "$dp" && $mark == true ]]; then
    step_end "$BRIDGE" "present (datapath $dp)"
    return
  fi
  # Without --no-wait ovs-vsctl waits for ovs-vswitchd to apply it: proves it works.
  ovs-vsctl --timeout=10 --may-exist add-br "$BRIDGE" -- set bridge "$BRIDGE" \
    "datapath_type=$dp" "external_ids:$OVS_MARK_KEY=true"
  step_end "$BRIDGE" "created (datapath $dp)"
}


# ---------------------------------------------------------------------------
# Emulated nodes' networks: own netns, own OVS, an underlay link (see lib.sh)
# ---------------------------------------------------------------------------
node_vsctl() { ovs-vsctl --db="unix:$(node_ovs_sock "$1")" --timeout=10 "${@:2}"; }

# up_node_ovs NODE : ovsdb-server + ovs-vswitchd of NODE, inside its netns, with their own
# run dir (OVS_RUNDIR: control sockets, bridge mgmt sockets) and database.
up_node_ovs() {
  local n=$1 ns=${NODE_NETNS[$1]} dir db pid outcome=""
  dir=$(node_ovs_dir "$n")
  db=$dir/conf.db
  mkdir -p "$dir"
  if ! pid=$(running_pid "ovsdb-$n" "$(pat_node_ovsdb "$n")"); then
    [[ -f $db ]] || ovsdb-tool create "$db" "$OVS_SCHEMA"
    [[ $(ovsdb-tool needs-conversion "$db" "$OVS_SCHEMA") == yes ]] && ovsdb-tool convert "$db" "$OVS_SCHEMA"
    spawn "ovsdb-$n" "$LOG_DIR/ovsdb-server-$n.log" env OVS_RUNDIR="$dir" ip netns exec "$ns" ovsdb-server "$db" \
      --remote="punix:$dir/db.sock" --pidfile="$dir/ovsdb-server.pid" --unixctl="$dir/ovsdb-server.ctl"
    wait_for 10 node_vsctl "$n" --no-wait show || { log_tail "$LOG_DIR/ovsdb-server-$n.log"; die "ovsdb-server of $n did not come up"; }
    node_vsctl "$n" --no-wait init
    outcome="ovsdb started"
  fi
  if ! pid=$(running_pid "vswitchd-$n" "$(pat_node_vswitchd "$n")"); then
    spawn "vswitchd-$n" "$LOG_DIR/ovs-vswitchd-$n.stdout.log" env OVS_RUNDIR="$dir" ip netns exec "$ns" ovs-vswitchd \
      "unix:$dir/db.sock" --pidfile="$dir/ovs-vswitchd.pid" --unixctl="$dir/ovs-vswitchd.ctl" \
      --log-file="$LOG_DIR/ovs-vswitchd-$n.log"
    pid=$(cat "$(pid_file "vswitchd-$n")")
    if ! wait_for 10 ovs-appctl -t "$dir/ovs-vswitchd.ctl" version || ! pid_alive "$pid"; then
      log_tail "$LOG_DIR/ovs-vswitchd-$n.log"
      die "ovs-vswitchd of $n did not come up"
    fi
    outcome="${outcome:+$outcome, }vswitchd started"
  fi
  echo "${outcome:-ovs running}"
}

# The underlay: netns + veth to the host bridge (no address on the host side), an OVS
# bridge br-ul holding the veth and, on its internal port, the node's underlay address
# (userspace VXLAN routes through OVS's own tables, fed from addresses on OVS bridges).
up_node_networks() {
  local n ns ulv dp out
  dp=$(ovs_datapath)
  for n in "${NET_NODES[@]}"; do
    step_begin
    ns=${NODE_NETNS[$n]}
    ulv=$(node_ul_veth "$n")
    out=()
    if [[ ! -e /var/run/netns/$ns ]]; then
      ip netns add "$ns"
      out+=("netns created")
    fi
    ip -n "$ns" link set lo up
    if ! ip link show dev "$UNDERLAY_HOST_BRIDGE" >/dev/null 2>&1; then
      ip link add "$UNDERLAY_HOST_BRIDGE" type bridge
      out+=("bridge $UNDERLAY_HOST_BRIDGE created")
    fi
    ip link set dev "$UNDERLAY_HOST_BRIDGE" up
    if ! ip link show dev "$ulv" >/dev/null 2>&1; then
      ip -n "$ns" link del ul0 2>/dev/null || true
      ip link add "$ulv" type veth peer name ul0 netns "$ns"
      out+=("underlay veth created")
    fi
    ip link set dev "$ulv" master "$UNDERLAY_HOST_BRIDGE" up
    ip -n "$ns" link set ul0 up
    ip netns exec "$ns" ethtool -K ul0 tx off >/dev/null 2>&1 || true
    out+=("$(up_node_ovs "$n")")
    node_vsctl "$n" --may-exist add-br "$UNDERLAY_BRIDGE" -- set bridge "$UNDERLAY_BRIDGE" \
      "datapath_type=$dp" "external_ids:$OVS_MARK_KEY=true" \
      -- --may-exist add-port "$UNDERLAY_BRIDGE" ul0 -- set port ul0 "external_ids:$OVS_MARK_KEY=true"
    node_vsctl "$n" --may-exist add-br "$BRIDGE" -- set bridge "$BRIDGE" "datapath_type=$dp" "external_ids:$OVS_MARK_KEY=true"
    ip -n "$ns" link set "$UNDERLAY_BRIDGE" up
    ip -n "$ns" addr replace "${NODE_UNDERLAY[$n]}/$UNDERLAY_PREFIX" dev "$UNDERLAY_BRIDGE"
    step_end "net-$n" "${out[*]}; $ns underlay ${NODE_UNDERLAY[$n]}"
  done
}

# ---------------------------------------------------------------------------
# NATS with JetStream, loopback only
# ---------------------------------------------------------------------------
up_nats() {
  step_begin
  local pid
  if pid=$(running_pid nats "$(pat_nats)"); then
    step_end nats "already running (pid $pid)"
    return
  fi
  # -a binds both the client and the monitoring listeners to loopback.
  spawn nats "$LOG_DIR/nats.log" nats-server -a 127.0.0.1 -p "$NATS_PORT" -m "$NATS_MON_PORT" \
    -js -sd "$STATE/nats"
  pid=$(cat "$(pid_file nats)")
  if ! wait_port 127.0.0.1 "$NATS_PORT" 10 "$pid"; then
    log_tail "$LOG_DIR/nats.log"
    die "nats-server did not open port $NATS_PORT"
  fi
  step_end nats "started (pid $pid)"
}

# ---------------------------------------------------------------------------
# oarcloud controller and agents (only when built)
# ---------------------------------------------------------------------------
urlencode() {
  local s=$1 out='' c i
  for ((i = 0; i < ${#s}; i++)); do
    c=${s:i:1}
    case $c in
      [a-zA-Z0-9.~_-]) out+=$c ;;
      *) out+=$(printf '%%%02X' "'$c") ;;
    esac
  done
  printf '%s' "$out"
}

# ---------------------------------------------------------------------------
# Controller <-> agent mutual TLS: a CA and certificates made with `oarcloud admin pki`
# (the built CLI), once; the daemons' configs get `tls:` when they exist.
# ---------------------------------------------------------------------------
PKI_DIR=$STATE/pki
CONTROLLER_CERT=$PKI_DIR/controller-localhost
CA_PUBLIC=$STATE/ca.crt

up_pki() {
  step_begin
  local cli=$REPO/packages/cli/dist/main.js n made=()
  if [[ ! -f $cli ]]; then
    step_end pki "skipped (not built: $cli)"
    return
  fi
  if [[ ! -f $PKI_DIR/ca.crt ]]; then
    node "$cli" admin pki init --dir "$PKI_DIR" --if-missing >/dev/null
    made+=(ca)
  fi
  if [[ ! -f $CONTROLLER_CERT.crt ]]; then
    node "$cli" admin pki issue --dir "$PKI_DIR" --name localhost --role controller --if-missing >/dev/null
    made+=(controller)
  fi
  for n in "${AGENT_NODES[@]}"; do
    [[ -f $PKI_DIR/agent-$n.crt ]] && continue
    node "$cli" admin pki issue --dir "$PKI_DIR" --name "$n" --role agent --if-missing >/dev/null
    made+=("agent-$n")
  done
  chmod 700 "$PKI_DIR"
  # The CA certificate is public: users give it to `oarcloud --ca` for the TLS listener.
  cmp -s "$PKI_DIR/ca.crt" "$CA_PUBLIC" || install -m 644 "$PKI_DIR/ca.crt" "$CA_PUBLIC"
  if ((${#made[@]})); then step_end pki "issued ${made[*]} ($PKI_DIR)"; else step_end pki "present ($PKI_DIR, CA for users: $CA_PUBLIC)"; fi
}

# tls_config BASE : the `tls:` line of a daemon whose certificate is BASE.{crt,key}.
tls_config() {
  [[ -f $1.crt && -f $1.key && -f $PKI_DIR/ca.crt ]] || return 0
  echo "tls: { ca: $PKI_DIR/ca.crt, cert: $1.crt, key: $1.key }"
}

declare -A CONFIG_CHANGED=()

write_service_configs() {
  local ro_user ro_pw db host port n dp
  ro_user=$(oar_conf_get DB_BASE_LOGIN_RO)
  ro_pw=$(oar_conf_get DB_BASE_PASSWD_RO)
  db=$(oar_conf_get DB_BASE_NAME)
  host=$(oar_conf_get DB_HOSTNAME)
  port=$(oar_conf_get DB_PORT)
  dp=$(ovs_datapath)
  CONFIG_CHANGED[controller]=${CONFIG_CHANGED[controller]:-no}
  {
    echo "listen: $CONTROLLER_LISTEN"
    echo "metricsListen: $CONTROLLER_METRICS"
    echo "natsUrl: nats://127.0.0.1:$NATS_PORT"
    echo "dbPath: $STATE/controller/state.db"
    echo "oarDatabaseUrl: postgresql://$(urlencode "$ro_user"):$(urlencode "$ro_pw")@${host:-127.0.0.1}:${port:-5432}/${db:-oar}"
    echo "agents:"
    for n in "${AGENT_NODES[@]}"; do echo "  - { name: $n, address: 127.0.0.1:$(agent_port "$n") }"; done
    # The images built by up_images go into the controller's image store only; agents fetch
    # their layers from it when an instance needs them.
    local manifest
    echo "images:"
    for manifest in "$STATE"/images/*/image.json; do
      [[ -f $manifest ]] || continue
      node -e 'const m=JSON.parse(require("fs").readFileSync(process.argv[1],"utf8")); console.log(`  - { dir: "${require("path").dirname(process.argv[1])}", name: "${m.name}" }`)' "$manifest"
    done
    # Volumes: one folder of the state dir stands for the shared storage (NFS…) of a real cluster.
    echo "volumesDir: $STATE/volumes"
    tls_config "$CONTROLLER_CERT"
    [[ -z $(tls_config "$CONTROLLER_CERT") ]] || echo "tlsListen: $CONTROLLER_TLS_LISTEN"
  } | write_if_changed "$STATE/controller.yaml" 600 root:root && CONFIG_CHANGED[controller]=yes
  for n in "${AGENT_NODES[@]}"; do
    CONFIG_CHANGED[agent-$n]=${CONFIG_CHANGED[agent-$n]:-no}
    cat <<EOF | write_if_changed "$STATE/agent-$n.yaml" 600 root:root && CONFIG_CHANGED[agent-$n]=yes
nodeName: $n
listen: 127.0.0.1:$(agent_port "$n")
metricsListen: 127.0.0.1:$(agent_metrics_port "$n")
natsUrl: nats://127.0.0.1:$NATS_PORT
libvirtUri: $LIBVIRT_URI
stateDir: $STATE/agents/$n
instancesDir: $INSTANCES_DIR/$n
$(if [[ -n $(tls_config "$CONTROLLER_CERT") && -n $(tls_config "$PKI_DIR/agent-$n") ]]; then
    printf 'controllerAddress: %s\ncontrollerTls: true\n' "$CONTROLLER_TLS_LISTEN"
  else
    echo "controllerAddress: $CONTROLLER_LISTEN"
  fi)
controllerTokenFile: $STATE/controller/node.token
volumesDir: $STATE/volumes
bridge: $BRIDGE
datapath: $dp
$(tls_config "$PKI_DIR/agent-$n")
$(if [[ -n ${NODE_NETNS[$n]:-} ]]; then
    echo "ovsdb: unix:$(node_ovs_sock "$n")"
    echo "netns: ${NODE_NETNS[$n]}"
    echo "underlayIp: ${NODE_UNDERLAY[$n]}"
  else
    echo "ovsdb: unix:$OVS_SOCK"
  fi)
EOF
  done
  return 0
}

declare -A STARTED_PORT=()

# build_digest NAME : a digest of the build output a daemon loads (its package, common, api).
build_digest() {
  local pkg=${1%%-*}
  find "$REPO/packages/$pkg/dist" "$REPO/packages/common/dist" "$REPO/packages/api/dist" -name '*.js' -type f -print0 2>/dev/null |
    sort -z | xargs -0 md5sum | md5sum | cut -d' ' -f1
}

# built_since_start NAME : true if the build output a running daemon loads differs from the
# one it was started with, so a rebuilt tree is really what runs. By content, not mtime: nx
# restores unchanged outputs from its cache with new mtimes, which restarted every daemon.
built_since_start() {
  local stamp=$RUN_DIR/$1.build
  if [[ -f $stamp ]]; then
    [[ $(cat "$stamp") != "$(build_digest "$1")" ]]
  else
    [[ -n $(find "$REPO/packages/${1%%-*}/dist" "$REPO/packages/common/dist" "$REPO/packages/api/dist" \
      -name '*.js' -newer "$(pid_file "$1")" -print -quit 2>/dev/null) ]]
  fi
}

# start_service NAME MAIN CONFIG PATTERN PORT : start (or restart on a changed config)
# a node entry point; readiness is checked afterwards by wait_services.
start_service() {
  local name=$1 main=$2 config=$3 pattern=$4 port=$5 pid
  step_begin
  if [[ ! -f $main ]]; then
    step_end "$name" "skipped (not built: $main)"
    return
  fi
  local verb=launched
  if pid=$(running_pid "$name" "$pattern"); then
    if [[ ${CONFIG_CHANGED[$name]} == no ]] && ! built_since_start "$name"; then
      step_end "$name" "already running (pid $pid)"
      return
    fi
    stop_pid "$name" "$pid" 10 || die "could not stop $name"
    if [[ ${CONFIG_CHANGED[$name]} == no ]]; then verb="restarted (new build)"; else verb="restarted (config changed)"; fi
  fi
  build_digest "$name" >"$RUN_DIR/$name.build"
  # Agents: koffi runs libvirt calls on libuv's pool (4 threads by default), and 10 parallel
  # destroys queued behind it (2.1x raw virsh); Node reads the size before any of our code.
  if [[ $name == agent-* ]]; then
    spawn "$name" "$LOG_DIR/$name.log" env UV_THREADPOOL_SIZE=16 node "$main" --config "$config"
  else
    spawn "$name" "$LOG_DIR/$name.log" node "$main" --config "$config"
  fi
  STARTED_PORT[$name]=$port
  step_end "$name" "$verb (pid $(cat "$(pid_file "$name")"))"
}

# Wait (bounded, ~20 s overall) for every service launched by this run to listen.
wait_services() {
  local name pid host port deadline left
  ((${#STARTED_PORT[@]})) || return 0
  deadline=$(($(now_ms) + 20000))
  for name in "${!STARTED_PORT[@]}"; do
    step_begin
    host=${STARTED_PORT[$name]%:*}
    port=${STARTED_PORT[$name]##*:}
    pid=$(cat "$(pid_file "$name")")
    left=$(((deadline - $(now_ms)) / 1000))
    ((left > 0)) || left=1
    if wait_port "$host" "$port" "$left" "$pid"; then
      step_end "$name" "listening on $host:$port"
    else
      step_end "$name" "FAILED: not listening on $host:$port"
      log_tail "$LOG_DIR/$name.log"
      FAILED=1
    fi
  done
}

# The base images, for the controller's image store (controller.yaml `images:`); agents fetch
# their layers from the controller on demand. Both are built here, not when a test or a
# benchmark first needs one, so that controller.yaml is the same from the first `up` on (a
# later `up` changes nothing) and debian:12 is always in the store. Cached: tiny (busybox +
# dropbear) takes ~0.5 s the first time, debian:12 (debootstrap + OpenSSH) ~45 s.
up_images() {
  step_begin
  mkdir -p "$STATE/volumes"
  local image
  : >"$LOG_DIR/images.log"
  for image in tiny debian; do
    if ! bash "$REPO/tools/images/build-$image.sh" "$STATE/images/$image" >/dev/null 2>>"$LOG_DIR/images.log"; then
      step_end images "FAILED to build $image (see $LOG_DIR/images.log)"
      FAILED=1
      return
    fi
  done
  step_end images "built: $(cd "$STATE/images" && ls -d */ | tr -d / | tr '\n' ' ')(imported by the controller)"
}

up_services() {
  local n
  write_service_configs
  start_service controller "$(controller_main)" "$STATE/controller.yaml" "$(pat_controller)" "$CONTROLLER_LISTEN"
  for n in "${AGENT_NODES[@]}"; do
    start_service "agent-$n" "$(agent_main)" "$STATE/agent-$n.yaml" "$(pat_agent "$n")" "127.0.0.1:$(agent_port "$n")"
  done
  wait_services
}

main() {
  require_root
  local t0
  t0=$(now_ms)
  up_packages
  up_state_dirs
  # One up/down at a time.
  exec 9>"$STATE/.lock"
  flock -n 9 || die "another up/down is running (lock $STATE/.lock)"
  up_etc_hosts
  up_postgres
  up_oar_conf
  up_oar_database
  up_db_trigger
  up_admission_rule
  up_oar_ssh_key
  up_oar_node_sshd
  up_almighty
  up_oar_resources
  up_test_users
  up_oar_hooks
  up_instances_mount
  up_libvirtd
  up_ovsdb
  up_vswitchd
  up_bridge
  up_node_networks
  up_nats
  up_pki
  write_service_configs
  up_images
  up_services
  local dt=$(($(now_ms) - t0))
  printf 'up: %s in %d.%02ds (state %s, logs %s)\n' "$([[ $FAILED == 0 ]] && echo "done" || echo FAILED)" \
    $((dt / 1000)) $((dt % 1000 / 10)) "$STATE" "$LOG_DIR"
  return "$FAILED"
}

main "$@"
