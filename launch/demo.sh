#!/usr/bin/env bash
# Command A: install (once) and run the main job, every study at `runlocal` scale on the
# embedded offline data; writes workdirs/main/report.md with tables and figures.
#   ./launch/demo.sh                 # runlocal scale
#   WORKDIR=/tmp/run ./launch/demo.sh
# Re-running resumes from the checkpoints in the workdir.
set -euo pipefail
cd "$(dirname "$0")/.."
source launch/_env.sh requirements.txt
python -m launch.run --config="experiments/main.py:${CONFIG_ARG:-runlocal}" \
  --workdir="${WORKDIR:-workdirs/main}" "$@"
