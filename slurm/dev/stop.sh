#!/usr/bin/env bash
# Stop the local Slurm test cluster started by start.sh: cancel the remaining jobs, then stop
# exactly the daemons whose PIDs start.sh's daemons recorded in the state dir (TERM, wait, KILL
# after a timeout), newest first. Never matches processes by name. Keeps config, logs, job
# state and the accounting database, so the next start.sh is quick and job IDs keep counting.
set -euo pipefail
# shellcheck source-path=SCRIPTDIR source=lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

t_start=$(date +%s.%N)
elapsed() { awk -v a="$t_start" -v b="$(date +%s.%N)" 'BEGIN { printf "%.1f", b - a }'; }

if [[ ! -d $STATE ]]; then
  log "nothing to stop ($STATE does not exist)"
  exit 0
fi
if [[ $(id -u) != 0 ]]; then
  for entry in "${DAEMONS[@]}"; do
    if daemon_alive "${entry%%|*}"; then
      log "ERROR: ${entry%%|*} is running; stopping the cluster needs root"
      exit 1
    fi
  done
  log "nothing running"
  exit 0
fi
exec 9>"$STATE/.lock"
flock -w 600 9 || { log "ERROR: could not lock $STATE/.lock"; exit 1; }

# 1. Jobs first, while controller and slurmds are up to deliver the kill and record it.
if daemon_alive slurmctld && ctld_up; then
  mapfile -t jobs < <(sl squeue -h -o %A 2>/dev/null | sort -u)
  if ((${#jobs[@]})); then
    log "cancelling ${#jobs[@]} job(s): ${jobs[*]}"
    sl scancel "${jobs[@]}" 2>/dev/null || true
    # Up to KillWait (10 s) + slack for processes that ignore SIGTERM.
    for _ in $(seq 80); do
      [[ -z $(sl squeue -h -o %A 2>/dev/null) ]] && break
      sleep 0.25
    done
    left=$(sl squeue -h -o '%A %T' 2>/dev/null | tr '\n' ' ')
    [[ -z $left ]] || log "warning: jobs still listed after cancel: $left"
  fi
fi

# stop_pids TIMEOUT_S NAME...: TERM all of them at once, wait, KILL what is left.
stop_pids() {
  local timeout=$1 name pid
  shift
  local -A pids=()
  for name in "$@"; do
    if pid=$(daemon_pid "$(daemon_field "$name" 2)" "$(daemon_field "$name" 3)"); then
      pids[$name]=$pid
      kill -TERM "$pid" 2>/dev/null || true
    fi
  done
  ((${#pids[@]})) || return 0
  local deadline=$((SECONDS + timeout)) alive
  while :; do
    alive=()
    for name in "${!pids[@]}"; do
      pid_running "${pids[$name]}" && alive+=("$name")
    done
    ((${#alive[@]})) || break
    if ((SECONDS >= deadline)); then
      for name in "${alive[@]}"; do
        log "warning: $name (pid ${pids[$name]}) ignored SIGTERM for ${timeout}s; sending SIGKILL"
        kill -KILL "${pids[$name]}" 2>/dev/null || true
      done
      break
    fi
    sleep 0.1
  done
  for name in "${!pids[@]}"; do log "stopped $name (pid ${pids[$name]})"; done
}

# 2. Daemons, in reverse dependency order; the slurmds and the controller can go together.
slurmds=("${NODES[@]/#/slurmd-}")
stop_pids 30 "${slurmds[@]}" slurmctld
stop_pids 30 slurmdbd
stop_pids 60 mariadbd
stop_pids 15 munged

for entry in "${DAEMONS[@]}"; do
  f=$(cut -d'|' -f2 <<<"$entry")
  # A pid file we did not act on names a dead or foreign process: drop it unless it is alive.
  daemon_alive "${entry%%|*}" || rm -f "$f"
done
if [[ -L /etc/slurm/slurm.conf && $(readlink /etc/slurm/slurm.conf) == "$SLURM_CONF" ]]; then
  rm -f /etc/slurm/slurm.conf
fi
rm -f "$ENV_FILE"
log "stopped in $(elapsed)s (state kept in $STATE)"
