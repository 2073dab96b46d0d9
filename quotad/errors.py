"""Domain errors. The CLI and the API each map these in one place."""

from __future__ import annotations


class QuotadError(Exception):
    """Base of every error quotad reports to a user."""

    code = "error"


class NotFound(QuotadError):
    code = "not_found"


class Conflict(QuotadError):
    code = "conflict"


class Unauthorized(QuotadError):
    """No credentials, or credentials that are malformed, unknown or revoked."""

    code = "unauthorized"


class Forbidden(QuotadError):
    """Known credentials whose role may not do this."""

    code = "forbidden"


class TooLarge(QuotadError):
    """A request body over `[server] max_body`."""

    code = "too_large"


class InvalidInput(QuotadError):
    code = "invalid_input"


class ConfigError(QuotadError):
    """The configuration is wrong; the message names the file, the key and the problem."""

    code = "config_error"

    def __init__(self, file: str, key: str, problem: str) -> None:
        super().__init__(f"{file}: {key}: {problem}")
        self.file = file
        self.key = key
        self.problem = problem
