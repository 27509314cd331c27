"""``python -m recs_pipeline.feast.apply_process FEATURE_STORE_YAML``, run in the feature repo: what
``feast apply`` does, without importing Feast's whole CLI (its permission commands import bigtree,
1.3 s of every call) or Feast's import-time type instrumentation (``recs_pipeline/_feast_typechecks.py``;
the package's ``__init__`` runs before this module).
:func:`recs_pipeline.feast.feast_store.apply_repo` runs it in a process of its own: Feast imports the
repo's modules, which read the home from the environment, and changes the working directory.
"""

import sys
from pathlib import Path

from feast.repo_config import load_repo_config
from feast.repo_operations import apply_total, cli_check_repo


def main(feature_store_yaml: str) -> None:
    repo = Path.cwd()
    yaml_file = Path(feature_store_yaml).absolute()
    cli_check_repo(repo, yaml_file)
    apply_total(load_repo_config(repo, yaml_file), repo, skip_source_validation=False)


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: python -m recs_pipeline.feast.apply_process FEATURE_STORE_YAML")
    main(sys.argv[1])
