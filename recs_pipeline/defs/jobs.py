"""Jobs: the whole pipeline for one daily partition, and how every run executes (in process).

Every job of the code location, and every materialisation launched from the asset graph, runs its
steps in the run's own process (``in_process_executor``): Dagster's default multiprocess executor
starts a Python process per step, each importing Dagster, the code location and the step's
libraries (35-90 s of start-up per step under load, for 1-12 s of work). The steps that write
DuckDB are serialised anyway by the ``duckdb`` pool (limit 1), which the in-process executor
honours across runs like the multiprocess one: a step claims a slot before it starts and waits,
sleeping, while another run holds it.
"""

import dagster as dg

pipeline_job = dg.define_asset_job(
    name="pipeline_job",
    selection=dg.AssetSelection.groups("ingest", "features", "feast", "experiments"),
    description="Ingest landed files, build the day's feature snapshots, apply Feast and refresh the online store, "
    "and compute the experiments' online metrics and the shadow comparison (one process; the DuckDB steps wait for the duckdb pool).",
)


@dg.definitions
def executor() -> dg.Definitions:
    """The default executor of every job and asset materialisation in the code location: in process."""
    return dg.Definitions(executor=dg.in_process_executor)
