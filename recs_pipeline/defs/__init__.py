"""Thin Dagster adapters over the pure packages (data, warehouse, feast, models), grouped by concept."""
