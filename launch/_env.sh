# Sourced by the launchers: make (once) and activate the project's virtual environment.
# Usage: source launch/_env.sh REQUIREMENTS_FILE
# Re-installs only when the requirements file changed since the last install, so a second
# run starts at once. Set VENV to use another location (default: .venv in the repo).
set -euo pipefail
_req="${1:-requirements.txt}"
VENV="${VENV:-$(pwd)/.venv}"
if [ ! -x "$VENV/bin/python" ]; then
  echo "creating virtual environment in $VENV" >&2
  python3 -m venv "$VENV"
  "$VENV/bin/python" -m pip install -q --upgrade pip
fi
_stamp="$VENV/.installed-$(basename "$_req")"
_hash="$(cat "$_req" requirements.txt | sha256sum | cut -d' ' -f1)"
if [ "$(cat "$_stamp" 2>/dev/null)" != "$_hash" ]; then
  echo "installing $_req into $VENV" >&2
  "$VENV/bin/python" -m pip install -q -r "$_req"
  echo "$_hash" > "$_stamp"
fi
export PATH="$VENV/bin:$PATH"
export PYTHONPATH="$(pwd)${PYTHONPATH:+:$PYTHONPATH}"
