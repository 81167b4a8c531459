"""The files a run folder holds, by name.

Without torch, so the command line can list runs and find what to resume or export before
it imports anything that trains."""

from __future__ import annotations

LAST = "last.pt"  # the checkpoint of the last finished epoch
PREVIOUS = "previous.pt"  # the one before, kept while LAST is replaced
HISTORY = "history.json"  # every finished epoch's record
CONFIG = "config.yaml"  # the validated config the run was started with (overrides merged)
STATUS = "status.json"  # written when a run ends: finished / failed / interrupted, and its numbers
