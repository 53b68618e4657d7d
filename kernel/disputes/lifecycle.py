"""The life of a dispute case: states, the one transition table, and its error. Pure: no I/O.

    open ──investigate──▶ investigating ──resolve──▶ resolved ──close──▶ closed
                                                    (upheld | partially_upheld | rejected)

Each move is allowed from exactly one state. Asking for the move that led to the current state
again (investigate an investigating case, resolve a resolved case with the same outcome and
credit, close a closed case) is a no-op answered as success with ``changed = false``, so retries
are safe. Anything else is an ``IllegalTransition`` (HTTP 409, code ``illegal_transition``).

When the hold is released: a case's site-month is held (``dispute_holds``) from the moment the
case is opened, through investigation and resolution, and the hold is released when the case is
**closed**, unless another case of the same site-month is still not closed. A resolved case keeps
its evidence protected until support confirms with the customer and closes it; after that the
month follows normal retention (archive, then cleanup), its evidence the archive file and its
signed corrections.
"""

from __future__ import annotations

from kernel.errors import Conflict

__all__ = [
    "CASE_STATES",
    "OPEN_STATES",
    "OUTCOMES",
    "TRANSITIONS",
    "IllegalTransition",
    "require_transition",
]

CASE_STATES = ("open", "investigating", "resolved", "closed")
# States whose case still holds its site-month.
OPEN_STATES = ("open", "investigating", "resolved")
OUTCOMES = ("upheld", "partially_upheld", "rejected")
# action -> (the one state it starts from, the state it leads to)
TRANSITIONS: dict[str, tuple[str, str]] = {
    "investigate": ("open", "investigating"),
    "resolve": ("investigating", "resolved"),
    "close": ("resolved", "closed"),
}


class IllegalTransition(Conflict):
    """The case is not in the state this move starts from."""

    code = "illegal_transition"


def require_transition(action: str, state: str) -> bool:
    """Whether ``action`` changes a case in ``state`` (False: already done, a no-op).

    Raises:
        IllegalTransition: the case is neither where the move starts nor where it leads.
    """
    start, target = TRANSITIONS[action]
    if state == start:
        return True
    if state == target:
        return False
    raise IllegalTransition(
        f"cannot {action} a case that is {state}: {action} moves a case from {start} to {target}"
        f" (lifecycle {' → '.join(CASE_STATES)})"
    )
