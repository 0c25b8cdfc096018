"""After the run's summary, the fuzzing's figures: operations exercised and, per role,
requests by status class (the numbers a reader of the log wants, not a test)."""

from __future__ import annotations

from collections import Counter

import pytest

# (role, operation, status class such as "2xx") -> requests
ANSWERS: Counter[tuple[str, str, str]] = Counter()


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    roles = sorted({role for role, _, _ in ANSWERS})
    for role in roles:
        operations = {operation for who, operation, _ in ANSWERS if who == role}
        classes: Counter[str] = Counter()
        for (who, _, status), n in ANSWERS.items():
            if who == role:
                classes[status] += n
        terminalreporter.write_line(
            f"api fuzz, {role}: {len(operations)} operations, {sum(classes.values())} "
            "requests (" + ", ".join(f"{c} {n}" for c, n in sorted(classes.items())) + ")")
