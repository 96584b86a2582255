"""The one error type users see: the CLI prints its message as a single line, never a traceback."""


class CnnlabError(ValueError):
    """A problem with the user's input, phrased as what is wrong and what to do."""


def check_choice(field: str, value, choices) -> None:
    """Raise CnnlabError naming the field and listing the valid choices when value is not one of them."""
    if value not in choices:
        valid = ", ".join(str(c) for c in choices)
        raise CnnlabError(f"unknown {field} {value!r}; choose one of: {valid}")


def check_probability(field: str, value: float) -> float:
    """A dropout-like probability must lie in [0, 1)."""
    if not isinstance(value, (int, float)) or not 0.0 <= value < 1.0:
        raise CnnlabError(f"{field} must be a number in [0, 1), got {value!r}")
    return float(value)


def check_positive_int(field: str, value) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise CnnlabError(f"{field} must be a positive integer, got {value!r}")
    return value


def one_of(names) -> str:
    """'a, b or c': how a help string lists choices."""
    names = list(names)
    return names[0] if len(names) == 1 else ", ".join(names[:-1]) + " or " + names[-1]
