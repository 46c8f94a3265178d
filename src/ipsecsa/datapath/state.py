"""The SA life cycle as one transition table (STYLE practice 5).

An SA is *larval* until its keys are in place, *mature* while it carries traffic, *dying* after a
soft lifetime (still carries traffic, a rekey is due) and *dead* after a hard lifetime, sequence
number exhaustion or deletion. Any (state, trigger) pair not in the table is an error.
"""

from __future__ import annotations

import enum

from ipsecsa.errors import SaStateError


class SaState(enum.Enum):
    LARVAL = "larval"
    MATURE = "mature"
    DYING = "dying"
    DEAD = "dead"


class SaTrigger(enum.Enum):
    INSTALL = "install"          # keys and parameters in place
    SOFT_EXPIRE = "soft_expire"  # a soft lifetime limit reached
    HARD_EXPIRE = "hard_expire"  # a hard lifetime limit reached
    EXHAUST = "exhaust"          # outbound sequence numbers used up
    DELETE = "delete"            # removed by its owner


TRANSITIONS: dict[tuple[SaState, SaTrigger], SaState] = {
    (SaState.LARVAL, SaTrigger.INSTALL): SaState.MATURE,
    (SaState.LARVAL, SaTrigger.DELETE): SaState.DEAD,
    (SaState.MATURE, SaTrigger.SOFT_EXPIRE): SaState.DYING,
    (SaState.MATURE, SaTrigger.HARD_EXPIRE): SaState.DEAD,
    (SaState.MATURE, SaTrigger.EXHAUST): SaState.DEAD,
    (SaState.MATURE, SaTrigger.DELETE): SaState.DEAD,
    (SaState.DYING, SaTrigger.HARD_EXPIRE): SaState.DEAD,
    (SaState.DYING, SaTrigger.EXHAUST): SaState.DEAD,
    (SaState.DYING, SaTrigger.DELETE): SaState.DEAD,
}

#: States in which the SA carries traffic.
USABLE = frozenset({SaState.MATURE, SaState.DYING})


def next_state(state: SaState, trigger: SaTrigger) -> SaState:
    """The state after ``trigger``; SaStateError for a pair the table does not allow."""
    try:
        return TRANSITIONS[(state, trigger)]
    except KeyError:
        raise SaStateError(f"{trigger.value} is not allowed in state {state.value}") from None
