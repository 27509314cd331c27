"""DuckDB: connections, SQL loaded from sql/, exactly-once ingestion and point-in-time feature snapshots."""
