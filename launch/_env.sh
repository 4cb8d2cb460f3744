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
# XLA:CPU sends a lone convolution to YNNPACK by default; on this project's CPUs that path is
# slower than XLA's own (Eigen) convolution (measured by `python -m launch.bench --only=pgd`;
# see the README), so take it out of YNNPACK's fusion types. The flag only concerns the CPU
# backend (jax >= 0.10.2 accepts it; an unknown flag would abort every JAX process). A value
# the user already set in XLA_FLAGS wins.
case "${XLA_FLAGS:-}" in
  *xla_cpu_experimental_ynn_fusion_type*) ;;
  *) export XLA_FLAGS="${XLA_FLAGS:+$XLA_FLAGS }--xla_cpu_experimental_ynn_fusion_type=-individual_convolution" ;;
esac
