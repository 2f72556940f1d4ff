"""The one validator for row-stochastic attention maps (``[..., query, key]``, rows sum to 1).

Code that takes attention maps should call :func:`check_pattern` rather than check shape,
finiteness, signs or row sums by hand, so that the rules and messages are the same
everywhere. Caller mistakes raise :class:`headscope.errors.InputError` (a ``ValueError``).
The rules themselves live in :func:`headscope.validation.check_row_stochastic`, which records
also apply when a record is loaded (records and analyses may not import each other).
"""

from __future__ import annotations

from jaxtyping import Float
from torch import Tensor

from headscope.validation import check_row_stochastic


def check_pattern(
    pattern: Float[Tensor, "... query key"],
    *,
    name: str = "pattern",
    min_dims: int = 2,
    atol: float = 1e-4,
    allow_zero_rows: bool = False,
) -> Float[Tensor, "... query key"]:
    """Validate an attention tensor whose rows should be probability distributions.

    Raises InputError naming the problem when the tensor has fewer than
    `min_dims` dimensions, is not square in its last two dims, contains NaN or
    infinity, has entries below −`atol`, or has rows that do not sum to 1 within
    `atol` (rows of all zeros are accepted with `allow_zero_rows`, e.g. padded
    queries). Returns the input unchanged (never mutated, never copied). Memory:
    boolean temporaries the size of the input and float64 row sums.
    """
    return check_row_stochastic(
        pattern, name=name, min_dims=min_dims, atol=atol, allow_zero_rows=allow_zero_rows
    )
