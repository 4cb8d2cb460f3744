#!/usr/bin/env bash
# Multi-host TPU/GPU: run the SAME command on every host (e.g. via
# `gcloud compute tpus tpu-vm ssh NAME --worker=all --command=...` on a TPU pod, or `srun`
# under SLURM). `--distributed` calls jax.distributed.initialize(), which detects the
# coordinator, process count and index on TPU, SLURM and Kubernetes; elsewhere set
# COORDINATOR=host:port NUM_PROCESSES=n PROCESS_ID=i. Every process feeds only the data of
# its own devices; only process 0 writes logs and reports; the workdir must be shared
# (a GCS bucket or network file system) for checkpoints.
#   ./launch/multihost.sh experiments/seed_sweep.py:cifar10 gs://bucket/sweep
set -euo pipefail
cd "$(dirname "$0")/.."
config="${1:?usage: launch/multihost.sh CONFIG WORKDIR [overrides...]}"
workdir="${2:?usage: launch/multihost.sh CONFIG WORKDIR [overrides...]}"
shift 2
source launch/_env.sh requirements.txt
extra=()
if [ -n "${COORDINATOR:-}" ]; then
  extra+=(--coordinator_address="$COORDINATOR" --num_processes="$NUM_PROCESSES"
          --process_id="$PROCESS_ID")
fi
if [ "${CPU_COLLECTIVES:-}" = gloo ]; then extra+=(--cpu_collectives=gloo); fi
python -m launch.run --config="$config" --workdir="$workdir" --distributed "${extra[@]}" "$@"
