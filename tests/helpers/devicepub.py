"""Publish as a device itself (its own broker account and client id), with mosquitto_pub."""

from __future__ import annotations

import subprocess

from control.stack import LocalStack
from safecity.registry import Device


def publish_as(stack: LocalStack, device: Device, topic: str, *payloads: str, qos: int = 1) -> str:
    """mosquitto_pub with the device's own account, QoS 1 (or `qos`), one message per
    line; stderr."""
    result = subprocess.run(
        ["mosquitto_pub", "-h", stack.mqtt_host, "-p", str(stack.mqtt_port), "-V", "mqttv5",
         "-u", device.id, "-P", stack.secret(device.id), "-i", device.id, "-q", str(qos),
         "-t", topic, "-l"],
        input="\n".join(payloads) + "\n", capture_output=True, text=True, timeout=30,
    )  # fmt: skip
    return result.stderr
