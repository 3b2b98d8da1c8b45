"""Test launcher: a service's normal entry point with a stage that raises on chosen messages.

`python tests/helpers/poison_service.py STAGE MARKER SERVICE [args...]` installs a
`safecity.quarantine.STAGE_HOOKS` hook that raises `RuntimeError` whenever stage STAGE
(the ingest's `validate` or `store`, the alerts' `evaluate`) handles a message whose
payload contains MARKER, then runs `safecity SERVICE`.
"""

from __future__ import annotations

import sys

from control.cli import main
from safecity import quarantine
from safecity.mqtt import Incoming


def install_poison(stage: str, marker: bytes) -> None:
    """Make `stage` raise on every message whose payload holds `marker`."""

    def hook(at: str, message: Incoming) -> None:
        if at == stage and marker in message.payload:
            raise RuntimeError(f"fault injection: {stage} refuses this message")

    quarantine.STAGE_HOOKS.append(hook)


if __name__ == "__main__":
    install_poison(sys.argv[1], sys.argv[2].encode())
    sys.exit(main(sys.argv[3:]))
