#!/usr/bin/env bash
# One entry point that sets up everything first, then runs what you ask:
#   ./mae.sh main [flags]   the main job: accelerate launch recipes/ultrasound.py [flags]
#   ./mae.sh test [args]    the test suite: python -m pytest [args]
#   ./mae.sh exec CMD ...   any command inside the environment (e.g. accelerate launch recipes/...)
# Set-up (idempotent, re-run only when pyproject.toml changes): Debian packages the libraries need,
# a virtualenv in .venv, and this package with its dev extras.
set -euo pipefail
cd "$(dirname "$0")"
VENV=${MAE_VENV:-.venv}
PY=${PYTHON:-python3}

system_packages() {
  # libusb-1.0-0: open3d's import needs it. libgomp1: OpenMP for torch/open3d on slim images.
  local need=()
  for pkg in libusb-1.0-0 libgomp1; do
    dpkg -s "$pkg" >/dev/null 2>&1 || need+=("$pkg")
  done
  [ ${#need[@]} -eq 0 ] && return
  local sudo=""
  [ "$(id -u)" -ne 0 ] && sudo="sudo"
  echo "[setup] installing Debian packages: ${need[*]}"
  $sudo apt-get update -qq && DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${need[@]}" >/dev/null
}

python_env() {
  local stamp="$VENV/.installed" want
  want=$(sha1sum pyproject.toml | cut -d' ' -f1)
  if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then return; fi
  [ -x "$VENV/bin/python" ] || { echo "[setup] creating $VENV"; "$PY" -m venv "$VENV"; }
  echo "[setup] installing Python packages (the first time takes a few minutes)"
  "$VENV/bin/python" -m pip install -q --upgrade pip
  "$VENV/bin/python" -m pip install -q -e ".[dev]"
  echo "$want" > "$stamp"
}

system_packages
python_env
export PATH="$PWD/$VENV/bin:$PATH"
export MAE_SHARED_DATA=${MAE_SHARED_DATA:-$PWD/../shared/data}

cmd=${1:-main}
shift || true
case "$cmd" in
  # the demo starts over each time it is run bare; given flags (e.g. --resume), they decide
  main) if [ $# -eq 0 ]; then set -- --overwrite; fi; exec accelerate launch recipes/ultrasound.py "$@" ;;
  test) exec python -m pytest "$@" ;;
  exec) exec "$@" ;;
  *) echo "usage: ./mae.sh main|test|exec CMD..." >&2; exit 2 ;;
esac
