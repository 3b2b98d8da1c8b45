"""Publish as a device itself (its own broker account and client id), with mosquitto_pub."""

from __future__ import annotations

import subprocess

from support import mosquitto

from control.stack import LocalStack
from safecity.registry import Device


def publish_as(stack: LocalStack, device: Device, topic: str, *payloads: str, qos: int = 1) -> str:
    """mosquitto_pub with the device's own account, QoS 1 (or `qos`), one message per
    line; stderr."""
    login = mosquitto("mosquitto_pub", stack, device.id, client_id=device.id)
    result = subprocess.run(
        [*login, "-q", str(qos), "-t", topic, "-l"],
        input="\n".join(payloads) + "\n",
        capture_output=True,
        text=True,
        timeout=30,
    )
    return result.stderr
