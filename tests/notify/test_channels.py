"""Every channel against a real receiver: webhook (signature checked, replay refused),
Telegram Bot API sendMessage, an SMS gateway, SMTP with STARTTLS and login (aiosmtpd)."""

from __future__ import annotations

import asyncio
import json
import ssl
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult, Envelope, LoginPassword, Session
from receivers import HttpReceiver

from broker import certs
from control.stack import free_port
from notify.channels.base import Delivery
from notify.channels.local import LocalChannel
from notify.channels.sms import SmsChannel
from notify.channels.smtp import SmtpChannel
from notify.channels.telegram import TelegramChannel
from notify.channels.webhook import WebhookChannel, signature
from safecity.outbox import Result


def _page(incident: str = "inc-1", tier: int = 1) -> dict[str, Any]:
    return {
        "incident_id": incident,
        "city": "tashkent",
        "district": "chilonzor",
        "rule_id": "gunshot",
        "severity": "critical",
        "message": "Gunshot detected",
        "tier": tier,
        "repeat": 0,
        "ack_url": f"http://127.0.0.1:1/v1/ack/{incident}",
    }


ONE = Delivery.of("ann", ["inc-1/t1/r0/ann/x"], [_page()])


@pytest.fixture
def receiver(request: pytest.FixtureRequest) -> Iterator[HttpReceiver]:
    server = HttpReceiver(kind=request.param)
    yield server
    server.close()


@pytest.mark.parametrize("receiver", ["webhook"], indirect=True)
def test_webhook_is_signed_and_a_replay_is_refused(receiver: HttpReceiver) -> None:
    channel = WebhookChannel(receiver.url + "/hook", receiver.secret.encode(), 5.0)
    first = asyncio.run(channel.send(ONE))
    assert first.result is Result.DELIVERED
    (body,) = receiver.received
    assert body["key"] == ONE.key and body["pages"][0]["incident_id"] == "inc-1"
    assert "Acknowledge: http://127.0.0.1:1/v1/ack/inc-1" in body["text"]
    # The same notification again (a retry after a lost answer): the receiver refuses the
    # replay and the channel counts it delivered, never a second page.
    again = asyncio.run(channel.send(ONE))
    assert again.result is Result.DELIVERED and again.detail == "HTTP 409"
    assert len(receiver.received) == 1
    # A captured request replayed later, or forged, is refused by the receiver.
    raw = json.dumps({"key": "other"}).encode()
    stale = httpx.post(
        receiver.url,
        content=raw,
        headers={
            "X-Safecity-Timestamp": "1000",
            "X-Safecity-Signature": signature(receiver.secret.encode(), "1000", raw),
        },
    )
    assert stale.status_code == 401
    forged = asyncio.run(WebhookChannel(receiver.url, b"wrong", 5.0).send(ONE))
    assert forged.result is Result.FAILED and forged.detail.startswith("HTTP 401")


@pytest.mark.parametrize("receiver", ["webhook"], indirect=True)
def test_an_unreachable_or_failing_receiver_is_a_retry(receiver: HttpReceiver) -> None:
    receiver.fail_next = 1
    channel = WebhookChannel(receiver.url, receiver.secret.encode(), 5.0)
    assert asyncio.run(channel.send(ONE)).result is Result.RETRY
    receiver.close()
    gone = asyncio.run(channel.send(ONE))
    assert gone.result is Result.RETRY and "ConnectError" in gone.detail


@pytest.mark.parametrize("receiver", ["telegram"], indirect=True)
def test_telegram_send_message(receiver: HttpReceiver) -> None:
    channel = TelegramChannel(receiver.url, receiver.secret, 5.0)
    digest = Delivery.of("123456", ["a", "b"], [_page("inc-1"), _page("inc-2", tier=2)])
    assert asyncio.run(channel.send(digest)).result is Result.DELIVERED
    (message,) = receiver.received
    assert message["chat_id"] == "123456"
    assert message["text"].startswith("[CRITICAL] 2 incidents need you")
    assert "inc-2, tier 2" in message["text"]
    wrong = asyncio.run(TelegramChannel(receiver.url, "bad-token", 5.0).send(digest))
    assert wrong.result is Result.FAILED and "401" in wrong.detail
    no_chat = asyncio.run(channel.send(Delivery.of("@nobody", ["c"], [_page()])))
    assert no_chat.result is Result.FAILED and "chat not found" in no_chat.detail


@pytest.mark.parametrize("receiver", ["sms"], indirect=True)
def test_sms_gateway_template(receiver: HttpReceiver) -> None:
    template = {"to": "{to}", "text": "{text}", "from": "SafeCity"}
    channel = SmsChannel(receiver.url + "/send", template, receiver.secret, 5.0)
    assert asyncio.run(channel.send(Delivery.of("+998901234567", ["k"], [_page()]))).result is (
        Result.DELIVERED
    )
    (sms,) = receiver.received
    assert sms["to"] == "+998901234567" and sms["from"] == "SafeCity"
    assert sms["text"].startswith("[CRITICAL] gunshot in chilonzor (tashkent)")
    bad = asyncio.run(channel.send(Delivery.of("12", ["k2"], [_page()])))
    assert bad.result is Result.FAILED


class _Mailbox:
    def __init__(self) -> None:
        self.mails: list[Envelope] = []

    async def handle_DATA(self, server: Any, session: Session, envelope: Envelope) -> str:  # noqa: N802
        self.mails.append(envelope)
        return "250 OK"


def _auth(
    server: Any, session: Session, envelope: Envelope, mechanism: str, data: Any
) -> AuthResult:
    ok = isinstance(data, LoginPassword) and (data.login, data.password) == (b"ops", b"pw")
    return AuthResult(success=ok, handled=False)


def test_smtp_with_starttls_and_login_reuses_its_connection(tmp_path: Path) -> None:
    ca = certs.init_ca(tmp_path)
    server_cert = certs.issue_server(tmp_path, ("localhost", "127.0.0.1"))
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(server_cert.cert, server_cert.key)
    mailbox = _Mailbox()
    port = free_port()
    controller = Controller(
        mailbox,
        hostname="127.0.0.1",
        port=port,
        tls_context=context,
        require_starttls=True,
        authenticator=_auth,
        auth_require_tls=True,
    )
    controller.start()
    try:

        def channel(password: str) -> SmtpChannel:
            return SmtpChannel("localhost", port, "safecity@example.org", starttls=True,
                               login=("ops", password), ca_file=ca.cert, timeout_s=5.0)  # fmt: skip

        good = channel("pw")

        async def two() -> list[Result]:
            first = await good.send(ONE)
            second = await good.send(Delivery.of("bob@example.org", ["k2"], [_page("inc-2")]))
            await good.close()
            return [first.result, second.result]

        assert asyncio.run(two()) == [Result.DELIVERED, Result.DELIVERED]
        assert [m.rcpt_tos for m in mailbox.mails] == [["ann"], ["bob@example.org"]]
        text = mailbox.mails[0].content
        assert isinstance(text, bytes)
        assert b"Subject: [CRITICAL] gunshot in chilonzor (tashkent)" in text
        assert b"X-Safecity-Idempotency-Key: inc-1/t1/r0/ann/x" in text
        refused = asyncio.run(channel("wrong").send(ONE))
        assert refused.result is Result.FAILED and "535" in refused.detail
    finally:
        controller.stop()


def test_local_channel_appends_to_the_console_log(tmp_path: Path) -> None:
    path = tmp_path / "console.jsonl"
    assert asyncio.run(LocalChannel(path).send(ONE)).result is Result.DELIVERED
    (line,) = path.read_text().splitlines()
    record = json.loads(line)
    assert record["to"] == "ann" and record["incidents"] == ["inc-1"]
    assert record["subject"] == "[CRITICAL] gunshot in chilonzor (tashkent)"
