# Sourced by scripts/up and scripts/test: install uv if needed, install the locked environment,
# and export the pipeline's default locations. Safe to run again (it only adds what is missing).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
export PATH="$HOME/.local/bin:$PATH"
export UV_PYTHON_DOWNLOADS=never   # use the machine's Python 3.11; never fetch one
if ! command -v uv >/dev/null 2>&1; then
  echo "installing uv (Python package manager) ..." >&2
  python3 -m pip install --quiet "uv==0.13.8" || python3 -m pip install --quiet --user "uv==0.13.8"
fi
uv sync --frozen --python 3.11 --quiet
export RECS_HOME="${RECS_HOME:-$PWD/data}"
export DAGSTER_HOME="${DAGSTER_HOME:-$RECS_HOME/dagster}"
