"""Owner-only: what segflow writes under the data folder is readable by its owner only.

The data folder holds customer data in every form (warehouse, training sets, reports, exports,
the MLflow store), so its files are 0600 and its folders 0700, whichever process wrote them:

1. Every segflow process creates files owner-only: importing `ml` tightens the process umask
   to OWNER_ONLY_UMASK (ml/__init__.py), and so does every recipe of the Makefile. Whatever
   these processes start (dbt, `mlflow server`, `airflow standalone`, Airflow's task
   processes) inherits the umask.
2. The data folder is created 0700 (ml/warehouse/connection.py, and 1.).
3. A data folder an older segflow created readable by others is repaired once, at the first
   CLI command or warehouse opening that finds it so (`secure_data_dir`): group and other
   permissions are removed from everything below it that this user owns (not the shop's
   landing files, see `restrict_tree`). The check is one `stat` of the folder: a 0700 data
   folder already keeps everybody else out of all it holds.

Airflow's generated password file lies outside the data folder (in AIRFLOW_HOME) and is written
by Airflow's API server, which does not import segflow: the same check makes it 0600 when an
Airflow started outside the Makefile left it readable.
"""

from __future__ import annotations

import logging
import os
import stat
from pathlib import Path

from ml import OWNER_ONLY_UMASK
from ml.config import Settings

log = logging.getLogger(__name__)

GROUP_OR_OTHER = OWNER_ONLY_UMASK
"""The permission bits nothing under the data folder may have."""
AIRFLOW_PASSWORD_FILE = "simple_auth_manager_passwords.json.generated"


def is_owner_only(path: Path) -> bool:
    return not stat.S_IMODE(path.stat().st_mode) & GROUP_OR_OTHER


def restrict_tree(root: Path) -> int:
    """Remove group and other permissions from `root` and everything below it that this user
    owns. Returns how many paths were changed. Left as they are:
    - symbolic links, which are not followed either (a landing folder elsewhere that one points
      at is the shop's);
    - files with more than one name: a hard link (ml/ingest/landing.py, readable_path) shares the mode
      of the shop's landing file it names, which may lie outside the data folder;
    - what belongs to another user (a warning says how many)."""
    changed = 0
    not_mine = 0
    me = os.geteuid()
    for folder, subfolders, files in os.walk(root):
        names = subfolders + files
        paths = [os.path.join(folder, name) for name in names]
        for path in [folder, *paths] if folder == str(root) else paths:
            try:
                info = os.lstat(path)
            except FileNotFoundError:  # removed meanwhile
                continue
            loose = stat.S_IMODE(info.st_mode) & GROUP_OR_OTHER
            if not loose or stat.S_ISLNK(info.st_mode):
                continue
            if stat.S_ISREG(info.st_mode) and info.st_nlink > 1:
                continue
            if info.st_uid != me:
                not_mine += 1
                continue
            os.chmod(path, stat.S_IMODE(info.st_mode) & ~GROUP_OR_OTHER)
            changed += 1
    if not_mine:
        log.warning(
            "%d paths under %s belong to another user and stay readable by others: "
            "run segflow as the user who owns its data folder (docs/operations.md)",
            not_mine,
            root,
        )
    return changed


def secure_folder(folder: Path) -> None:
    """Make `folder` and what it holds owner-only if it exists and others may read it."""
    if not folder.is_dir() or is_owner_only(folder):
        return
    changed = restrict_tree(folder)
    log.warning(
        "%s was readable by other users (made by an older segflow, or by another program): "
        "%d files and folders are now readable by their owner only",
        folder,
        changed,
    )


def secure_data_dir(settings: Settings) -> None:
    """The one-time repair of a data folder (and Airflow password file) left readable by
    others; a cheap check when there is nothing to repair. Creates nothing."""
    secure_folder(settings.data_dir)
    passwords = settings.airflow_home / AIRFLOW_PASSWORD_FILE
    if passwords.is_file() and not passwords.is_symlink() and not is_owner_only(passwords):
        try:
            passwords.chmod(0o600)
        except PermissionError:
            log.warning("%s is readable by other users and belongs to another user", passwords)
            return
        log.warning("%s was readable by other users: it is now 0600", passwords)
