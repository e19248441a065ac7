"""segflow: validated, scored, named customer segments for e-mail campaigns.

Customer data never phones home: every process that imports this package switches off the
usage telemetry of the libraries it drives (a deployment may still set these explicitly).

Customer data is its owner's only: every process that imports this package creates files and
folders that group and others cannot read, and so do the processes it starts (ml/privacy/permissions.py).
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

OWNER_ONLY_UMASK = 0o077
"""No permission for group and others on what is created; a stricter umask in force stays."""
os.umask(os.umask(OWNER_ONLY_UMASK) | OWNER_ONLY_UMASK)

# Passwords and tokens never reach a log line: every log record this process creates passes
# through the one masking rule (ml/privacy/secret_masking.py).
from ml.privacy.secret_masking import install_log_masking  # noqa: E402

install_log_masking()
