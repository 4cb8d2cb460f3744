#!/usr/bin/env bash
# Command B: install (once) the runtime and test requirements and run the test suite.
#   ./launch/test.sh                 # the default suite (what CI runs)
#   ./launch/test.sh -m slow         # the slow tests, kept out of the default run
#   ./launch/test.sh tests/models    # any pytest arguments
set -euo pipefail
cd "$(dirname "$0")/.."
source launch/_env.sh requirements-test.txt
python -m pytest "$@"
