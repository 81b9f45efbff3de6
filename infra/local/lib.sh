# shellcheck shell=bash
# shellcheck disable=SC2034 # constants used by the scripts that source this file
# Shared helpers of the local-cluster scripts (up.sh, down.sh, status.sh).
# Sourced, never executed. Everything here is about ONE machine emulating a small
# OAR cluster; see README.md next to this file.

# ---------------------------------------------------------------------------
# Layout and settings (all overridable from the environment)
# ---------------------------------------------------------------------------
LOCAL_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# The repository holding the built controller/agent/cli. Overridable so that the
# scripts can be tested against another checkout without touching this one.
REPO=${OARCLOUD_REPO:-$(cd "$LOCAL_DIR/../.." && pwd)}
OAR_INFRA_DIR=$(cd "$LOCAL_DIR/../oar" && pwd)
# State lives outside the git tree: it holds databases, logs and mount points.
STATE=${OARCLOUD_LOCAL_STATE:-/var/lib/oarcloud-local}
RUN_DIR=$STATE/run
LOG_DIR=$STATE/logs
INSTANCES_DIR=$STATE/instances

PG_VERSION=${OARCLOUD_PG_VERSION:-15}
PG_CLUSTER=${OARCLOUD_PG_CLUSTER:-main}
OAR_CONF=/etc/oar/oar.conf
OAR_HOME=/var/lib/oar

# Emulated compute nodes: name -> loopback address. Only loopback addresses, ever.
NODES=(node-1 node-2)
declare -A NODE_ADDR=([node-1]=127.0.10.1 [node-2]=127.0.10.2)
# Every host known to OAR (the emulated nodes plus the machine itself).
OAR_HOSTS=(localhost "${NODES[@]}")
# Every OAR host is a compute node with an agent (localhost too: OAR may place jobs there).
AGENT_NODES=("${OAR_HOSTS[@]}")
# Core ids OAR hands out on each host: they map onto this machine's real cpus.
CPUSET_IDS=(0 1)
# OAR cores per host, their cpuset ids taken in turn from CPUSET_IDS (0 1 0 1): emulated
# hosts share the machine's cpus anyway, and 4 cores each let a job run 4 one-vCPU
# instances per host (8 over 2 hosts, as the controller benchmark asks).
CORES_PER_HOST=4
HOSTS_MARK="# oarcloud-local"

NATS_PORT=14222
NATS_MON_PORT=18222
CONTROLLER_LISTEN=127.0.0.1:17000
# The same services over TLS (the controller's certificate): agents fetch layers there.
CONTROLLER_TLS_LISTEN=127.0.0.1:17443
CONTROLLER_METRICS=127.0.0.1:19100
OAR_NODE_SSH_PORT=6667

OVS_RUN=/var/run/openvswitch          # default path: libvirt calls plain ovs-vsctl
OVS_SOCK=$OVS_RUN/db.sock
OVS_DB=$STATE/ovs/conf.db
OVS_SCHEMA=/usr/share/openvswitch/vswitch.ovsschema
BRIDGE=br-int
# Marker set on every OVS object we own; down.sh removes only objects carrying it.
OVS_MARK_KEY=oarcloud-managed

# Emulated nodes get their own network namespace, with their own ovsdb-server and
# ovs-vswitchd (one userspace datapath per netns: notes/HOST.md) and an underlay link:
# a veth pair from the netns to a host-side Linux bridge with NO address. The underlay
# addresses exist only inside those namespaces (on their `br-ul` OVS bridge, where the
# userspace VXLAN needs them).
# localhost gets one too, so that a job placed on localhost and an emulated node has a
# network that crosses a tunnel like any other (the host's own OVS stays for the tests that
# drive OVS directly).
NET_NODES=(localhost "${NODES[@]}")
declare -A NODE_NETNS=([localhost]=oc-localhost [node-1]=oc-node-1 [node-2]=oc-node-2)
declare -A NODE_UNDERLAY=([localhost]=192.168.240.10 [node-1]=192.168.240.11 [node-2]=192.168.240.12)
UNDERLAY_PREFIX=24
UNDERLAY_HOST_BRIDGE=oc-ul
UNDERLAY_BRIDGE=br-ul
node_ovs_dir() { echo "$STATE/nodes/$1/ovs"; }
node_ovs_sock() { echo "$(node_ovs_dir "$1")/db.sock"; }
# Host end of a node's underlay veth (the netns end is `ul0`).
node_ul_veth() { echo "ocul-$1"; }

LIBVIRT_URI=lxc:///system
LIBVIRT_CONF=$STATE/libvirt/libvirtd.conf
LIBVIRT_DRIVER_DIR_LOCAL=$STATE/libvirt/drivers
LIBVIRT_CONN_DRIVERS=/usr/lib/x86_64-linux-gnu/libvirt/connection-driver
INSTANCE_XMLNS=https://oarcloud.dev/xmlns/instance/1

CLEAN_PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin

# Debian packages the local cluster needs (installed only when missing).
REQUIRED_PKGS=(
  oar-server oar-server-pgsql oar-node oar-user oar-user-pgsql postgresql
  libvirt-daemon libvirt-daemon-driver-lxc libvirt-clients libvirt0
  openvswitch-switch nats-server debootstrap protobuf-compiler busybox-static
  dropbear-bin iproute2 iputils-ping ethtool openssh-client netcat-openbsd sudo nftables
  util-linux procps
)

# ---------------------------------------------------------------------------
# Logging and timing
# ---------------------------------------------------------------------------
log() { printf '%s\n' "$*" >&2; }
die() { printf 'error: %s\n' "$*" >&2; exit 1; }

# Monotonic-enough wall clock in milliseconds (bash 5 has EPOCHREALTIME).
now_ms() { local t=${EPOCHREALTIME/./}; echo $((t / 1000)); }

# step_begin / step_end print one line per component with its duration.
_STEP_T0=0
step_begin() { _STEP_T0=$(now_ms); }
step_end() { # <component> <outcome...>
  local name=$1; shift
  local dt=$(($(now_ms) - _STEP_T0))
  printf '%-18s %-52s %4d.%02ds\n' "$name" "$*" $((dt / 1000)) $((dt % 1000 / 10))
}

# ---------------------------------------------------------------------------
# Packages
# ---------------------------------------------------------------------------
# ensure_pkgs PKG... : install only what dpkg says is missing; apt-get update once.
ensure_pkgs() {
  local missing=() p status
  for p in "$@"; do
    status=$(dpkg-query -W -f='${Status}' "$p" 2>/dev/null || true)
    [[ $status == "install ok installed" ]] || missing+=("$p")
  done
  ((${#missing[@]} == 0)) && return 0
  log "installing missing packages: ${missing[*]}"
  # The package lists may be absent or stale on a fresh machine (notes/HOST.md).
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}"
}

# ---------------------------------------------------------------------------
# Processes: only ever identified by OUR pid files + their command line
# ---------------------------------------------------------------------------
pid_file() { echo "$RUN_DIR/$1.pid"; }

# pid_alive PID : true if the process exists and is not a zombie (PID 1 here may
# not reap orphans, so a killed daemon can linger as a zombie).
pid_alive() {
  local pid=$1 state
  [[ $pid =~ ^[0-9]+$ ]] || return 1
  [[ -r /proc/$pid/stat ]] || return 1
  state=$(awk '{print $3}' "/proc/$pid/stat" 2>/dev/null) || return 1
  [[ -n $state && $state != Z && $state != X ]]
}

cmdline_of() { tr '\0' ' ' <"/proc/$1/cmdline" 2>/dev/null || true; }

# running_pid NAME PATTERN : print the pid of our daemon NAME if its pid file names a
# live process whose command line contains PATTERN (guards against pid reuse).
running_pid() {
  local name=$1 pattern=$2 f pid
  f=$(pid_file "$name")
  [[ -r $f ]] || return 1
  pid=$(head -n1 "$f" 2>/dev/null | tr -dc '0-9')
  pid_alive "$pid" || return 1
  [[ $(cmdline_of "$pid") == *"$pattern"* ]] || return 1
  echo "$pid"
}

# spawn NAME LOGFILE CMD... : start CMD detached (own session, stdin closed, output
# to LOGFILE) and record its pid. setsid does not fork here (a background child of a
# script is not a group leader), so $! is the daemon's own pid.
spawn() {
  local name=$1 logf=$2; shift 2
  mkdir -p "$RUN_DIR" "$(dirname "$logf")"
  printf '\n=== %s start %s: %s\n' "$name" "$(date -Is)" "$*" >>"$logf"
  # A daemon inherits no descriptor but 0-2: not our lock file (fd 9, see up.sh), nor a lock
  # or pipe of whoever ran us (a `flock FILE up.sh` would otherwise stay locked for as long
  # as the daemons live).
  (
    local fd
    for fd in /proc/$BASHPID/fd/*; do
      fd=${fd##*/}
      if ((fd > 2)); then eval "exec $fd>&-" 2>/dev/null || true; fi
    done
    exec nohup setsid "$@" </dev/null >>"$logf" 2>&1
  ) &
  echo $! >"$(pid_file "$name")"
}

# stop_pid NAME PID [TIMEOUT_S] : SIGTERM, bounded wait, then SIGKILL.
stop_pid() {
  local name=$1 pid=$2 timeout=${3:-10} i
  kill -TERM "$pid" 2>/dev/null || true
  for ((i = 0; i < timeout * 10; i++)); do
    pid_alive "$pid" || return 0
    sleep 0.1
  done
  log "$name (pid $pid) ignored SIGTERM for ${timeout}s: SIGKILL"
  kill -KILL "$pid" 2>/dev/null || true
  for ((i = 0; i < 30; i++)); do
    pid_alive "$pid" || return 0
    sleep 0.1
  done
  return 1
}

# stop_daemon NAME PATTERN [TIMEOUT_S] : stop our daemon if running, drop its pid file.
# Prints the outcome for step_end.
stop_daemon() {
  local name=$1 pattern=$2 timeout=${3:-10} pid
  if pid=$(running_pid "$name" "$pattern"); then
    stop_pid "$name" "$pid" "$timeout" || { rm -f "$(pid_file "$name")"; echo "FAILED to stop pid $pid"; return 0; }
    rm -f "$(pid_file "$name")"
    echo "stopped (pid $pid)"
  else
    rm -f "$(pid_file "$name")"
    echo "not running"
  fi
}

# ---------------------------------------------------------------------------
# Waiting
# ---------------------------------------------------------------------------
port_open() { # HOST PORT
  # shellcheck disable=SC2016 # $0/$1 expand in the inner bash
  timeout 1 bash -c ': </dev/tcp/$0/$1' "$1" "$2" 2>/dev/null
}

# wait_port HOST PORT TIMEOUT_S [PID] : true once HOST:PORT accepts connections; gives
# up early if PID (the daemon that should open it) dies.
wait_port() {
  local host=$1 port=$2 timeout=$3 pid=${4:-} i
  for ((i = 0; i < timeout * 10; i++)); do
    port_open "$host" "$port" && return 0
    [[ -n $pid ]] && ! pid_alive "$pid" && return 1
    sleep 0.1
  done
  return 1
}

# wait_for TIMEOUT_S CMD... : poll CMD every 0.1 s until it succeeds.
wait_for() {
  local timeout=$1 i; shift
  for ((i = 0; i < timeout * 10; i++)); do
    "$@" >/dev/null 2>&1 && return 0
    sleep 0.1
  done
  return 1
}

log_tail() { # FILE
  [[ -r $1 ]] || return 0
  echo "---- last lines of $1:" >&2
  tail -n 15 "$1" >&2
}

# ---------------------------------------------------------------------------
# Files
# ---------------------------------------------------------------------------
# write_if_changed DEST MODE OWNER : replace DEST with stdin only if it differs.
# Returns 0 if the file was written, 1 if it was already identical.
write_if_changed() {
  local dest=$1 mode=$2 owner=$3 tmp
  tmp=$(mktemp "${dest}.XXXXXX")
  cat >"$tmp"
  if [[ -f $dest ]] && cmp -s "$tmp" "$dest"; then
    rm -f "$tmp"
    return 1
  fi
  chmod "$mode" "$tmp"
  chown "$owner" "$tmp"
  mv -f "$tmp" "$dest"
  return 0
}

# ---------------------------------------------------------------------------
# OAR / PostgreSQL
# ---------------------------------------------------------------------------
# oar_conf_get KEY : value of KEY in oar.conf, quotes stripped.
oar_conf_get() {
  sed -n -E "s/^[[:space:]]*$1=\"?([^\"]*)\"?[[:space:]]*$/\1/p" "$OAR_CONF" | tail -n1
}

pg_running() { pg_ctlcluster "$PG_VERSION" "$PG_CLUSTER" status >/dev/null 2>&1; }

# psql_oar SQL : run SQL on the OAR database as the PostgreSQL superuser; prints
# unaligned tuples only.
psql_oar() {
  local db
  db=$(oar_conf_get DB_BASE_NAME)
  runuser -u postgres -- psql -X -q -v ON_ERROR_STOP=1 -d "${db:-oar}" -tA -c "$1"
}

oar_db_exists() {
  local db
  db=$(oar_conf_get DB_BASE_NAME)
  [[ $(runuser -u postgres -- psql -X -tA -c "SELECT 1 FROM pg_database WHERE datname='${db:-oar}'" 2>/dev/null) == 1 ]]
}

# ---------------------------------------------------------------------------
# Command-line patterns that identify each of our daemons in /proc/<pid>/cmdline
# ---------------------------------------------------------------------------
pat_sshd() { echo "-f /etc/oar/sshd_config"; }
pat_almighty() { echo "Almighty"; }
pat_libvirtd() { echo "--config $LIBVIRT_CONF"; }
pat_ovsdb() { echo "ovsdb-server $OVS_DB"; }
pat_vswitchd() { echo "--log-file=$LOG_DIR/ovs-vswitchd.log"; }
pat_node_ovsdb() { echo "ovsdb-server $(node_ovs_dir "$1")/conf.db"; }
pat_node_vswitchd() { echo "--log-file=$LOG_DIR/ovs-vswitchd-$1.log"; }
pat_nats() { echo "-sd $STATE/nats"; }
pat_controller() { echo "--config $STATE/controller.yaml"; }
pat_agent() { echo "--config $STATE/agent-$1.yaml"; }

controller_main() { echo "$REPO/packages/controller/dist/main.js"; }
agent_main() { echo "$REPO/packages/agent/dist/main.js"; }

# agent_port N / agent_metrics_port N : per-node ports (node-1 -> 17101 / 19101,
# localhost -> 17110 / 19110).
agent_index() { if [[ $1 == localhost ]]; then echo 10; else echo "${1#node-}"; fi; }
agent_port() { echo $((17100 + $(agent_index "$1"))); }
agent_metrics_port() { echo $((19100 + $(agent_index "$1"))); }

# The OVS datapath: the userspace one unless the kernel module is loaded (we never
# modprobe: notes/HOST.md, no module on this host kind).
ovs_datapath() {
  if [[ -n ${OARCLOUD_DATAPATH:-} ]]; then
    echo "$OARCLOUD_DATAPATH"
  elif [[ -d /sys/module/openvswitch ]]; then
    echo system
  else
    echo netdev
  fi
}

require_root() { [[ $EUID -eq 0 ]] || die "run as root"; }
