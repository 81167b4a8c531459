"""Every private MLflow detail pat_ray relies on, in one place.

Read from MLflow 3.17.2 (``mlflow/tracking/_tracking_service/utils.py``,
``mlflow/utils/autologging_utils/logging_and_warnings.py``); pyproject asks for
``mlflow>=3.17``, and ``tests/test_tracking.py`` fails naming the missing piece when an installed
MLflow no longer has it. Everything else in pat_ray uses MLflow's public API.

Why it is needed: MLflow's model logging (``mlflow.pytorch.log_model``, which creates the
logged-model entity and registers the model) works only against the process-wide tracking URI.
pat_ray logs into the store its config names and must leave the user's process as it found it,
so the URI is swapped for the duration of that one call and restored after. Likewise MLflow's
own lines (its loggers and ``eprint``, e.g. "Creating initial MLflow database tables...",
"Successfully registered model") all go to one stream, which is muted around pat_ray's calls
and set back as it was.
"""

from __future__ import annotations

from contextlib import AbstractContextManager

MLFLOW_VERSION_READ = "3.17"


def using_tracking_uri(uri: str) -> AbstractContextManager[None]:
    """MLflow's fluent calls use ``uri`` inside the block; the caller's URI (and the
    ``MLFLOW_TRACKING_URI`` MLflow mirrors it in) comes back after."""
    from mlflow.tracking._tracking_service.utils import _use_tracking_uri

    return _use_tracking_uri(uri)


def muted() -> AbstractContextManager[object]:
    """MLflow's console output off inside the block: the stream every MLflow logger and
    ``eprint`` write to is disabled through MLflow's own counter of such blocks, so a block that
    MLflow opens and closes inside (model logging does) does not turn it back on; as it was after."""
    from mlflow.utils.autologging_utils import MlflowEventsAndWarningsBehaviorGlobally

    return MlflowEventsAndWarningsBehaviorGlobally(
        disable_event_logs=True, disable_warnings=False, reroute_warnings=False
    )
