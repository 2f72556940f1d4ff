"""Provenance: where a record came from (model, weights, code, input)."""

from __future__ import annotations

import datetime as _dt
import os
from dataclasses import asdict, dataclass, fields
from typing import Any

from headscope.errors import RecordFormatError


@dataclass(frozen=True)
class Provenance:
    """Model name and weights hash, headscope and torch versions, how the
    attention was computed (`kernel`), whether a BOS token was prepended, the
    input texts (None when token ids were given), and a UTC timestamp."""

    model_name: str
    weights_hash: str
    headscope_version: str
    torch_version: str
    kernel: str
    prepended_bos: bool
    texts: tuple[str, ...] | None
    created: str

    @classmethod
    def now(cls, **values: Any) -> Provenance:
        created = _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds")
        return cls(created=created, **values)

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["texts"] = list(self.texts) if self.texts is not None else None
        return data

    @classmethod
    def from_dict(cls, data: Any, path: str | os.PathLike | None = None) -> Provenance:
        """The provenance block of a sidecar; RecordFormatError (naming `path`) unless
        it has exactly the fields above, each of its type."""
        where = f"{path}: " if path is not None else ""
        names = {f.name for f in fields(cls)}
        if not isinstance(data, dict) or set(data) != names:
            raise RecordFormatError(f"{where}the provenance block of the record is malformed")
        for name in names - {"texts", "prepended_bos"}:
            if not isinstance(data[name], str):
                raise RecordFormatError(f"{where}provenance.{name} must be a string")
        if not isinstance(data["prepended_bos"], bool):
            raise RecordFormatError(f"{where}provenance.prepended_bos must be true or false")
        texts = data["texts"]
        if texts is not None and not (
            isinstance(texts, list) and all(isinstance(t, str) for t in texts)
        ):
            raise RecordFormatError(f"{where}provenance.texts must be a list of strings or null")
        return cls(**{**data, "texts": tuple(texts) if texts is not None else None})
