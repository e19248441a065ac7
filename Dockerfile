# segflow's image, for every service of docker-compose.yml (the Airflow services and workers,
# the MLflow server): the project and exactly the dependencies of requirements.lock.
FROM python:3.11-slim-bookworm

# curl: the services' health checks.
RUN apt-get update \
    && apt-get install --yes --no-install-recommends curl \
    && rm -rf /var/lib/apt/lists/*

# The same uid as Airflow's official image; the folders that become named volumes belong to it,
# so a fresh volume does too. The data and artifact folders are its only (ml/privacy/permissions.py).
RUN useradd --uid 50000 --gid 0 --home-dir /opt/airflow --create-home segflow \
    && mkdir -p /opt/segflow /data /opt/airflow/logs /mlflow/artifacts \
    && chown segflow:0 /opt/segflow /data /opt/airflow/logs /mlflow/artifacts \
    && chmod 0700 /data /mlflow/artifacts

# Telemetry is switched off by docker-compose.yml's environment and by segflow itself
# (ml/__init__.py), not here.
ENV PYTHONUNBUFFERED=1 \
    VIRTUAL_ENV=/opt/segflow/.venv \
    PATH=/opt/segflow/.venv/bin:$PATH \
    AIRFLOW_HOME=/opt/airflow

USER segflow
WORKDIR /opt/segflow

# Dependencies first: this layer is rebuilt only when the lock changes.
COPY --chown=segflow:0 requirements.lock ./
RUN python -m venv .venv \
    && .venv/bin/pip install --no-cache-dir --quiet uv==0.13.9 \
    && .venv/bin/uv pip sync --compile-bytecode --python .venv/bin/python requirements.lock

COPY --chown=segflow:0 pyproject.toml README.md audiences.yml ./
COPY --chown=segflow:0 ml ml
COPY --chown=segflow:0 expectations expectations
COPY --chown=segflow:0 dags dags
COPY --chown=segflow:0 dbt_project dbt_project
# Editable, as `make setup` installs it: segflow finds dags/, dbt_project/ and audiences.yml
# next to its package. The dbt manifest Cosmos renders the DAG from is made here, once.
RUN .venv/bin/uv pip install --no-deps --python .venv/bin/python -e . \
    && SEGFLOW_DATA_DIR=/tmp/segflow-build segflow dbt parse --quiet \
    && rm -rf /tmp/segflow-build
