"""The candidate sources' names: one tuple, importable without numpy or polars (settings read it).

In the ranker's column order (sorted names, the merge's order); ``retrieval.retrieve`` proposes from
each, and the ranker-feature contract (``ranker_features.SOURCES``), training, serving and the
settings all use this tuple.
"""

SOURCES: tuple[str, ...] = ("als", "catpop", "content", "covis", "popular", "recent", "trending", "usercf")
