"""Ingestion: landing files read under the data contract into the warehouse's `raw` tables."""
