"""Provider disposition words → our terminal states (a configurable table)."""

from __future__ import annotations

from dialer.lifecycle.states import TERMINAL, State

DEFAULT: dict[str, str] = {
    "ANSWERED": "answered", "ANSWER": "answered", "CONNECTED": "answered", "COMPLETED": "answered",
    "SUCCESS": "answered",
    "NO_ANSWER": "no_answer", "NOANSWER": "no_answer", "NOT_ANSWERED": "no_answer",
    "UNANSWERED": "no_answer", "MISSED": "no_answer", "RING_TIMEOUT": "no_answer",
    "BUSY": "busy", "USER_BUSY": "busy",
    "UNREACHABLE": "unreachable", "NOT_REACHABLE": "unreachable", "SWITCHED_OFF": "unreachable",
    "INVALID_NUMBER": "unreachable", "CONGESTION": "unreachable", "CHANUNAVAIL": "unreachable",
    "FAILED_TO_CONNECT": "unreachable",
    "FAILED": "failed", "ERROR": "failed", "CANCELLED": "cancelled",
    "CALLBACK": "callback", "CALL_BACK": "callback",
    # customer-first: the customer picked up and no agent came (counts in the abandon rate)
    "ABANDONED": "abandoned", "ABANDON": "abandoned", "DROPPED": "abandoned",
}
# Words that end a call in a state *and* ask for more: "callback" — the customer was
# reached and asked to be called back later (lifecycle/callbacks_scheduled.py).
SPECIAL: dict[str, State] = {"callback": State.ANSWERED}


def normalise_word(word: str) -> str:
    return word.strip().upper().replace(" ", "_").replace("-", "_")


class Dispositions:
    def __init__(self, overrides: dict[str, str] | None = None, dnc_words: list[str] | None = None) -> None:
        self.table = dict(DEFAULT)
        for k, v in (overrides or {}).items():
            if v not in SPECIAL and State(v) not in TERMINAL:
                raise ValueError(f"dispositions.{k}: {v!r} is not a terminal state")
            self.table[normalise_word(k)] = v
        self.dnc_words = {normalise_word(w) for w in (dnc_words or [])}

    def state_for(self, word: str | None) -> State:
        """An unknown (or missing) word maps to ``failed``; the word itself is kept verbatim."""
        if not word:
            return State.FAILED
        w = normalise_word(word)
        if w in self.dnc_words:
            return _state(self.table.get(w, "answered"))
        return _state(self.table.get(w, "failed"))

    def is_callback(self, word: str | None) -> bool:
        return bool(word) and self.table.get(normalise_word(word or "")) == "callback"

    def is_dnc(self, word: str | None) -> bool:
        return bool(word) and normalise_word(word or "") in self.dnc_words


def _state(value: str) -> State:
    special = SPECIAL.get(value)
    return special if special is not None else State(value)
