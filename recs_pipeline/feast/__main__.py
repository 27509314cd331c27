"""``python -m recs_pipeline.feast ARGS``: Feast's own CLI (``feast ARGS``), without the import-time
type instrumentation (see ``recs_pipeline/_feast_typechecks.py``: running a module of the package
imports ``recs_pipeline/__init__.py`` first); ``feast_cli`` runs it."""

from feast.cli.cli import cli

if __name__ == "__main__":
    cli(prog_name="feast")
