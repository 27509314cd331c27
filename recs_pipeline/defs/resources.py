"""Resources: where the pipeline keeps its data, as one typed, configurable resource."""

from collections.abc import Iterator
from contextlib import contextmanager

import dagster as dg
import duckdb

from recs_pipeline.settings import Settings
from recs_pipeline.warehouse import db


class PipelineResource(dg.ConfigurableResource):
    """Paths and connections of the pipeline.

    ``home`` overrides ``RECS_HOME`` (tests point it at a temp dir); unset, the environment and
    the defaults in :mod:`recs_pipeline.settings` apply.
    """

    home: str | None = None

    @property
    def settings(self) -> Settings:
        return Settings.from_env(self.home)

    @contextmanager
    def warehouse(self) -> Iterator[duckdb.DuckDBPyConnection]:
        """A short-lived connection to the DuckDB file. Only assets in the ``duckdb`` pool call this."""
        with db.connect_for(self.settings) as con:
            yield con


@dg.definitions
def resources() -> dg.Definitions:
    """Bind the pipeline resource for every asset, job, sensor and schedule found in ``defs/``."""
    return dg.Definitions(resources={"pipeline": PipelineResource()})
