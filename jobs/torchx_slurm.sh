#!/usr/bin/env bash
# `torchx run -s slurm ...` with what TorchX's Slurm scheduler does not write itself:
#   - a stop signal before the time limit (TorchX adds --requeue but no --signal): SIGUSR1
#     120 s before the limit reaches torchrun and the workers, which save last.ckpt; rank 0
#     requeues the job and it resumes from the same run directory;
#   - append-mode logs, so the output of the attempts before a requeue is kept.
# sbatch reads both from the environment of the submitting process; set them yourself to
# change them (SBATCH_SIGNAL=USR1@300 jobs/torchx_slurm.sh ...).
#
# Run from the repository root (TorchX reads .torchxconfig there; the job runs there):
#   jobs/torchx_slurm.sh -cfg partition=gpu,time=24:00:00 jobs/components.py:train \
#       --nnodes 2 --gpus_per_node 4 -- --config-name=train_fb_flow_matching max_epochs=500
# Everything after the script name is passed to `torchx run -s slurm` unchanged.
set -euo pipefail
export SBATCH_SIGNAL="${SBATCH_SIGNAL:-USR1@120}"
export SBATCH_OPEN_MODE="${SBATCH_OPEN_MODE:-append}"
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
torchx="${TORCHX:-$(command -v torchx || echo "$here/../.venv/bin/torchx")}"
exec "$torchx" run -s slurm "$@"
