# Sourced by scripts/up and scripts/test: install uv if needed, install the locked environment,
# and export the pipeline's default locations. Safe to run again (it only adds what is missing).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
export PATH="$HOME/.local/bin:$PATH"
export UV_PYTHON_DOWNLOADS=never   # use the machine's Python; never fetch one
# RECS_PYTHON picks the Python (3.11, the default, or 3.12); any other than 3.11 gets its own environment
# (.venv-3.12) so both can live side by side (CI tests both).
RECS_PYTHON="${RECS_PYTHON:-3.11}"
if [[ "$RECS_PYTHON" != "3.11" ]]; then
  export UV_PROJECT_ENVIRONMENT="${UV_PROJECT_ENVIRONMENT:-$PWD/.venv-$RECS_PYTHON}"
fi
uv_runs() { command -v uv >/dev/null 2>&1 && uv --version >/dev/null 2>&1; }
if ! uv_runs; then
  # A uv installed by pip sits beside the Python that installed it, which need not be on PATH: with
  # pip --user, or under pyenv, whose `uv` shim can exist before it finds the binary (right after
  # `pip install uv`: "pyenv: uv: command not found"). Put the binary's folder first on PATH.
  if ! python3 -m uv --version >/dev/null 2>&1; then
    echo "installing uv (Python package manager) ..." >&2
    python3 -m pip install --quiet "uv==0.13.8" || python3 -m pip install --quiet --user "uv==0.13.8"
  fi
  PATH="$(dirname "$(python3 -c 'import uv; print(uv.find_uv_bin())')"):$PATH"
  export PATH
  uv_runs || { echo "uv was installed but cannot be run (try: python3 -m uv --version)" >&2; exit 1; }
fi
# The interpreter: pythonX.Y on PATH if it runs, else pyenv's copy (a pyenv shim of a version that is
# installed but not selected exists yet fails: "pyenv: python3.12: command not found").
recs_python="python$RECS_PYTHON"
if ! "$recs_python" -c "" >/dev/null 2>&1; then
  recs_python="$(ls -d "${PYENV_ROOT:-$HOME/.pyenv}"/versions/"$RECS_PYTHON".*/bin/python"$RECS_PYTHON" 2>/dev/null | sort -V | tail -1)"
  [[ -n "$recs_python" ]] || { echo "no Python $RECS_PYTHON found (RECS_PYTHON=$RECS_PYTHON)" >&2; exit 1; }
fi
uv sync --frozen --python "$recs_python" --quiet
export RECS_HOME="${RECS_HOME:-$PWD/data}"
export DAGSTER_HOME="${DAGSTER_HOME:-$RECS_HOME/dagster}"
