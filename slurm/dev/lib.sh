# shellcheck shell=bash disable=SC2034  # the variables are for the scripts that source this
# Shared by start.sh, stop.sh and check.sh: paths, the daemon table and small helpers.
# Sourcing it has no side effects beyond setting variables and exporting SLURM_CONF.

DEV_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
STATE=$(realpath -m -- "${GOALGEN_SLURM_DIR:-/tmp/goalgen-slurm}")
NODES=(n1 n2)
NODE_CPUS=${GOALGEN_SLURM_NODE_CPUS:-8}
NODE_GPUS=2
CLUSTER=goalgen

ETC=$STATE/etc
RUN=$STATE/run
LOGS=$STATE/log
MUNGE_DIR=$STATE/munge            # owned by munge: socket, pid, log, seed
MUNGE_SOCKET=$MUNGE_DIR/munge.socket
DB_DIR=$STATE/mysql               # MariaDB datadir (owned by mysql)
DB_RUN=$STATE/mysql-run           # MariaDB socket, pid, error log (owned by mysql: it dies silently otherwise)
DB_SOCKET=$DB_RUN/mysqld.sock
ENV_FILE=$STATE/env
export SLURM_CONF=$ETC/slurm.conf

# Exit status of start.sh when this machine cannot host the cluster at all (not root and
# packages missing, apt failing): the pytest fixture skips on it and fails on anything else.
EX_UNAVAILABLE=3

# name|pid file|/proc/PID/comm. Order = start order; stop.sh walks it backwards.
DAEMONS=(
  "munged|$MUNGE_DIR/munged.pid|munged"
  "mariadbd|$DB_RUN/mariadbd.pid|mariadbd"
  "slurmdbd|$RUN/slurmdbd.pid|slurmdbd"
  "slurmctld|$RUN/slurmctld.pid|slurmctld"
)
for _n in "${NODES[@]}"; do DAEMONS+=("slurmd-$_n|$RUN/slurmd-$_n.pid|slurmd"); done
unset _n

log() { printf '[slurm/dev] %s\n' "$*" >&2; }

# Print the PID recorded in pid file $1 if that process is alive and really is $2.
# Checking the command name keeps a stale pid file from pointing us at a reused PID.
daemon_pid() {
  local file=$1 comm=$2 pid
  [[ -r $file ]] || return 1
  pid=$(tr -cd '0-9' <"$file")
  [[ -n $pid ]] && pid_running "$pid" || return 1
  [[ $(<"/proc/$pid/comm") == "$comm" ]] || return 1
  printf '%s\n' "$pid"
}

pid_running() {  # alive and not a zombie (an unreaped zombie still answers kill -0)
  local stat
  stat=$(cat "/proc/$1/stat" 2>/dev/null) || return 1
  stat=${stat##*) }
  [[ ${stat%% *} != Z ]]
}

daemon_field() {  # daemon_field NAME FIELD(1=name,2=pidfile,3=comm)
  local entry
  for entry in "${DAEMONS[@]}"; do
    if [[ ${entry%%|*} == "$1" ]]; then cut -d'|' -f"$2" <<<"$entry"; return 0; fi
  done
  return 1
}

daemon_alive() { daemon_pid "$(daemon_field "$1" 2)" "$(daemon_field "$1" 3)" >/dev/null; }

# Client commands get a hard timeout: a wedged daemon must not hang start/stop/check.
sl() { timeout 15 "$@"; }

ctld_up() { sl scontrol ping 2>/dev/null | grep -q 'is UP'; }

nodes_ready() {  # every node responds: idle, or busy with jobs
  local states
  states=$(sl sinfo -h -N -o '%N %T' 2>/dev/null) || return 1
  local n st
  for n in "${NODES[@]}"; do
    st=$(awk -v n="$n" '$1 == n {print $2}' <<<"$states")
    [[ $st =~ ^(idle|mixed|allocated|completing)$ ]] || return 1
  done
}

nodes_idle() {
  local states
  states=$(sl sinfo -h -N -o '%N %T' 2>/dev/null) || return 1
  [[ $(awk '{print $2}' <<<"$states" | sort -u) == idle && $(wc -l <<<"$states") -eq ${#NODES[@]} ]]
}

accounting_ready() {
  sl sacctmgr -n -P show cluster format=cluster 2>/dev/null | grep -qx "$CLUSTER" &&
    sl sacct -n -X -o JobID -S now >/dev/null 2>&1
}

# Healthy = every recorded daemon alive, controller answering, nodes usable, accounting answering.
cluster_healthy() {
  local entry
  for entry in "${DAEMONS[@]}"; do daemon_alive "${entry%%|*}" || return 1; done
  ctld_up || return 1
  nodes_ready || return 1
  accounting_ready
}

print_env() {
  printf 'export SLURM_CONF=%q\n' "$SLURM_CONF"
}
