"""A notifier for the tests: appends each rendered message to a JSON-lines file (as any Airflow notifier would send)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from airflow.sdk import BaseNotifier


class RecordingNotifier(BaseNotifier):
    """Records ``subject`` and ``text`` (both templated) to ``path``."""

    template_fields = ("subject", "text")

    def __init__(self, path: str, subject: str, text: str) -> None:
        super().__init__()
        self.path, self.subject, self.text = path, subject, text

    def notify(self, context: Any) -> None:
        with Path(self.path).open("a") as out:
            out.write(json.dumps({"subject": self.subject, "text": self.text}) + "\n")
