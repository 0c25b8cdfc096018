"""Typed errors raised by services; each blueprint turns them into its own answer."""

from __future__ import annotations


class ServiceError(Exception):
    """Base of every error a service raises on purpose."""

    code = "error"
    status = 400

    def __init__(self, message: str, fields: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.fields = fields or {}


class NotFound(ServiceError):
    code = "not_found"
    status = 404


class Unauthorized(ServiceError):
    """Missing or wrong credentials (the API adds a ``WWW-Authenticate`` challenge)."""

    code = "unauthorized"
    status = 401


class Forbidden(ServiceError):
    code = "forbidden"
    status = 403


class Conflict(ServiceError):
    code = "conflict"
    status = 409


class Gone(ServiceError):
    """Something that was good once and is no longer, such as an expired link."""

    code = "gone"
    status = 410


class MailFailed(ServiceError):
    """A message could not be handed to the mail server: the feature that sends it
    answers in words, never with a server error page."""

    code = "mail_failed"
    status = 503

    def __init__(self, reason: str) -> None:
        super().__init__(f"The mail could not be sent: {reason}. Nothing changed; try "
                         "again later, or ask an administrator.")


class ValidationError(ServiceError):
    """Invalid input; ``fields`` maps each offending field to its message."""

    code = "invalid"
    status = 422


class TooManyAttempts(ServiceError):
    """Refused for now: answered 429 with ``Retry-After`` so that a person or a
    script knows when to try again."""

    code = "rate_limited"
    status = 429

    def __init__(self, retry_after: int) -> None:
        unit = "second" if retry_after == 1 else "seconds"
        super().__init__(f"Too many failed sign-ins. Try again in {retry_after} {unit}.")
        self.retry_after = retry_after


class DeploymentError(ServiceError):
    code = "deployment_failed"
    status = 502
