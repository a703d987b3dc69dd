"""The errors a method raises, apart from everything else so any module can raise them."""

from __future__ import annotations

import math


class MethodConfigError(ValueError):
    """A nonsense hyper-parameter; the message names the config key."""



class TrainingDiverged(RuntimeError):
    """The loss became NaN or infinite; the method is stopped and recorded as failed."""



def check_positive(key: str, value: float) -> None:
    if not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
        raise MethodConfigError(f"{key}: must be a positive number, got {value!r}")
