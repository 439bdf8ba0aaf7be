"""The one error base of passion-deploy.

Every refusal the project makes on purpose (a bad file, option, request or machine) is a
PassionError: one sentence, naming the file where there is one. The CLIs catch PassionError and
OSError in one place and print the sentence; anything else is a bug and keeps its traceback.
Subclasses say which stage refused (CheckpointError, ArtifactError, ...) for callers that care.
"""
from __future__ import annotations

import os


class PassionError(ValueError):
    """A refusal in one sentence. `path` is the file or folder it is about, when there is one."""

    def __init__(self, message: str, path: str | os.PathLike | None = None):
        super().__init__(message)
        self.path = None if path is None else os.fspath(path)
