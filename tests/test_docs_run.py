"""The docs run: every command block of README.md, docs/*.md and the folders' READMEs is
executed against one running stack, and must exit 0 and show what its doc says.

The stack is `safecity run --cities tashkent samarkand --region` (two cities and a
regional instance they federate to, a 20 s federation interval) on free ports, in a
temp directory that mirrors the checkout (its folders linked in, `var/stack` its own),
so the blocks' relative paths (`var/stack/...`, `broker/mosquitto.conf`, `.venv/bin/...`)
work as written. The ports the docs name (8000, 8001, 1883, 8883, 8086, 9101, 9102)
are replaced by the stack's (`docblocks.Ports.mapping`), `sck_...` by the run's API key;
`OPERATOR_KEY` and `SAFECITY_API_KEY` are in the environment. Shell blocks run under
`bash -e -o pipefail` in that directory; a python block runs with the python blocks
before it in the same doc (they build on each other, as a reader's session does).
A block marked `<!-- docs-test: skip reason="..." -->` is counted, not run (the count
and reasons are printed at the end of the session); see tests/helpers/docblocks.py for
`expect`, `stop-after` and `timeout`.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from docblocks import (
    Block,
    DirectiveError,
    Ports,
    all_blocks,
    blocks,
    localise,
    parse_directive,
)
from hypothesis import given
from hypothesis import strategies as st
from support import wait_for

from control.processes import free_port

ROOT = Path(__file__).resolve().parent.parent
# The checkout's own state and tools' caches stay out of the mirrored directory.
NOT_LINKED = {"var", ".git", ".env", ".pytest_cache", ".mypy_cache", ".ruff_cache", "build"}
DEFAULT_TIMEOUT = 60.0
START_TIMEOUT = 180.0
STDBUF = Path("/usr/libexec/coreutils/libstdbuf.so")


ALL = all_blocks(ROOT)
RUN = [b for b in ALL if not b.skipped]


@dataclass
class DocsStack:
    """The running stack the blocks talk to."""

    work: Path
    ports: Ports
    key: str
    env: dict[str, str]


def _mirror(work: Path) -> None:
    """Link the checkout's top-level entries into `work` (its own `var/` aside)."""
    for entry in ROOT.iterdir():
        if entry.name not in NOT_LINKED:
            (work / entry.name).symlink_to(entry)
    (work / "var").mkdir()


def _env(ports: Ports) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SAFECITY_")}
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env["SAFECITY_INGEST_METRICS_PORT"] = str(ports.ingest_metrics)
    env["SAFECITY_ALERTS_METRICS_PORT"] = str(ports.alerts_metrics)
    env["SAFECITY_NOTIFY_METRICS_PORT"] = "0"
    env["SAFECITY_ROLLUP_METRICS_PORT"] = "0"
    return env


def _wait_banner(proc: subprocess.Popen[bytes], out: Path) -> str:
    """The API key from the run's banner; fails with the run's output if it dies first."""

    def key() -> str | None:
        text = out.read_text(encoding="utf-8", errors="replace")
        match = re.search(r"SAFECITY_API_KEY=(\S+)", text)
        if match and "Press Ctrl-C to stop." in text:
            return match.group(1)
        if proc.poll() is not None:
            pytest.fail(f"safecity run exited with {proc.returncode}:\n{text[-4000:]}")
        return None

    try:
        found: str = wait_for(key, START_TIMEOUT, "the run's banner", interval=0.5)
    except AssertionError:
        pytest.fail(f"safecity run not ready in {START_TIMEOUT}s:\n{out.read_text()[-4000:]}")
    return found


@pytest.fixture(scope="module")
def docs_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DocsStack]:
    """Two cities and a region, run as a reader runs them, stopped afterwards."""
    work = tmp_path_factory.mktemp("docsrun")
    _mirror(work)
    ports = Ports(*(free_port() for _ in range(7)))
    argv = [sys.executable, "-m", "control", "run", "--cities", "tashkent", "samarkand"]
    argv += ["--region", "--federation-interval", "20", "--api-port", str(ports.api)]
    argv += ["--region-api-port", str(ports.region_api), "--mqtt-port", str(ports.mqtt)]
    argv += ["--mqtt-tls-port", str(ports.mqtt_tls), "--influx-port", str(ports.influx)]
    env = _env(ports)
    out = work / "var" / "run.out"
    with out.open("wb") as sink:
        proc = subprocess.Popen(
            argv, cwd=work, env=env, stdout=sink, stderr=subprocess.STDOUT, start_new_session=True
        )
    try:
        key = _wait_banner(proc, out)
        block_env = {k: v for k, v in env.items() if not k.startswith("SAFECITY_")}
        block_env.update(SAFECITY_API_KEY=key, OPERATOR_KEY=key)
        if STDBUF.exists():
            # Line-buffered output, as in a reader's terminal: what a block that runs
            # until Ctrl-C printed (mosquitto_sub's messages) is not lost in a buffer.
            block_env.update(LD_PRELOAD=str(STDBUF), _STDBUF_O="L")
        yield DocsStack(work, ports, key, block_env)
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def _script(block: Block, stack: DocsStack) -> tuple[list[str], str]:
    """The command that runs the block, and the code as it runs here."""
    values = {"sck_...": stack.key}
    code = localise(block.code, stack.ports, values)
    name = re.sub(r"[^A-Za-z0-9]+", "_", block.where)
    if block.language == "python":
        before = [
            localise(b.code, stack.ports, values)
            for b in ALL
            if b.doc == block.doc and b.language == "python" and b.line < block.line
            if not b.skipped
        ]
        code = "\n".join([*before, code])
        path = stack.work / f"_{name}.py"
        path.write_text(code, encoding="utf-8")
        return [sys.executable, str(path)], code
    path = stack.work / f"_{name}.sh"
    path.write_text(code, encoding="utf-8")
    return ["bash", "-e", "-o", "pipefail", str(path)], code


def _default_sigint() -> None:
    """In the block's process: Ctrl-C as in a reader's terminal, even when this test was
    started with SIGINT ignored (a command started with `&` by a script): an ignored
    signal stays ignored across exec, and `curl -N` would then wait for SIGKILL."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


class Output:
    """A process's output, read on a thread as it comes."""

    def __init__(self, proc: subprocess.Popen[bytes]) -> None:
        assert proc.stdout is not None
        self.chunks: list[bytes] = []
        stream = proc.stdout
        self.reader = threading.Thread(
            target=lambda: self.chunks.extend(iter(lambda: stream.read1(65536), b"")),
            daemon=True,
        )
        self.reader.start()

    def text(self) -> str:
        """What it printed so far."""
        return b"".join(self.chunks).decode(errors="replace")


def _wait(proc: subprocess.Popen[bytes], out: Output, limit: float, expect: str | None) -> bool:
    """Whether it exited by itself within `limit` seconds; with `expect`, stop waiting as
    soon as its output shows what the block's doc says."""
    deadline = time.monotonic() + limit
    while proc.poll() is None and time.monotonic() < deadline:
        if expect is not None and re.search(expect, out.text(), re.MULTILINE):
            break
        out.reader.join(0.2)
    return proc.poll() is not None


def run_block(block: Block, stack: DocsStack) -> tuple[int | None, str, str]:
    """(exit status, None when stopped as marked; output; the code run). A block marked
    `stop-after` is stopped (Ctrl-C) after that many seconds, or as soon as its output
    shows what its `expect` asks."""
    argv, code = _script(block, stack)
    stop_after = block.options.get("stop-after")
    limit = float(stop_after or block.options.get("timeout") or DEFAULT_TIMEOUT)
    proc = subprocess.Popen(
        argv,
        cwd=stack.work,
        env=stack.env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        start_new_session=True,
        preexec_fn=_default_sigint,
    )
    out = Output(proc)
    status: int | None = None
    if _wait(proc, out, limit, block.options.get("expect") if stop_after else None):
        status = proc.returncode
    else:
        # Ctrl-C, as a reader stops it (mosquitto_sub flushes what it printed).
        os.killpg(proc.pid, signal.SIGINT)
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    out.reader.join(15)
    return status, out.text(), code


@pytest.mark.parametrize("block", RUN, ids=lambda b: b.where)
def test_doc_block_runs(block: Block, docs_stack: DocsStack) -> None:
    status, output, code = run_block(block, docs_stack)
    report = f"{block.where}\n--- as run ---\n{code}\n--- output ---\n{output[-4000:]}"
    if status is None:
        assert "stop-after" in block.options, f"timed out after {DEFAULT_TIMEOUT}s: {report}"
    else:
        assert status == 0, f"exit status {status}: {report}"
    expect = block.options.get("expect")
    if expect is not None:
        assert re.search(expect, output, re.MULTILINE), f"no match for {expect!r}: {report}"


def test_every_marked_block_says_why() -> None:
    marked = [b for b in ALL if b.skipped]
    assert all(b.options["reason"].strip() for b in marked)
    assert RUN, "no command block runs"


def test_blocks_and_their_directives_are_read(tmp_path: Path) -> None:
    doc = tmp_path / "x.md"
    doc.write_text(
        'Text\n\n<!-- docs-test: skip reason="needs a \\"server\\"" -->\n```sh\nmake run\n```\n'
        '\n```json\n{}\n```\n\n<!-- docs-test: stop-after=5\n  expect="a b" -->\n\n'
        "  ```python\n  print(1)\n  ```\n```sh\nls\n```\n",
        encoding="utf-8",
    )
    found = blocks(doc, tmp_path)
    assert [(b.line, b.language, b.code) for b in found] == [
        (4, "sh", "make run\n"),
        (15, "python", "print(1)\n"),
        (18, "sh", "ls\n"),
    ]
    assert found[0].options == {"skip": "", "reason": 'needs a "server"'}
    assert found[1].options == {"stop-after": "5", "expect": "a b"}
    assert found[2].options == {}


@pytest.mark.parametrize(
    "text", ["skip", 'skip reason=""', "frobnicate=1", 'expect="open'], ids=str
)
def test_a_bad_directive_is_refused(text: str) -> None:
    with pytest.raises(DirectiveError):
        parse_directive(text)


@given(st.text(alphabet=st.characters(blacklist_characters='"\\', codec="utf-8"), max_size=40))
def test_a_quoted_value_reads_back(value: str) -> None:
    assert parse_directive(f'expect="{value}" timeout=3') == {"expect": value, "timeout": "3"}


def test_documented_ports_become_the_stack_ports() -> None:
    ports = Ports(18000, 18001, 11883, 18883, 18086, 19101, 19102)
    code = (
        "curl http://127.0.0.1:8000/x http://localhost:8001/ -p 1883 --port 8883 "
        "127.0.0.1:9999 sck_... 8000"
    )
    assert localise(code, ports, {"sck_...": "sck_k"}) == (
        "curl http://127.0.0.1:18000/x http://localhost:18001/ -p 11883 --port 18883 "
        "127.0.0.1:9999 sck_k 8000"
    )
