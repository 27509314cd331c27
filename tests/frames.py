"""Small frames in the event contract for tests that build their data by hand."""

from datetime import datetime

import polars as pl

from recs_pipeline.data.contract import EVENT_TYPE, ITEM_ID, SESSION_ID, TS, USER_ID


def events_frame(rows: list[tuple[str, str, str, datetime, str | None]]) -> pl.DataFrame:
    """Events from (user_id, item_id, event_type, ts, session_id) tuples."""
    return pl.DataFrame(
        rows,
        schema={
            USER_ID: pl.String,
            ITEM_ID: pl.String,
            EVENT_TYPE: pl.String,
            TS: pl.Datetime("us", "UTC"),
            SESSION_ID: pl.String,
        },
        orient="row",
    )
