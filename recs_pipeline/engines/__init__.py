"""Engines beyond the single-node DuckDB warehouse: the same ``sql/`` feature files and feature repo on
Spark (docs/SCALE_OUT.md). Needs the ``spark`` extra (pyspark, sqlglot) and a Java 17+ runtime; nothing
in the pipeline imports this package.
"""
