"""segflow: validated, scored, named customer segments for e-mail campaigns.

Customer data never phones home: every process that imports this package switches off the
usage telemetry of the libraries it drives (a deployment may still set these explicitly).
"""

import os

for _name, _value in {
    "DO_NOT_TRACK": "true",
    "MLFLOW_DISABLE_TELEMETRY": "true",
    # Download progress bars only clutter task logs.
    "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false",
    "GX_ANALYTICS_ENABLED": "false",
    "DBT_SEND_ANONYMOUS_USAGE_STATS": "false",
    "AIRFLOW__COSMOS__ENABLE_TELEMETRY": "False",
}.items():
    os.environ.setdefault(_name, _value)
