"""The Dagster code location: everything found in ``recs_pipeline.defs`` (see ``[tool.dg]`` in pyproject.toml)."""

from pathlib import Path

import dagster as dg

from recs_pipeline import warm_runs

# a code server loading this location forks its runs from a warm process (recs_pipeline/warm_runs.py)
warm_runs.install()

defs = dg.load_from_defs_folder(path_within_project=Path(__file__).parent)
