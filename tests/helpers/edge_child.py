"""An edge-agent process for kill -9 tests: `fill` a spool offline, or `flush` it to the broker.

    python tests/helpers/edge_child.py fill|flush --spool DIR --host H --port P
        --secrets FILE --count N --devices D --start ISO

`fill` submits the readings of `ledgerpub.good_readings(count, devices, start)` to
agents that never connect (everything lands in the spools) and exits. `flush`
connects them, sends and waits until every reading is confirmed by the platform,
printing `flushed` and exiting 0 (exit 1 if it could not within the drain bound).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from datetime import datetime
from pathlib import Path

from ledgerpub import good_readings

from edge.agent import DeviceAgent, Envelope
from edge.settings import EdgeSettings
from safecity import topics
from safecity.registry import default_city
from safecity.settings import MqttSettings


async def main(args: argparse.Namespace, secrets: dict[str, str]) -> int:
    city = default_city()
    messages = good_readings(
        city, args.count, devices=args.devices, start=datetime.fromisoformat(args.start)
    )
    settings = EdgeSettings(
        spool_dir=Path(args.spool),
        max_inflight=50,
        ack_window=100,
        ack_timeout=3.0,
        backoff_min=0.1,
        backoff_max=1.0,
    )
    agents: dict[str, DeviceAgent] = {}
    for message in messages:
        device = message.device
        if device.id not in agents:
            agents[device.id] = DeviceAgent(
                device.id,
                MqttSettings(host=args.host, port=args.port, connect_timeout=2.0),
                settings,
                lambda envelope, code: None,
                password=secrets[device.id],
                ack_topic=topics.ack_topic(city.id, device.district, device.kind, device.id),
            )
    if args.mode == "fill":
        for message in messages:
            agents[message.device.id].submit(
                Envelope(message.topic, message.payload, None, seq=message.seq)
            )
        await asyncio.gather(*(agent.close(0) for agent in agents.values()))
        print("filled", sum(a.stats.left_buffered for a in agents.values()), flush=True)
        return 0
    for agent in agents.values():
        agent.start()
    await asyncio.gather(*(agent.close(60) for agent in agents.values()))
    left = sum(agent.stats.left_buffered for agent in agents.values())
    print("flushed" if left == 0 else f"left {left}", flush=True)
    return 0 if left == 0 else 1


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("mode", choices=("fill", "flush"))
    for name in ("spool", "host", "secrets", "start"):
        parser.add_argument(f"--{name}", required=True)
    for name in ("port", "count", "devices"):
        parser.add_argument(f"--{name}", type=int, required=True)
    arguments = parser.parse_args()
    sys.exit(asyncio.run(main(arguments, json.loads(Path(arguments.secrets).read_text()))))
