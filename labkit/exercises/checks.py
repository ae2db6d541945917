"""Small checks the exercises share: is the answer a number, a whole number, a fraction (and not a
percentage), and is it close to the truth. Each returns ``None`` when fine, else what is wrong."""
from __future__ import annotations

import math
import numbers


def number(answer, what: str = "a number") -> str | None:
    """None if ``answer`` is a real number, else what is wrong with it."""
    if isinstance(answer, bool) or not isinstance(answer, numbers.Real):
        return f"give {what} as a number, not {type(answer).__name__} {answer!r}"
    if not math.isfinite(float(answer)):
        return f"give a finite number, not {answer!r}"
    return None


def whole_number(answer, what: str = "a whole number") -> str | None:
    """None if ``answer`` is an int (or a float with no fraction), else what is wrong with it."""
    if (problem := number(answer, what)) is not None:
        return problem
    if float(answer) != int(answer):
        return f"give {what} as a whole number, not {answer!r}"
    return None


def close(a, b, rel: float = 1e-3, abs_: float = 1e-9) -> bool:
    return math.isclose(float(a), float(b), rel_tol=rel, abs_tol=abs_)


def fraction(answer, truth, what: str) -> str | None:
    """Common problems of an answer that should be ``truth``, a fraction between 0 and 1."""
    if (problem := number(answer, "a fraction between 0 and 1")) is not None:
        return problem
    if not 0 <= answer <= 1 and close(answer / 100, truth):
        return f"you gave a percentage ({answer:.4g}); give {what} as a fraction between 0 and 1"
    if not 0 <= answer <= 1:
        return f"{what} is a fraction between 0 and 1; {answer:.4g} is outside that range"
    return None
