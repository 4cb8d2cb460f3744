# Sourced by the launchers: make (once) and activate the project's virtual environment.
# Usage: source launch/_env.sh REQUIREMENTS_FILE
# Re-installs only when the requirements file changed since the last install, so a second
# run starts at once. Set VENV to use another location (default: .venv in the repo).
# A file REQUIREMENTS_FILE without .txt plus -nodeps.txt, if present, is installed after it
# with --no-deps (packages whose declared dependencies cannot be installed here, e.g.
# torchattacks declares torchvision but imports without it).
set -euo pipefail
_req="${1:-requirements.txt}"
VENV="${VENV:-$(pwd)/.venv}"
if [ ! -x "$VENV/bin/python" ]; then
  echo "creating virtual environment in $VENV" >&2
  python3 -m venv "$VENV"
  "$VENV/bin/python" -m pip install -q --upgrade pip
fi
_stamp="$VENV/.installed-$(basename "$_req")"
_nodeps="${_req%.txt}-nodeps.txt"
_files=("$_req" requirements.txt)
if [ -f "$_nodeps" ]; then _files+=("$_nodeps"); fi
_hash="$(cat "${_files[@]}" | sha256sum | cut -d' ' -f1)"
if [ "$(cat "$_stamp" 2>/dev/null)" != "$_hash" ]; then
  echo "installing $_req into $VENV" >&2
  "$VENV/bin/python" -m pip install -q -r "$_req"
  if [ -f "$_nodeps" ]; then
    "$VENV/bin/python" -m pip install -q --no-deps -r "$_nodeps"
  fi
  echo "$_hash" > "$_stamp"
fi
export PATH="$VENV/bin:$PATH"
export PYTHONPATH="$(pwd)${PYTHONPATH:+:$PYTHONPATH}"
# XLA flags: launch/xla_setup.py (called by launch/run.py, launch/bench.py, tests/conftest.py).
