"""Outgoing mail over SMTP with the standard library (``smtplib``, ``email``).

Mail is off while ``SMTP_HOST`` is empty: features that need it check
:func:`enabled` and offer another way instead of failing.  A message that cannot be
handed over raises :class:`~app.errors.MailFailed` with a reason a person can act on;
the server's address and its own words go to the log, for operators only.
"""

from __future__ import annotations

import logging
import smtplib
import ssl
from email.message import EmailMessage
from email.utils import formatdate, make_msgid

from flask import current_app

from app.errors import MailFailed

log = logging.getLogger(__name__)

# Port used when SMTP_PORT is not set, per SMTP_SECURITY.
DEFAULT_PORTS = {"starttls": 587, "tls": 465, "none": 25}


def enabled() -> bool:
    """Whether the product can send mail at all (an operator set ``SMTP_HOST``)."""
    return bool(current_app.config["SMTP_HOST"])


def send(to: str, subject: str, body: str) -> None:
    """Hand one plain-text message to the mail server and wait for its answer, so the
    caller tells the person only what really happened.

    :raises MailFailed: mail is off or misconfigured, or the server did not take it.
    """
    config = current_app.config
    host, sender = config["SMTP_HOST"], config["MAIL_FROM"]
    security = str(config["SMTP_SECURITY"]).strip().lower()
    if not host:
        raise MailFailed("mail is not set up on this server")
    if security not in DEFAULT_PORTS or not sender:
        log.error("mail settings are incomplete: SMTP_SECURITY must be one of %s and "
                  "MAIL_FROM must be set", ", ".join(DEFAULT_PORTS))
        raise MailFailed("the mail settings of this server are incomplete")
    port = int(config["SMTP_PORT"] or DEFAULT_PORTS[security])
    message = _message(sender, to, subject, body)
    try:
        _deliver(message, host, port, security)
    except OSError as exc:  # smtplib's and ssl's errors are OSErrors too
        reason = _reason(exc)
        log.warning("mail to the server %s:%d failed (%s): %r", host, port, reason, exc)
        raise MailFailed(reason) from None
    log.info("mail handed to %s:%d: %s", host, port, subject)


def _message(sender: str, to: str, subject: str, body: str) -> EmailMessage:
    message = EmailMessage()
    message["From"] = sender
    message["To"] = to
    message["Subject"] = subject
    message["Date"] = formatdate(usegmt=True)
    message["Message-ID"] = make_msgid(domain=sender.rpartition("@")[2] or None)
    # Tells mail systems not to answer it with vacation notices (RFC 3834).
    message["Auto-Submitted"] = "auto-generated"
    message.set_content(body)
    return message


def _deliver(message: EmailMessage, host: str, port: int, security: str) -> None:
    config = current_app.config
    timeout = float(config["SMTP_TIMEOUT"])
    context = None
    if security != "none":
        try:
            context = ssl.create_default_context(cafile=config["SMTP_CA_BUNDLE"] or None)
        except OSError as exc:
            log.error("SMTP_CA_BUNDLE cannot be read: %s", exc)
            raise MailFailed("the mail settings of this server are incomplete") from None
    client = (smtplib.SMTP_SSL(host, port, timeout=timeout, context=context)
              if security == "tls" else smtplib.SMTP(host, port, timeout=timeout))
    with client:
        if security == "starttls":
            client.starttls(context=context)
        if config["SMTP_USERNAME"]:
            client.login(config["SMTP_USERNAME"], config["SMTP_PASSWORD"])
        client.send_message(message)


def _reason(exc: Exception) -> str:
    """The failure in a person's words.  Every class here is an OSError, so the
    specific ones come first."""
    if isinstance(exc, smtplib.SMTPAuthenticationError):
        return "the mail server refused this server's sign-in"
    if isinstance(exc, smtplib.SMTPNotSupportedError):
        return "the mail server does not offer what the settings ask (STARTTLS or sign-in)"
    if isinstance(exc, smtplib.SMTPRecipientsRefused):
        return "the mail server refused the address"
    if isinstance(exc, smtplib.SMTPSenderRefused):
        return "the mail server refused the sender's address"
    if isinstance(exc, ssl.SSLError):
        return "the secure connection to the mail server failed"
    # smtplib turns a read that timed out into "server disconnected".
    if isinstance(exc, TimeoutError) or isinstance(exc.__context__, TimeoutError):
        return "the mail server did not answer in time"
    if isinstance(exc, smtplib.SMTPServerDisconnected | smtplib.SMTPConnectError):
        return "the mail server closed the connection"
    if isinstance(exc, smtplib.SMTPException):
        return "the mail server refused the message"
    return "the mail server cannot be reached"
