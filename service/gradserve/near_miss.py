"""Names a client probably meant: the "did you mean" of error messages.

Used on error paths only (validation's unknown params, the registry's unknown ops, V2's
unknown request fields, REST's unknown routes), never on a request that succeeds. Names
come from clients, so the comparison is bounded: a name longer than ``MAX_CHARS`` is
not compared (difflib's cost grows with the product of the lengths).
"""

from __future__ import annotations

import difflib
import itertools
from collections.abc import Collection, Iterable

MAX_CHARS = 40
# Unknown names compared per request, at most (a V2 parameters object can hold many
# keys, and each comparison costs microseconds).
MAX_NAMES = 32
# difflib's ratio for a near miss: "reducton" -> "reduction" is 0.94, "input" -> "inputs"
# 0.91, "crossentropy" -> "cross_entropy" 0.96; unrelated words stay well below.
CUTOFF = 0.8


def closest(name: object, known: Iterable[str]) -> str | None:
    """The known name ``name`` is a near miss of (the same but for case, or difflib's
    ratio at least CUTOFF), or None."""
    if not isinstance(name, str) or not name or len(name) > MAX_CHARS:
        return None
    names = list(known)
    lowered = {n.lower(): n for n in names}
    return lowered.get(name.lower()) or next(
        iter(difflib.get_close_matches(name, names, n=1, cutoff=CUTOFF)), None
    )


def first_near_miss(given: Iterable[object], known: Collection[str]) -> tuple[str, str] | None:
    """The first of ``given`` that is not a known name but a near miss of one, with the
    name it misses; None when there is none. At most MAX_NAMES unknown names are
    compared (the callers ignore other unknown names)."""
    unknown = (g for g in given if isinstance(g, str) and g not in known)
    for name in itertools.islice(unknown, MAX_NAMES):
        meant = closest(name, known)
        if meant is not None:
            return name, meant
    return None
