"""The platform's Prometheus alert rules and every service's /metrics, as Prometheus'
own tool sees them.

deploy/prometheus/safecity.rules.yml passes `promtool check rules`; its unit tests
(safecity.rules.test.yml) pass `promtool test rules`, and a rule broken on purpose fails
them; every rule reads a metric the services declare; the Kubernetes manifests carry
the same file. Then ingest, alerts, the API and the simulator run as real processes
with the simulated city flowing through them, and each one's /metrics, scraped over
HTTP, passes `promtool check metrics` (Prometheus' exposition linter).
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest
import yaml
from prometheus_client import REGISTRY
from support import account_env, wait_for

import alerts.metrics
import api.metrics
import ingest.metrics
import ingest.watermark
import safecity.retry
import simulators.outgoing
from control.stack import LocalStack, ManagedProcess, free_port, http_ok

ROOT = Path(__file__).resolve().parents[2]
RULES_DIR = ROOT / "deploy" / "prometheus"
RULES = RULES_DIR / "safecity.rules.yml"
RULES_TESTS = RULES_DIR / "safecity.rules.test.yml"
K8S = ROOT / "deploy" / "kubernetes"
# The metric modules of every service: importing them registers their metrics.
METRIC_MODULES = (alerts.metrics, api.metrics, ingest.metrics, ingest.watermark)
METRIC_MODULES += (safecity.retry, simulators.outgoing)
SUFFIXES = {"counter": ("_total", "_created"), "histogram": ("_bucket", "_sum", "_count")}


def promtool(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    """promtool ARGS (Debian's prometheus package), output captured."""
    found = shutil.which("promtool")
    assert found, "promtool missing: `make test` installs it (scripts/setup.sh --test)"
    return subprocess.run(
        [found, *args], input=stdin, capture_output=True, text=True, timeout=120, check=False
    )


def rules_of(text: str) -> list[dict[str, object]]:
    return [rule for group in yaml.safe_load(text)["groups"] for rule in group["rules"]]


def test_the_rules_pass_promtool_check_rules() -> None:
    checked = promtool("check", "rules", str(RULES))
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert f"SUCCESS: {len(rules_of(RULES.read_text()))} rules found" in checked.stdout


def test_the_rules_pass_their_promtool_unit_tests() -> None:
    tested = promtool("test", "rules", str(RULES_TESTS))
    assert tested.returncode == 0, tested.stdout + tested.stderr
    # Every alert of the file is exercised by at least one unit test.
    alerts_tested = set(re.findall(r"alertname: (\w+)", RULES_TESTS.read_text()))
    assert {str(r["alert"]) for r in rules_of(RULES.read_text())} == alerts_tested


def test_a_rule_broken_on_purpose_fails_its_unit_tests(tmp_path: Path) -> None:
    """Guard the unit tests: a threshold moved out of reach is caught."""
    text = RULES.read_text()
    threshold = "(rate(safecity_ingest_received_total[5m])) > 0.05"
    broken = text.replace(threshold, threshold.replace("0.05", "0.5"))
    assert broken != text
    (tmp_path / RULES.name).write_text(broken)
    shutil.copy(RULES_TESTS, tmp_path / RULES_TESTS.name)
    tested = promtool("test", "rules", str(tmp_path / RULES_TESTS.name))
    assert tested.returncode != 0
    assert "SafecityDeadLetterRateHigh" in tested.stdout + tested.stderr


def test_promtool_check_metrics_refuses_a_lint_problem() -> None:
    """Guard the linter: a counter without `_total` in a non-base unit is refused."""
    bad = "# HELP safecity_bad_ms A bad name.\n# TYPE safecity_bad_ms counter\nsafecity_bad_ms 1\n"
    linted = promtool("check", "metrics", stdin=bad)
    assert linted.returncode != 0
    assert 'counter metrics should have "_total" suffix' in linted.stdout + linted.stderr


def declared_names() -> set[str]:
    """Every sample name the services' metrics can expose."""
    names = set()
    for family in REGISTRY.collect():
        names.add(family.name)
        names.update(family.name + suffix for suffix in SUFFIXES.get(family.type, ()))
    return names


def test_every_rule_reads_a_metric_the_services_export() -> None:
    assert METRIC_MODULES
    declared = declared_names()
    for rule in rules_of(RULES.read_text()):
        read = set(re.findall(r"\bsafecity_[a-z0-9_]+", str(rule["expr"])))
        assert read, rule["alert"]
        assert read <= declared, f"{rule['alert']} reads undeclared metrics {read - declared}"


def test_the_kubernetes_manifests_carry_the_same_rules() -> None:
    overlays = sorted(p for p in (K8S / "overlays").iterdir() if p.is_dir())
    kubectl = shutil.which("kubectl") or str(Path(sys.executable).parent / "kubectl")
    for overlay in overlays:
        built = subprocess.run(
            [kubectl, "kustomize", str(overlay)],
            capture_output=True, text=True, timeout=120, check=False,
        )  # fmt: skip
        assert built.returncode == 0, built.stderr
        maps = [
            o
            for o in yaml.safe_load_all(built.stdout)
            if o
            and o["kind"] == "ConfigMap"
            and o["metadata"]["name"] == "safecity-prometheus-rules"
        ]
        assert len(maps) == 1, overlay.name
        assert maps[0]["data"] == {RULES.name: RULES.read_text()}, overlay.name


# --- every service's /metrics, live --------------------------------------------------


@pytest.fixture
def simulator(
    stack: LocalStack, influx_db: str, tmp_path: Path
) -> Iterator[Callable[[dict[str, str]], str]]:
    """Start `safecity simulate` with its /metrics served; returns its base URL."""
    started: list[ManagedProcess] = []

    def start(env: dict[str, str]) -> str:
        port = free_port()
        env = {**env, **account_env(stack, "simulator"), "SAFECITY_CLIENT_ID": "sim-promtool"}
        env["SAFECITY_SIMULATOR_METRICS_PORT"] = str(port)
        argv = [sys.executable, "-m", "control", "simulate", "--devices", "40", "--speed", "10"]
        proc = ManagedProcess("simulator", argv, tmp_path / "simulator.log", env=env)
        started.append(proc)
        proc.start()
        url = f"http://127.0.0.1:{port}"
        proc.wait_ready(http_ok(f"{url}/healthz"), timeout=30)
        return url

    yield start
    for proc in started:
        proc.stop(timeout=15)


def sample_value(text: str, name: str) -> float:
    return sum(float(v) for v in re.findall(rf"^{name}(?:{{[^}}]*}})? (\S+)$", text, re.M))


def scrape(url: str, headers: dict[str, str] | None = None) -> str:
    return httpx.get(f"{url}/metrics", headers=headers, timeout=10).text


def test_every_services_metrics_pass_promtool_check_metrics(
    influx_db: str,
    start_ingest: Callable[..., object],
    start_alerts: Callable[..., object],
    start_api: Callable[..., object],
    simulator: Callable[[dict[str, str]], str],
) -> None:
    ingest_proc = start_ingest(influx_db)
    alerts_proc = start_alerts(influx_db)
    api_proc = start_api(influx_db)
    sim_url = simulator(ingest_proc.env)  # type: ignore[attr-defined]
    ingest_url = ingest_proc.metrics_url  # type: ignore[attr-defined]
    alerts_url = alerts_proc.metrics_url  # type: ignore[attr-defined]
    api_url = api_proc.url  # type: ignore[attr-defined]
    # The city flows through every service, so their labelled series carry samples.
    wait_for(
        lambda: sample_value(scrape(ingest_url), "safecity_ingest_points_written_total") > 0,
        timeout=60, what="readings written by ingest",
    )  # fmt: skip
    wait_for(
        lambda: sample_value(scrape(alerts_url), "safecity_alerts_received_total") > 0,
        timeout=60, what="messages evaluated by alerts",
    )  # fmt: skip
    headers = api_proc.headers  # type: ignore[attr-defined]
    assert httpx.get(f"{api_url}/v1/devices?limit=5", headers=headers, timeout=10).is_success
    assert (
        httpx.get(f"{api_url}/v1/devices/nope/latest", headers=headers, timeout=10).status_code
        == 404
    )
    expected = {
        ingest_url: "safecity_ingest_e2e_lag_seconds_bucket",
        alerts_url: "safecity_alerts_received_total",
        api_url: "safecity_api_requests_total",
        sim_url: "safecity_sim_published_total",
    }
    for url, name in expected.items():
        text = scrape(url, headers if url == api_url else None)
        assert sample_value(text, name) > 0, f"{url}: no {name} yet"
        linted = promtool("check", "metrics", stdin=text)
        assert linted.returncode == 0 and not linted.stdout + linted.stderr, (
            f"{url}/metrics: {linted.stdout}{linted.stderr}"
        )
