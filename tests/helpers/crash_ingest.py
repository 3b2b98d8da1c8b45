"""Test launcher: the normal ingest entry point with a crash hook on the write stage.

`python tests/helpers/crash_ingest.py N [ingest args...]` installs a hook that SIGKILLs
the worker after its Nth durable write, before the acks, then runs `safecity ingest`.
"""

from __future__ import annotations

import logging
import os
import signal
import sys

from control.cli import main
from ingest import batch


def install_crash_after_write(after: int) -> None:
    """SIGKILL this process once `after` batches are durable and none of them is acked."""

    def crash(durable_writes: int) -> None:
        if durable_writes >= after:
            logging.getLogger("safecity.ingest").warning(
                "fault injection: SIGKILL after durable write, before ack"
            )
            os.kill(os.getpid(), signal.SIGKILL)

    batch.AFTER_DURABLE.append(crash)


if __name__ == "__main__":
    install_crash_after_write(int(sys.argv[1]))
    sys.exit(main(["ingest", *sys.argv[2:]]))
