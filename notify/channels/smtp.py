"""The e-mail channel: SMTP with STARTTLS and login, one connection reused between sends.

smtplib is blocking; each send runs in a worker thread, one at a time per channel (the
connection is shared). A 5xx answer fails the message; anything else is retried.
"""

from __future__ import annotations

import asyncio
import smtplib
import ssl
from email.message import EmailMessage
from email.utils import formatdate, make_msgid
from pathlib import Path

from notify.channels.base import Delivery
from safecity.outbox import Outcome


class SmtpChannel:
    """Sends each delivery as one e-mail from `sender` to the address."""

    def __init__(
        self,
        host: str,
        port: int,
        sender: str,
        *,
        starttls: bool,
        login: tuple[str, str] | None,
        ca_file: Path | None,
        timeout_s: float,
    ) -> None:
        self.host, self.port, self.sender = host, port, sender
        self.starttls, self.login, self.timeout_s = starttls, login, timeout_s
        self.context = ssl.create_default_context(cafile=str(ca_file) if ca_file else None)
        self._smtp: smtplib.SMTP | None = None
        self._lock = asyncio.Lock()

    def _connection(self) -> smtplib.SMTP:
        if self._smtp is not None:
            try:
                if self._smtp.noop()[0] == 250:
                    return self._smtp
            except smtplib.SMTPException:
                pass
            self._drop()
        smtp = smtplib.SMTP(self.host, self.port, timeout=self.timeout_s)
        try:
            if self.starttls:
                smtp.starttls(context=self.context)
            if self.login is not None:
                smtp.login(*self.login)
        except BaseException:
            smtp.close()
            raise
        self._smtp = smtp
        return smtp

    def _drop(self) -> None:
        if self._smtp is not None:
            try:
                self._smtp.quit()
            except (smtplib.SMTPException, OSError):
                self._smtp.close()
            self._smtp = None

    def _message(self, delivery: Delivery) -> EmailMessage:
        mail = EmailMessage()
        mail["From"] = self.sender
        mail["To"] = delivery.address
        mail["Subject"] = delivery.subject
        mail["Date"] = formatdate(localtime=False)
        # One Message-ID per idempotency key: a repeated send is recognisable as one mail.
        mail["Message-ID"] = make_msgid(idstring=delivery.key.replace("/", "."), domain="safecity")
        mail["X-Safecity-Idempotency-Key"] = delivery.key
        mail.set_content(delivery.text)
        return mail

    def _send(self, delivery: Delivery) -> Outcome:
        try:
            self._connection().send_message(self._message(delivery))
        except smtplib.SMTPResponseException as exc:
            self._drop()
            detail = f"SMTP {exc.smtp_code}: {exc.smtp_error!r}"[:300]
            return Outcome.failed(detail) if exc.smtp_code >= 500 else Outcome.retry(detail)
        except smtplib.SMTPRecipientsRefused as exc:
            return Outcome.failed(f"recipient refused: {exc.recipients}"[:300])
        except (smtplib.SMTPException, OSError) as exc:
            self._drop()
            return Outcome.retry(f"{type(exc).__name__}: {exc}"[:300])
        return Outcome.delivered("250")

    async def send(self, delivery: Delivery) -> Outcome:
        """One e-mail, over the shared connection (opened or renewed as needed)."""
        async with self._lock:
            return await asyncio.to_thread(self._send, delivery)

    async def close(self) -> None:
        """QUIT the connection; idempotent."""
        async with self._lock:
            await asyncio.to_thread(self._drop)
