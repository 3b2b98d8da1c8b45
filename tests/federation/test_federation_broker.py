"""Federation broker tooling: the bridge section, the bridge and region accounts."""

from __future__ import annotations

import json
import stat
from pathlib import Path

import pytest

from broker.bridge import bridge_username, render_bridge
from broker.identity import CredentialStore, Role, validate_username
from control.cli import main
from safecity.errors import ConfigError

TEMPLATE = Path(__file__).resolve().parents[2] / "broker" / "mosquitto.conf"


def test_the_bridge_carries_only_the_cities_federation_topics(tmp_path: Path) -> None:
    lines = render_bridge(
        address="region.example:8883",
        cities=["tashkent", "samarkand"],
        cafile=tmp_path / "ca.crt",
        username="_bridge.tashkent",
        password="s3cret",
    )
    topics = [line for line in lines if line.startswith("topic ")]
    assert topics == [
        "topic safecity/v1/tashkent/_federation/# out 1",
        "topic safecity/v1/samarkand/_federation/# out 1",
    ]
    for line in (
        "address region.example:8883",
        f"bridge_cafile {tmp_path / 'ca.crt'}",
        "bridge_insecure false",
        "cleansession false",
        "local_cleansession false",
        "remote_username _bridge.tashkent",
        "notifications_local_only true",
    ):
        assert line in lines
    with pytest.raises(ConfigError, match="HOST:PORT"):
        render_bridge(address="region", cities=["x"], cafile=tmp_path, username="u", password="p")
    with pytest.raises(ConfigError, match="city"):
        render_bridge(address="h:1", cities=["#"], cafile=tmp_path, username="u", password="p")
    with pytest.raises(ConfigError, match="password"):
        render_bridge(address="h:1", cities=["x"], cafile=tmp_path, username="u", password="a b")


def test_bridge_and_region_accounts_have_only_their_rights(tmp_path: Path) -> None:
    ids = tmp_path / "identity"
    secrets_file = tmp_path / "bridge-secrets.json"
    code = main(
        [
            "devices",
            "provision",
            "--identity-dir",
            str(ids),
            "--bridge",
            "tashkent",
            "--service",
            "region",
            "--secrets-file",
            str(secrets_file),
        ]
    )
    assert code == 0
    store = CredentialStore(ids)
    account = store.accounts["_bridge.tashkent"]
    assert (account.role, account.city) == (Role.BRIDGE, "tashkent")
    assert "_region" in store.accounts
    # Only the bridge and the region accounts: no registry device was provisioned.
    assert {a.role for a in store.accounts.values()} == {Role.BRIDGE, Role.REGION, Role.ADMIN}
    config = json.loads(store.dynsec_file.read_text())
    roles = {r["rolename"]: r["acls"] for r in config["roles"]}
    clients = {c["username"]: c for c in config["clients"]}
    bridge_role = clients["_bridge.tashkent"]["roles"][0]["rolename"]
    assert {(a["acltype"], a["topic"]) for a in roles[bridge_role]} == {
        ("publishClientSend", "safecity/v1/tashkent/_federation/#")
    }
    reads = {a["topic"] for a in roles["region"] if a["acltype"] == "subscribePattern"}
    assert reads == {"safecity/v1/+/_federation/#", "$share/+/safecity/v1/+/_federation/#"}
    assert {a["topic"] for a in roles["federation"]} == {"safecity/v1/+/_federation/#"}

    out = tmp_path / "mosquitto.conf"
    argv = ["broker", "config", "--template", str(TEMPLATE), "--out", str(out)]
    argv += ["--bridge", "region.example:8883", "--bridge-city", "tashkent"]
    argv += ["--bridge-ca", str(tmp_path / "ca.crt"), "--bridge-secrets-file", str(secrets_file)]
    assert main(argv) == 0
    text = out.read_text()
    assert stat.S_IMODE(out.stat().st_mode) == 0o600  # it holds the bridge's password
    secret = json.loads(secrets_file.read_text())["_bridge.tashkent"]
    assert f"remote_password {secret}" in text
    assert text.count("\ntopic ") == 1
    assert "topic safecity/v1/tashkent/_federation/# out 1" in text
    assert text.index("allow_anonymous false") < text.index("connection federation-tashkent")
    # Several cities: one section each, each with its own account.
    assert (
        main(
            [
                "devices",
                "provision",
                "--identity-dir",
                str(ids),
                "--bridge",
                "samarkand",
                "--secrets-file",
                str(secrets_file),
            ]
        )
        == 0
    )
    both = tmp_path / "both.conf"
    assert main([*argv[:5], str(both), *argv[6:], "--bridge-city", "samarkand"]) == 0
    text = both.read_text()
    assert text.count("\nconnection ") == 2
    assert "remote_username _bridge.samarkand" in text
    assert "topic safecity/v1/samarkand/_federation/# out 1" in text
    # Without the account's secret nothing is written.
    (tmp_path / "empty.json").write_text("{}")
    argv[-1] = str(tmp_path / "empty.json")
    assert main([*argv[:-4], "--out", str(tmp_path / "other.conf"), *argv[-4:]]) == 2
    assert not (tmp_path / "other.conf").exists()


def test_bridge_usernames_are_per_city() -> None:
    assert bridge_username("samarkand") == "_bridge.samarkand"
    assert validate_username("_bridge.samarkand", Role.BRIDGE) == "_bridge.samarkand"
    for bad in ("_bridge", "_bridge.", "_bridge.+", "bridge.x", "_bridge.a/b"):
        with pytest.raises(ConfigError):
            validate_username(bad, Role.BRIDGE)
    with pytest.raises(ConfigError):
        bridge_username("a b")
