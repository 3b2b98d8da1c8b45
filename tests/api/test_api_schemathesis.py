"""schemathesis with every check (positive and negative data) over the running API: the
OpenAPI document says exactly what the server does. Bounded in examples, derandomized."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import hypothesis
import schemathesis
from api_seed import event, reading, write
from schemathesis import GenerationMode
from schemathesis.checks import CHECKS, ignored_auth

from api.apikeys import KeyStore
from api.settings import ApiSettings
from control.stack import LocalStack
from safecity import incidents as inc
from safecity.influx import InfluxClient
from safecity.registry import default_city
from safecity.settings import InfluxSettings

CITY = default_city()
CAM = CITY.select(kind="cctv")[0]
NOW = datetime.now(UTC).replace(microsecond=0)
EXAMPLES = 12


async def _incident(settings: InfluxSettings) -> None:
    client = InfluxClient(settings)
    try:
        await client.ensure_database()
        await inc.IncidentStore(client).open(
            inc.open_incident(
                city=CITY.id,
                district=CAM.district,
                rule_id="intrusion",
                rule_type="event",
                severity="high",
                place=CAM.district,
                devices=[CAM.id],
                opened_at=NOW - timedelta(minutes=5),
                value=None,
                message="intrusion",
                event="intrusion",
            )
        )
    finally:
        await client.close()


def _points() -> list[Any]:
    points = [
        reading(CITY, d, NOW - timedelta(minutes=m), m, laeq=50.0 + m, lamax=70.0, la90=40.0)
        for d in CITY.select(kind="noise")[:4]
        for m in range(10)
    ]
    points += [
        event(CITY, CAM, NOW - timedelta(minutes=m), m, "intrusion", "high", zone="z")
        for m in range(5)
    ]
    return points


def _runner(
    operation: Any,
    mode: GenerationMode,
    http: httpx.Client,
    base_url: str,
    auth: dict[str, str],
    failures: dict[str, str],
    statuses: dict[int, int],
) -> Callable[[], None]:
    checks = [c for c in CHECKS.get_all() if c is not ignored_auth]

    @hypothesis.settings(
        max_examples=EXAMPLES,
        deadline=None,
        derandomize=True,
        database=None,
        suppress_health_check=list(hypothesis.HealthCheck),
        phases=[hypothesis.Phase.explicit, hypothesis.Phase.generate],
    )
    @hypothesis.given(case=operation.as_strategy(generation_mode=mode, headers=auth))
    def run(case: Any) -> None:
        kw = case.as_transport_kwargs(base_url=base_url)
        response = http.request(
            kw["method"],
            kw["url"],
            params=kw.get("params"),
            headers=kw.get("headers"),
            content=kw.get("content"),
            json=kw.get("json"),
        )
        statuses[response.status_code] = statuses.get(response.status_code, 0) + 1
        try:
            case.validate_response(response, checks=checks)
        except (Exception, BaseExceptionGroup) as exc:  # collect every failure, report all
            key = f"{mode.value} {case.method} {case.path}: {type(exc).__name__}"
            failures.setdefault(key, f"{exc}"[:700])

    return run  # type: ignore[no-any-return]


def test_schemathesis_every_check_finds_nothing(
    stack: LocalStack, influx_db: str, start_api: Callable[..., Any], tmp_path: Path
) -> None:
    influx = InfluxSettings(url=stack.influx_url, database=influx_db)
    asyncio.run(_incident(influx))
    write(ApiSettings(influx=influx), _points())
    keys_file = tmp_path / "keys.json"
    _, admin = KeyStore(keys_file).create("schemathesis", ("read", "operate", "admin"))
    api = start_api(
        influx_db,
        SAFECITY_API_KEYS_FILE=str(keys_file),
        SAFECITY_RATE_LIMIT_RPS="100000",
        SAFECITY_RATE_LIMIT_BURST="100000",
    )
    document = httpx.get(f"{api.url}/openapi.json", timeout=10).json()
    schema = schemathesis.openapi.from_dict(document)
    assert len(list(CHECKS.get_all())) >= 14
    failures: dict[str, str] = {}
    statuses: dict[int, int] = {}
    negatives_impossible: list[str] = []
    # The key both ways: X-API-Key, and as a bearer token for Grafana's intake.
    auth = {"X-API-Key": admin, "Authorization": f"Bearer {admin}"}
    with httpx.Client(timeout=30) as http:
        for result in schema.include(path_regex="^(?!/v1/stream)").get_all_operations():
            for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
                run = _runner(result.ok(), mode, http, api.url, auth, failures, statuses)
                try:
                    run()
                except hypothesis.errors.Unsatisfiable:
                    # Nothing to make invalid (no parameters, no body): only positive data.
                    assert mode is GenerationMode.NEGATIVE
                    negatives_impossible.append(result.ok().label)
    # `ignored_auth` re-sends through schemathesis' requests transport, which the shared
    # virtualenv's urllib3-future breaks: the same probe, sent here over httpx.
    for path, ops in document["paths"].items():
        concrete = path.format(
            city_id=CITY.id,
            district_id=CAM.district,
            device_id=CAM.id,
            incident_id="inc-0123456789abcdef0123",
            token="not.signed",
        )
        for method in ops:
            for headers in ({}, {"X-API-Key": "sck_00000000_" + "A" * 43}):
                r = httpx.request(method, api.url + concrete, headers=headers, timeout=30)
                if path.startswith("/v1/ack/"):  # the signed token is the credential
                    assert 400 <= r.status_code < 500, (method, path, r.status_code)
                elif path not in ("/healthz", "/readyz"):
                    assert r.status_code == 401, (method, path, headers, r.status_code)
    assert failures == {}, "\n\n".join(f"{k}\n{v}" for k, v in failures.items())
    assert not [s for s in statuses if s >= 500], statuses
    assert statuses.get(200, 0) > 20, statuses
    assert len(negatives_impossible) < 6, negatives_impossible
