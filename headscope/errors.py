"""Exceptions headscope raises for problems a user can fix.

Every layer may import this module; it imports nothing from headscope.
The CLI and the dashboard turn these into one-line messages, so each message
must say what is wrong and what to do about it.
"""

from __future__ import annotations


class HeadscopeError(Exception):
    """Base class: a problem with the user's input or environment, not a bug."""


class ModelNotFoundError(HeadscopeError):
    """The model name is neither built in, a local directory, nor loadable from the hub."""


class HubUnreachableError(ModelNotFoundError):
    """The model would come from the Hugging Face hub, which cannot be reached."""


class MissingExtraError(HeadscopeError):
    """An optional dependency is needed (the message names the pip extra)."""


class InputError(HeadscopeError, ValueError):
    """Bad prompt or token input: empty, too long for the context, wrong shape."""


class RecordFormatError(HeadscopeError):
    """A saved record is malformed, tampered with, or of an unknown schema version."""
