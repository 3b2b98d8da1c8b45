"""Devices over TLS: what TLS and mutual TLS cost per message and per connection, beside plain MQTT.

One run, two fresh local Mosquitto brokers (the platform's authenticated config):
one with the plain loopback listener and a TLS listener (server verification, device
passwords), one whose TLS listener requires a per-device client certificate (mutual
TLS, CRL checked). The same fleet (the default city's devices as edge agents, one
process, one event loop) runs over each link:

- per message: every device publishes its share of the same payloads at QoS 1, each
  PUBACK tracked; msg/s, and CPU microseconds per message of this process and of the
  broker (CPU is what TLS adds; wall-clock rates on a shared 2-core box mostly show
  the neighbours' load);
- per connection: all devices connect at once (a fleet reconnecting after a broker
  restart); wall time until the last one is connected, and the CPU milliseconds per
  connection of this process and of the broker (both sides of each handshake).

Both run `--rounds` times, the links interleaved; the medians are printed.

Usage: ``python -m benchmarks.tls [--messages N] [--rounds R]``.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import socket
import statistics
import subprocess
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

from broker import certs
from control.stack import Mosquitto
from edge.agent import DeviceAgent, Envelope
from edge.settings import EdgeSettings
from safecity import registry
from safecity.mqtt import FleetClient
from safecity.mqtt.fleet import tls_context
from safecity.settings import MqttSettings
from safecity.topics import telemetry_topic

PAYLOAD = (
    b'{"ts":"2026-01-15T03:00:00.000Z","seq":%d,"values":{"laeq":55.2,"lamax":65.1,"la90":47.3}}'
)


def broker_cpu(broker: Mosquitto) -> float:
    """CPU seconds (user + system) the broker process has used so far."""
    fields = Path(f"/proc/{broker.pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class Link:
    """One way for the fleet to reach a broker: settings and per-device credentials."""

    def __init__(self, name: str, broker: Mosquitto, mqtt: MqttSettings, mutual: bool) -> None:
        self.name = name
        self.broker = broker
        self.mqtt = mqtt
        self.mutual = mutual

    def edge(self, spool: Path) -> EdgeSettings:
        """Edge settings: per-device certificates under mutual TLS."""
        return EdgeSettings(
            spool_dir=spool,
            max_inflight=100,
            drain_timeout=60.0,
            tls_client_dir=self.broker.client_certs_dir if self.mutual else None,
        )

    def password(self, device_id: str) -> str | None:
        """The device's secret, unless its certificate is its identity."""
        return None if self.mutual else self.broker.secret(device_id)

    def settings_for(self, device_id: str) -> MqttSettings:
        """The fleet client's settings for one device (its certificate under mutual TLS)."""
        if not self.mutual:
            return self.mqtt
        paths = certs.client_paths(self.broker.certs_dir, device_id)
        return self.mqtt.model_copy(update={"tls_cert": paths.cert, "tls_key": paths.key})


async def per_message(link: Link, devices: list[registry.Device], count: int, spool: Path):
    """msg/s of `count` QoS 1 publishes spread over the devices' edge agents."""
    city = registry.default_city().id
    accepted = 0

    def on_result(message: Envelope, code: int) -> None:
        nonlocal accepted
        accepted += code < 0x80

    agents = [
        DeviceAgent(d.id, link.mqtt, link.edge(spool), on_result, password=link.password(d.id))
        for d in devices
    ]
    topics = [telemetry_topic(city, d.district, d.kind, d.id) for d in devices]
    for agent in agents:
        agent.start()
    await asyncio.gather(*(a.client.wait_connected(60) for a in agents))
    t0 = time.perf_counter()
    cpu0 = time.process_time()
    bcpu0 = broker_cpu(link.broker)
    for n in range(count):
        i = n % len(agents)
        agent = agents[i]
        while agent.backlog >= 150:  # noqa: ASYNC110
            await asyncio.sleep(0)
        agent.submit(Envelope(topics[i], PAYLOAD % n))
        if n % 256 == 0:
            await asyncio.sleep(0)
    await asyncio.gather(*(a.close() for a in agents))
    elapsed = time.perf_counter() - t0
    cpu = time.process_time() - cpu0
    return accepted, elapsed, cpu, broker_cpu(link.broker) - bcpu0


async def per_connection(link: Link, devices: list[registry.Device], rounds: int):
    """[(wall s, client CPU s, connected, broker CPU s)] of `rounds` simultaneous connects."""
    out = []
    for _ in range(rounds):
        clients = [
            FleetClient(link.settings_for(d.id), d.id, username=d.id, password=link.password(d.id))
            for d in devices
        ]
        t0 = time.perf_counter()
        cpu0 = time.process_time()
        bcpu0 = broker_cpu(link.broker)
        for client in clients:
            client.start()
        ok = await asyncio.gather(*(c.wait_connected(120) for c in clients))
        elapsed, cpu = time.perf_counter() - t0, time.process_time() - cpu0
        out.append((elapsed, cpu, sum(ok), broker_cpu(link.broker) - bcpu0))
        await asyncio.gather(*(c.stop(2.0) for c in clients))
    return out


def _mosquitto_version() -> str:
    out = subprocess.run(["mosquitto", "-h"], capture_output=True, text=True).stdout
    return (out.splitlines() or ["Mosquitto"])[0].strip()


def main(argv: Sequence[str] | None = None) -> None:
    """Run plain, TLS and mutual TLS in one run; print conditions and a table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=30_000)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args(argv)
    devices = list(registry.default_city().devices)
    print("safecity TLS benchmark")
    print(
        f"  conditions: {platform.python_implementation()} {platform.python_version()}, "
        f"{os.cpu_count()} CPUs, loopback {_mosquitto_version()}, {len(devices)} devices "
        f"(edge agents, one process), {args.messages} messages of {len(PAYLOAD) + 3} B at "
        f"QoS 1, EC P-256 certificates; "
        f"load average {os.getloadavg()[0]:.2f}"
    )
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench-tls-") as tmp:
        base = Path(tmp)
        server = Mosquitto(base / "tls", certs_dir=base / "tls-certs", tls_port=0)
        mutual = Mosquitto(
            base / "mtls", certs_dir=base / "mtls-certs", tls_port=0, mutual_tls=True,
            device_certs=True,
        )  # fmt: skip
        with server, mutual:
            print(f"  negotiated: {_negotiated(server)}")
            links = [
                Link("plain MQTT (loopback listener)", server, _plain(server), False),
                Link("TLS (server verified, passwords)", server, _tls(server), False),
                Link("mutual TLS (device certificates)", mutual, _tls(mutual), True),
            ]
            # Interleaved rounds: a load change on this shared machine hits every link.
            measured: dict[str, list[tuple[int, float, float, float]]] = {k.name: [] for k in links}
            storms: dict[str, list[tuple[float, float, int, float]]] = {k.name: [] for k in links}
            for r in range(args.rounds):
                for n, link in enumerate(links):
                    measured[link.name].append(
                        asyncio.run(
                            per_message(link, devices, args.messages, base / f"spool-{r}-{n}")
                        )
                    )
                    storms[link.name].extend(asyncio.run(per_connection(link, devices, 1)))
            for link in links:
                runs = measured[link.name]
                median = sorted(runs, key=lambda m: m[0] / m[1])[len(runs) // 2]
                rows.append((link.name, *median, storms[link.name]))
    print(
        f"  {'link':34} {'msg/s':>7} {'CPU us/msg':>10} {'broker':>7}  "
        f"{'storm s':>7} {'CPU ms/conn':>11} {'broker':>7}  notes"
    )
    plain_msg = plain_conn = 0.0
    for name, accepted, elapsed, cpu, bcpu, storm in rows:
        wall = statistics.median(s[0] for s in storm)
        conn = statistics.median(s[1] for s in storm) / len(devices)
        bconn = statistics.median(s[3] for s in storm) / len(devices)
        per_msg = (cpu + bcpu) / accepted
        plain_msg = plain_msg or per_msg
        plain_conn = plain_conn or conn + bconn
        ok = accepted == args.messages and all(s[2] == len(devices) for s in storm)
        ok = ok and all(m[0] == args.messages for m in measured[name])
        print(
            f"  {name:34} {accepted / elapsed:7.0f} {1e6 * cpu / accepted:10.1f} "
            f"{1e6 * bcpu / accepted:7.1f}  {wall:7.2f} {1e3 * conn:11.2f} {1e3 * bconn:7.2f}  "
            f"{per_msg / plain_msg:.2f} x plain CPU/msg, {(conn + bconn) / plain_conn:.1f} x "
            f"plain CPU/conn, {'ok' if ok else 'LOSS'}"
        )


def _plain(broker: Mosquitto) -> MqttSettings:
    return MqttSettings(host=broker.host, port=broker.port)


def _negotiated(broker: Mosquitto) -> str:
    """The TLS version and cipher the broker's TLS listener agrees to with our context."""
    context = tls_context(_tls(broker))
    assert broker.tls_port is not None
    with (
        socket.create_connection((broker.host, broker.tls_port), timeout=10) as raw,
        context.wrap_socket(raw, server_hostname=broker.host) as sock,
    ):
        cipher = sock.cipher()
        return f"{sock.version()} {cipher[0] if cipher else '?'}"


def _tls(broker: Mosquitto) -> MqttSettings:
    assert broker.tls_port is not None
    assert broker.ca is not None
    return MqttSettings(host=broker.host, port=broker.tls_port, tls_ca=broker.ca.cert)


if __name__ == "__main__":
    main()
