"""Imported by the warm run server only, before it forks runs (recs_pipeline/warm_runs.py): it
ignores SIGTERM from here on and preloads the libraries. Nothing else may import it."""

from recs_pipeline.warm_runs import prepare_server

prepare_server()
