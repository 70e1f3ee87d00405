"""Class descriptions for text-guided 3D segmentation (BiPVL-Seg): one CSV row per label class.

The CSV (utf-8, a header row, no comments) has the columns ``Title, Shape, Location, Appearance/Density,
Contour/Symmetry, Internal Texture`` and optionally a ``Label`` column (shown first by convention) holding the
class's name as ``dataset.json`` spells it. A row is matched to a class of ``labels`` (``dataset.json``'s
``labels``, index -> name) by its ``Label`` when the column is present, else by its ``Title``; the match
ignores case and surrounding spaces, and a ``Label`` cell may list several accepted spellings separated by
``|`` (``aorta|arota``: AMOS22's own ``dataset.json`` spells the aorta "arota"). Every class, background
included, needs exactly one row, and every cell must be filled; anything else is a ValueError naming the
file and the class, column or line.

Prompts (the text the model encodes, see :func:`global_prompt` and :func:`local_prompts`):

- global: ``"A medical image of the {title}."``
- local, one per concept in :data:`CONCEPTS` order: ``"{Concept} of the {title}: {description}"``
  (``"Shape of the anterior hippocampus (hippocampal head): ..."``),

where ``{title}`` is the Title with its first letter lower-cased (kept when the first word is an acronym such
as ``IVC``) and a leading "the " dropped.

Descriptions shipped with gpfuse (AMOS22, MSD brain tumour, MSD hippocampus) are found by
:func:`shipped_descriptions`.
"""

from __future__ import annotations

import csv
from collections.abc import Mapping
from pathlib import Path
from typing import NamedTuple

__all__ = [
    "CONCEPTS",
    "LABEL",
    "SHIPPED",
    "TITLE",
    "ClassDescription",
    "global_prompt",
    "local_prompts",
    "read_class_descriptions",
    "shipped_descriptions",
]

CONCEPTS = ("Shape", "Location", "Appearance/Density", "Contour/Symmetry", "Internal Texture")
TITLE = "Title"
LABEL = "Label"  # optional column: the dataset.json label name(s) a row describes
_ALTERNATIVES = "|"  # separates accepted spellings in a Label cell

_SHIPPED_DIR = Path(__file__).resolve().parent / "class_texts"
SHIPPED = ("amos22", "msd_brain", "msd_hippocampus")


class ClassDescription(NamedTuple):
    """One label class: its index and name in ``dataset.json``, the CSV's Title and the five concept
    descriptions in :data:`CONCEPTS` order."""

    index: int  # type: ignore[assignment]  # public field name that shadows tuple.index on purpose
    name: str
    title: str
    concepts: tuple[str, ...]


def _key(text: str) -> str:
    return text.strip().casefold()


def _class(index: int, name: str) -> str:
    return f"class {index} {name!r}"


def _labels(path: Path, labels: Mapping[int, str]) -> dict[str, int]:
    """Label names (normalised) -> index; indices may be ints or int strings (``dataset.json`` keys)."""
    by_name: dict[str, int] = {}
    for raw_index, name in labels.items():
        try:
            index = int(raw_index)
        except (TypeError, ValueError):
            raise ValueError(f"{path}: label index {raw_index!r} (name {name!r}) is not an integer") from None
        if not isinstance(name, str) or not name.strip():
            raise ValueError(f"{path}: label {index} has no name ({name!r})")
        if _key(name) in by_name:
            raise ValueError(
                f"{path}: labels {by_name[_key(name)]} and {index} have the same name {name!r}, "
                "so rows cannot be matched to them"
            )
        by_name[_key(name)] = index
    return by_name


def read_class_descriptions(path: str | Path, labels: Mapping[int, str]) -> list[ClassDescription]:
    """The descriptions of every class of ``labels`` (index -> name, background included) from the CSV at
    ``path``, in index order; rows are matched as the module docstring says.

    Raises:
        FileNotFoundError: no file at ``path``.
        ValueError: a missing or unexpected column, a row matching no class or a class already described, an
            empty cell, a class without a row (each names the file and the row's line, class or column).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"class description file not found: {path}")
    by_name = _labels(path, labels)
    names = {int(i): n for i, n in labels.items()}
    try:
        with path.open(newline="", encoding="utf-8-sig") as f:
            reader = csv.reader(f)
            header = next(reader, None)
            if header is None:
                raise ValueError(
                    f"{path}: empty file; expected a header with the columns "
                    f"{', '.join((TITLE, *CONCEPTS))} (and optionally {LABEL})"
                )
            header = [h.strip() for h in header]
            missing = [c for c in (TITLE, *CONCEPTS) if c not in header]
            if missing:
                raise ValueError(f"{path}: missing column(s) {', '.join(map(repr, missing))}; the header is {header}")
            unexpected = [h for h in header if h not in (LABEL, TITLE, *CONCEPTS)]
            if unexpected:
                raise ValueError(
                    f"{path}: unexpected column(s) {', '.join(map(repr, unexpected))}; expected "
                    f"{', '.join((TITLE, *CONCEPTS))} and optionally {LABEL}"
                )
            repeated = sorted({h for h in header if header.count(h) > 1})
            if repeated:
                raise ValueError(f"{path}: column(s) {', '.join(map(repr, repeated))} appear more than once")
            match_column = LABEL if LABEL in header else TITLE
            found: dict[int, tuple[int, ClassDescription]] = {}  # index -> (line, description)
            for cells in reader:
                line = reader.line_num
                if not any(c.strip() for c in cells):
                    continue  # a blank line
                if len(cells) > len(header):
                    raise ValueError(
                        f"{path}: line {line} has {len(cells)} cells, the header {len(header)} "
                        "(an unquoted comma in a description?)"
                    )
                row = dict(zip(header, (c.strip() for c in cells)))
                key = row.get(match_column, "")
                if not key:
                    raise ValueError(f"{path}: line {line}: empty {match_column!r}, so the row matches no class")
                spellings = (
                    [s for s in (_key(s) for s in key.split(_ALTERNATIVES)) if s]
                    if match_column == LABEL
                    else [_key(key)]
                )
                matched = sorted({by_name[s] for s in spellings if s in by_name})
                if not matched:
                    known = ", ".join(f"{i} {names[i]!r}" for i in sorted(names))
                    raise ValueError(
                        f"{path}: line {line}: {match_column} {key!r} matches no class of the labels ({known})"
                    )
                if len(matched) > 1:
                    raise ValueError(
                        f"{path}: line {line}: {match_column} {key!r} matches several classes "
                        f"({', '.join(_class(i, names[i]) for i in matched)})"
                    )
                index = matched[0]
                if index in found:
                    raise ValueError(
                        f"{path}: line {line}: {_class(index, names[index])} is described twice "
                        f"(first on line {found[index][0]})"
                    )
                for column in (TITLE, *CONCEPTS):
                    if not row.get(column):
                        raise ValueError(f"{path}: line {line} ({_class(index, names[index])}): empty {column!r}")
                found[index] = (
                    line,
                    ClassDescription(index, names[index], row[TITLE], tuple(row[c] for c in CONCEPTS)),
                )
    except UnicodeDecodeError as e:
        raise ValueError(f"{path}: not utf-8 text ({e})") from None
    absent = [i for i in sorted(names) if i not in found]
    if absent:
        raise ValueError(f"{path}: no description for {', '.join(_class(i, names[i]) for i in absent)}")
    return [found[i][1] for i in sorted(found)]


def _title_phrase(title: str) -> str:
    """The title as it reads after "the": first letter lower-cased unless the first word is an acronym, a
    leading "the " dropped, no final period."""
    text = " ".join(title.split()).rstrip(".")
    if text.casefold().startswith("the "):
        text = text[4:]
    first = text.split(" ", 1)[0]
    if not (len(first) > 1 and first[:2].isupper()):
        text = text[:1].lower() + text[1:]
    return text


def _sentence(text: str) -> str:
    text = " ".join(text.split())
    return text if text.endswith((".", "!", "?")) else text + "."


def global_prompt(d: ClassDescription) -> str:
    """The class's global prompt: ``"A medical image of the {title}."`` (``"A medical image of the anterior
    hippocampus (hippocampal head)."``)."""
    return f"A medical image of the {_title_phrase(d.title)}."


def local_prompts(d: ClassDescription) -> list[str]:
    """The class's five local (concept) prompts in :data:`CONCEPTS` order, each
    ``"{Concept} of the {title}: {description}"`` with the concept name in sentence case and a final period
    added when the description has none (``"Appearance/density of the liver: ..."``)."""
    phrase = _title_phrase(d.title)
    return [
        f"{concept[:1]}{concept[1:].lower()} of the {phrase}: {_sentence(text)}"
        for concept, text in zip(CONCEPTS, d.concepts)
    ]


def shipped_descriptions(name: str) -> Path:
    """The path of a class-description CSV shipped with gpfuse: ``"amos22"`` (background + the 15 AMOS22
    organs), ``"msd_brain"`` (MSD Task01 brain tumour sub-regions), ``"msd_hippocampus"`` (MSD Task04 anterior
    and posterior hippocampus).

    The descriptions were written from standard anatomy and radiology for gpfuse; they are not from the
    BiPVL-Seg authors. Each has a ``Label`` column with the dataset's own label names.

    Raises:
        KeyError: ``name`` is not one of the shipped names (the message lists them).
    """
    if name not in SHIPPED:
        raise KeyError(f"no shipped class descriptions named {name!r}; valid names: {', '.join(SHIPPED)}")
    return _SHIPPED_DIR / f"{name}.csv"
