"""Airflow glue: what the DAGs share, the run's as-of date, the dbt project as tasks, the
decisions about retraining, the landing watcher, and the production stack's first user."""
