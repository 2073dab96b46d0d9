"""Domain errors. The CLI and the API each map these in one place."""

from __future__ import annotations


class QuotadError(Exception):
    """Base of every error quotad reports to a user."""

    code = "error"


class NotFound(QuotadError):
    code = "not_found"


class Conflict(QuotadError):
    code = "conflict"


class Forbidden(QuotadError):
    code = "forbidden"


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
