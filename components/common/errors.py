"""Errors that name the problem: the file, the column, expected versus found."""

from __future__ import annotations


class CtpipeError(Exception):
    """Base class for errors a user can act on; the CLI prints them as one line plus a hint."""

    hint: str = ""

    def __init__(self, message: str, hint: str = "") -> None:
        super().__init__(message)
        if hint:
            self.hint = hint


class ConfigError(CtpipeError):
    """The configuration file is missing, malformed or has a wrong key, type or value."""

    hint = "Check the key against docs/configuration.md."


class DataError(CtpipeError):
    """Input data cannot be read or does not have the expected shape."""

    hint = "Check the source file and the dataset section of the config."


class ValidationFailed(CtpipeError):
    """New data broke a blocking expectation of the schema suite."""

    hint = "See the validation report; fix the data or update the suite on purpose."


class ModelNotFound(CtpipeError):
    """A registered model, version or alias does not exist."""

    hint = "Run the training pipeline first, or check serving.model_name."


class DeployError(CtpipeError):
    """A deployment failed; the serving endpoint keeps the models it had."""

    hint = "The previous champion still serves traffic; see the server log."


class StorageError(CtpipeError):
    """A storage location cannot be used: its driver is not installed, or the store refused the request."""

    hint = (
        "Object-store credentials and endpoints come from the environment only (AWS_ACCESS_KEY_ID, "
        "AWS_SECRET_ACCESS_KEY, AWS_ENDPOINT_URL, ...); see docs/storage.md."
    )
