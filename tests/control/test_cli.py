"""The `safecity` command line: city tooling, and one-line errors that name what is wrong."""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

import pytest

from control.cli import build_parser, main
from safecity import catalogue
from safecity.citygen import generate
from safecity.registry import load

SAFECITY_BIN = Path(sys.executable).parent / "safecity"


def _clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SAFECITY_")}
    env.update(extra)
    return env


@pytest.fixture(autouse=True)
def no_safecity_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    for key in list(os.environ):
        if key.startswith("SAFECITY_"):
            monkeypatch.delenv(key)
    monkeypatch.chdir(tmp_path)


def test_city_generate_writes_a_loadable_registry(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "almaty.jsonl"
    code = main(
        [
            "city",
            "generate",
            "--city",
            "almaty",
            "--devices",
            "40",
            "--seed",
            "3",
            "--out",
            str(out),
        ]
    )
    assert code == 0
    assert str(out) in capsys.readouterr().out
    city = load(out)
    assert city.id == "almaty"
    assert len(city.devices) == 40
    assert {d.kind for d in city.devices} == set(catalogue.KINDS)
    # Same flags, same file: the CLI is as deterministic as the generator.
    assert out.read_text(encoding="utf-8") == generate("almaty", 40, seed=3).dumps()


def test_city_generate_default_output_name(tmp_path: Path) -> None:
    assert (
        main(["city", "generate", "--city", "New Town", "--devices", "20", "--districts", "3"]) == 0
    )
    city = load(tmp_path / "new_town.jsonl")
    assert len(city.districts) == 3


def test_city_generate_makes_the_folder_or_says_why_not(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "cities" / "x.jsonl"
    assert main(["city", "generate", "--city", "x", "--devices", "20", "--out", str(out)]) == 0
    assert load(out).id == "x"
    blocked = tmp_path / "a-file"
    blocked.write_text("", encoding="utf-8")
    target = blocked / "y.jsonl"
    assert main(["city", "generate", "--city", "y", "--devices", "20", "--out", str(target)]) != 0
    err = capsys.readouterr().err
    assert f"cannot write {target}" in err and "Traceback" not in err


def test_city_generate_as_a_subprocess(tmp_path: Path) -> None:
    out = tmp_path / "bishkek.jsonl"
    result = subprocess.run(
        [
            str(SAFECITY_BIN),
            "city",
            "generate",
            "--city",
            "bishkek",
            "--devices",
            "30",
            "--seed",
            "3",
            "--out",
            str(out),
        ],
        capture_output=True,
        text=True,
        timeout=60,
        env=_clean_env(),
        cwd=tmp_path,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert load(out) == generate("bishkek", 30, seed=3)


def test_city_show_default(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["city", "show"]) == 0
    out = capsys.readouterr().out
    assert "Tashkent (tashkent)" in out
    assert "12 districts" in out
    assert "chilanzar" in out


def test_city_show_generated_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "d.jsonl"
    assert (
        main(["city", "generate", "--city", "dushanbe", "--devices", "25", "--out", str(out)]) == 0
    )
    capsys.readouterr()
    assert main(["city", "show", "--registry", str(out)]) == 0
    assert "Dushanbe (dushanbe)" in capsys.readouterr().out


def test_city_show_bad_file_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    good = generate("tashkent", 20, seed=1).dumps().splitlines()
    # Line 15 (a device) names a district that does not exist.
    good[14] = good[14].replace('"district":"', '"district":"atlantis', 1)
    bad = tmp_path / "bad.jsonl"
    bad.write_text("\n".join(good) + "\n", encoding="utf-8")
    assert main(["city", "show", "--registry", str(bad)]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    lines = captured.err.splitlines()
    assert len(lines) == 1, captured.err
    assert lines[0].startswith(f"safecity: error: {bad}:15: field 'district'"), lines[0]


def test_city_show_missing_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["city", "show", "--registry", str(tmp_path / "absent.jsonl")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert err.startswith("safecity: error: cannot read registry")


def test_city_show_bad_file_as_a_subprocess(tmp_path: Path) -> None:
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"type": "city", "id": "x"}\n', encoding="utf-8")
    result = subprocess.run(
        [sys.executable, "-m", "control", "city", "show", "--registry", str(bad)],
        capture_output=True,
        text=True,
        timeout=60,
        env=_clean_env(),
        cwd=tmp_path,
        check=False,
    )
    assert result.returncode == 2
    assert result.stdout == ""
    assert result.stderr.count("\n") == 1, result.stderr
    assert result.stderr.startswith(f"safecity: error: {bad}:1: field '"), result.stderr


@pytest.mark.parametrize(
    ("argv", "flag"),
    [
        (["city", "generate", "--city", "x", "--devices", "abc"], "--devices"),
        (["city", "generate", "--city", "x", "--devices", "0"], "--devices"),
        (["city", "generate", "--city", "x", "--seed", "s"], "--seed"),
        (["city", "generate", "--city", "x", "--districts", "-2"], "--districts"),
        (["city", "generate"], "--city"),
        (["simulate", "--speed", "-1"], "--speed"),
        (["simulate", "--speed", "0"], "--speed"),
        (["simulate", "--speed", "inf"], "--speed"),
        (["simulate", "--speed", "nan"], "--speed"),
        (["simulate", "--devices", "1.5"], "--devices"),
        (["simulate", "--duration", "-3"], "--duration"),
        (["api", "--port", "70000"], "--port"),
        (["run", "--mqtt-port", "http"], "--mqtt-port"),
    ],
)
def test_bad_flags_exit_2_naming_the_flag(
    argv: list[str], flag: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as info:
        main(argv)
    assert info.value.code == 2
    last = capsys.readouterr().err.splitlines()[-1]
    assert last.startswith("safecity"), last
    assert "error:" in last
    assert flag in last, last


def test_no_command_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main([])
    assert info.value.code == 2
    assert "COMMAND" in capsys.readouterr().err


def test_invalid_env_var_names_the_variable() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "control", "ingest"],
        capture_output=True,
        text=True,
        timeout=30,
        env=_clean_env(SAFECITY_MQTT__PORT="abc"),
        check=False,
    )
    assert result.returncode == 2, result.stderr
    assert result.stderr.count("\n") == 1, result.stderr
    assert result.stderr.startswith("safecity: error: "), result.stderr
    assert "SAFECITY_MQTT__PORT" in result.stderr


@pytest.mark.parametrize(
    ("var", "value", "command"),
    [
        ("SAFECITY_MQTT__PORT", "0", "ingest"),
        ("SAFECITY_WORKER_ID", "Worker 1", "ingest"),
        ("SAFECITY_INFLUX__TIMEOUT", "-1", "api"),
        ("SAFECITY_SPEED", "0", "simulate"),
        ("SAFECITY_INFLUX__DATABASE", "Bad Name", "ingest"),
        ("SAFECITY_INFLUX__RETENTION_POLICY", "x;y", "api"),
    ],
)
def test_invalid_env_var_in_process(
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    var: str,
    value: str,
    command: str,
) -> None:
    monkeypatch.setenv(var, value)
    assert main([command]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1, err
    assert err.startswith("safecity: error: ")
    assert var in err, err


SERVICES = {"alerts", "api", "broker", "dashboards", "ingest", "notify", "rollups", "simulators"}


def _commands_of(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    """The `safecity` commands' own parsers, by name."""
    (sub,) = (a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return dict(sub.choices)


def test_help_lists_every_command_as_the_services_define_them() -> None:
    # Without loading a service, the top-level help is word for word the full parser's.
    assert build_parser(load=()).format_help() == build_parser().format_help()


def test_a_command_loads_only_its_own_service() -> None:
    probe = (
        "import sys\nfrom control.cli import build_parser\n"
        "build_parser(load=sys.argv[1:])\n"
        "print(' '.join(sorted({m.split('.')[0] for m in sys.modules})))"
    )

    def loaded(*commands: str) -> set[str]:
        done = subprocess.run(
            [sys.executable, "-c", probe, *commands],
            capture_output=True, text=True, timeout=60, check=True,
        )  # fmt: skip
        return set(done.stdout.split()) & SERVICES

    assert loaded() == set()
    assert loaded("alerts") == {"alerts"}
    assert loaded("deadletter") == {"ingest"}
    assert loaded("certs") == {"broker"}


FULL = _commands_of(build_parser())


@pytest.mark.parametrize("command", sorted(FULL))
def test_every_command_run_alone_has_its_whole_help(
    command: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as info:
        main([command, "--help"])
    assert info.value.code == 0
    # Its own parser, as the full one has it (not a bare stand-in).
    assert capsys.readouterr().out == FULL[command].format_help()
