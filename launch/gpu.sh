#!/usr/bin/env bash
# One GPU: install the CUDA build of JAX into the project's venv (once) and run an experiment.
#   ./launch/gpu.sh experiments/classifier.py:cifar10 /path/to/workdir [--config.k=v ...]
# Data: prepare TFDS data sets beforehand (e.g. `tfds build cifar10` on a machine with
# network) and pass --config.data_dir=... ; nothing is downloaded at run time.
set -euo pipefail
cd "$(dirname "$0")/.."
config="${1:?usage: launch/gpu.sh CONFIG WORKDIR [overrides...]}"
workdir="${2:?usage: launch/gpu.sh CONFIG WORKDIR [overrides...]}"
shift 2
source launch/_env.sh requirements.txt
python -c 'import jax; assert jax.default_backend() == "gpu"' 2>/dev/null || \
  python -m pip install -q -U "jax[cuda12]"
export XLA_PYTHON_CLIENT_PREALLOCATE=false
python -m launch.run --config="$config" --workdir="$workdir" "$@"
