"""Airflow glue: what the DAGs share, the decisions their tasks make, the landing watcher."""
