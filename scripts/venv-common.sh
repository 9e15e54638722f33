# Sourced by the scripts that make a pinned venv (triton-venv.sh, deploy-venv.sh, torch-onnx-venv.sh).
# They are idempotent: a venv counts only once its last step wrote VENV/.complete.

# venv_start VENV [WHY]: exits 0 when VENV is complete; otherwise (re)creates it, empty, with $PYTHON.
venv_start() {
  if [[ -f "$1/.complete" ]]; then
    echo "$1 is ready"; exit 0
  fi
  command -v "$PYTHON" >/dev/null || { echo "error: $PYTHON not found${2:+ ($2)}" >&2; exit 1; }
  rm -rf "$1"   # a venv's paths are absolute: an unfinished one is rebuilt in place
  "$PYTHON" -m venv "$1"
}

# venv_done VENV [WHAT]: marks VENV complete.
venv_done() {
  touch "$1/.complete"
  echo "$1 is ready${2:+: $2}"
}
