"""Every mutant that survived the last ``make mutation``, one line each, with why it survives: the first rule
below that its change matches, or "no rule" (a test to add, or an equivalent mutant no rule describes: read it).

    .venv/bin/python tools/mutation_survivors.py > docs/mutation_survivors.md     (``make mutation`` runs it)

Reads mutmut's results in ``mutants/`` (the diff of each mutant through mutmut's own ``get_diff_for_mutant``,
what ``mutmut show`` prints; mutmut is pinned in constraints.txt).
"""

from __future__ import annotations

import re
import subprocess
import sys
from collections import Counter
from collections.abc import Callable

import mutmut.__main__ as mutmut

_STRING = re.compile(r"""(?:[rbf]{0,2})("(?:[^"\\]|\\.)*"|'(?:[^'\\]|\\.)*')""")


def _without(pattern: str) -> Callable[[str, str], bool]:
    """The change is only in what ``pattern`` matches (removed from both lines, they are equal)."""
    regex = re.compile(pattern)
    return lambda old, new: regex.sub("", old) == regex.sub("", new)


def _message_text(old: str, new: str) -> bool:
    """Only the text of a string literal with a space in it changed (an error, warning or log message)."""
    old_strings, new_strings = _STRING.findall(old), _STRING.findall(new)
    if _STRING.sub("S", old) != _STRING.sub("S", new) or len(old_strings) != len(new_strings):
        return False
    changed = [(a, b) for a, b in zip(old_strings, new_strings, strict=True) if a != b]
    return bool(changed) and all(" " in a for a, _ in changed)


#: (reason, rule over the removed and the added line)
RULES: list[tuple[str, Callable[[str, str], bool]]] = [
    (
        "equivalent: the type named in typing.cast (a no-op at run time)",
        _without(r"cast\((?:\"[^\"]*\"|'[^']*'|[^,]*),"),
    ),
    ("equivalent on a CPU: a device argument", _without(r"\.to\([^()]*\)|,?\s*device=[^,()]*(\([^()]*\))?")),
    ("equivalent: a dtype or copy argument equal to its default here", _without(r",?\s*(dtype|copy)=[^,()]*")),
    ("equivalent: an encoding name (UTF-8 either way)", _without(r",?\s*encoding=[^,()]*")),
    ("equivalent: ONNX Runtime falls back to its CPU provider", _without(r",?\s*providers=(\[[^\]]*\]|None)")),
    ("equivalent on distinct values: the sort's algorithm", _without(r",?\s*kind=[^,()\]]*")),
    ("where a warning points (stacklevel), not what it says", _without(r",?\s*stacklevel=\d+")),
    ("console wrapping of a printed line", _without(r",?\s*soft_wrap=\w+")),
    ("message text not matched in full by a test", _message_text),
]


def _changed_lines(diff: str) -> tuple[str, str]:
    removed = [line[1:].strip() for line in diff.splitlines() if line.startswith("-") and not line.startswith("---")]
    added = [line[1:].strip() for line in diff.splitlines() if line.startswith("+") and not line.startswith("+++")]
    return " ".join(removed), " ".join(added)


def reason(old: str, new: str) -> str:
    return next((why for why, rule in RULES if rule(old, new)), "no rule: a test to add, or equivalent (read it)")


def survivors() -> list[str]:
    out = subprocess.run([sys.executable, "-m", "mutmut", "results"], capture_output=True, text=True, check=True)
    return [line.strip().rsplit(":", 1)[0] for line in out.stdout.splitlines() if line.strip().endswith(": survived")]


def main() -> None:
    rows = []
    for name in survivors():
        old, new = _changed_lines(mutmut.get_diff_for_mutant(name))
        rows.append((name, new or "(line removed)", reason(old, new)))
    counts = Counter(why for _, _, why in rows)
    print("# Surviving mutants of `make mutation`, one by one\n")
    print(f"{len(rows)} survivors, written by `tools/mutation_survivors.py` after the run. Reasons:\n")
    for why, n in counts.most_common():
        print(f"- {n}: {why}")
    print("\n| mutant | the mutated line | why it survives |\n|---|---|---|")
    for name, new, why in rows:
        short = (new[:110] + "...") if len(new) > 110 else new
        print(f"| `{name.removeprefix('gpfuse.')}` | `{short.replace('|', '&#124;').replace('`', '')}` | {why} |")


if __name__ == "__main__":
    main()
