#!/usr/bin/env bash
# Print the health of the local Slurm test cluster; exit 0 if it is up and healthy, 1 if not.
#   -q  print nothing, just set the exit status
set -euo pipefail
# shellcheck source-path=SCRIPTDIR source=lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

if [[ ${1:-} == -q ]]; then
  cluster_healthy
  exit
fi

echo "state dir: $STATE"
echo "SLURM_CONF=$SLURM_CONF"
for entry in "${DAEMONS[@]}"; do
  IFS='|' read -r name file comm <<<"$entry"
  if pid=$(daemon_pid "$file" "$comm"); then
    printf '  %-10s running  pid %s\n' "$name" "$pid"
  else
    printf '  %-10s DOWN     (%s)\n' "$name" "$file"
  fi
done
if daemon_alive slurmctld; then
  echo "controller: $(sl scontrol ping 2>&1 | head -n 1)"
  sl sinfo -N -o '  %N %P %T %c %m %G' 2>&1 || true
  echo "jobs in queue: $(sl squeue -h 2>/dev/null | wc -l)"
fi
if daemon_alive slurmdbd; then
  echo "accounting clusters: $(sl sacctmgr -n -P show cluster format=cluster 2>&1 | tr '\n' ' ')"
fi
if cluster_healthy; then
  echo "HEALTHY"
else
  echo "NOT HEALTHY"
  exit 1
fi
