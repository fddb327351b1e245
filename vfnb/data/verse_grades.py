"""Read a VerSe fracture-grade table: the organisers' spreadsheet, or a long CSV.

The grades of VerSe (Löffler et al., Radiology: Artificial Intelligence 2020) are
distributed as a spreadsheet with one row per scan: an id column (``verse_ID``,
written ``4``, ``verse004`` or ``sub-verse004``) and, per vertebra, a Genant grade
column ``<level>_fx-g`` (``T12_fx-g``, ``L1_fx-g``), often beside a fracture-shape
column ``<level>_fx-s`` and other per-patient columns, which are not read. A grade
cell is empty where a level was not graded (not in the scan); some copies write a
mark such as ``-`` or ``x`` there instead. Both forms are read:

- **wide** (that spreadsheet; CSV or XLSX, on the first sheet that has the columns):
  an id column, the first present of ``verse_ID``, ``subject_ID``, ``scan_ID``,
  ``subject``, ``ID`` (any case), and one or more ``<level>_fx-g`` columns;
- **long** CSV/XLSX: columns ``subject,level,grade``, one row per vertebra; the level
  as a name (``T12``) or a VerSe label number (``19``).

A grade is an integer 0-3 (``2.0`` as a spreadsheet stores it is 2). A number
outside 0-3 or a fraction is refused here. Any other text is kept as *not a
grade*: the import accepts it only for a level absent from the scan's label map
(where it marks "not graded") and refuses it otherwise, since it can then be a
typing error hiding a real grade. Each entry keeps the table row and column it
came from, so every later message can name them.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from pathlib import Path

from ..errors import DatasetError, VfnbError
from ..levels import GRADES, label_from_level

WIDE_SUFFIX = "_fx-g"
SHAPE_SUFFIX = "_fx-s"
WIDE_ID_COLUMNS = ("verse_id", "subject_id", "scan_id", "subject", "id")
LONG_COLUMNS = ("subject", "level", "grade")
EXCEL_SUFFIXES = (".xlsx", ".xlsm")


@dataclass(frozen=True)
class GradeEntry:
    """One cell of the table: the id as written, the VerSe label, the grade (None: not a grade)."""

    key: str
    label: int
    grade: int | None
    text: str  # the cell as written, for messages
    where: str  # "<table>: row 5, column L1_fx-g"
    row: str  # "<table>: row 5"


def _is_blank(value) -> bool:
    if value is None:
        return True
    if isinstance(value, float) and math.isnan(value):
        return True
    return isinstance(value, str) and not value.strip()


def _cell_text(value) -> str:
    if isinstance(value, float) and value == int(value):
        return str(int(value))
    return str(value).strip()


def parse_grade(value, where: str) -> int | None:
    """A Genant grade 0-3 from a cell; None for text that is not a number; refuses other numbers."""
    text = str(value).strip()
    try:
        number = float(text)
    except ValueError:
        return None
    if not math.isfinite(number) or number != int(number) or int(number) not in GRADES:
        raise DatasetError(f"{where}: grade {text!r} is not an integer 0-3 (expected a Genant grade, "
                           "or an empty cell where the level was not graded)")
    return int(number)


def _level_label(text, where: str) -> int:
    text = str(text).strip()
    if re.fullmatch(r"\d+\.0*", text):  # 20.0: how a spreadsheet may store the label 20
        text = text.split(".")[0]
    try:
        return label_from_level(text)
    except VfnbError as exc:
        raise DatasetError(f"{where}: {exc}") from None


def _sheets(path: Path) -> list:
    """The table's sheets as data frames of text cells (one for CSV)."""
    import pandas as pd

    if not path.is_file():
        raise DatasetError(f"{path}: grade table not found")
    try:
        if path.suffix.lower() in EXCEL_SUFFIXES:
            sheets = list(pd.read_excel(path, sheet_name=None, dtype=object).values())
        elif path.suffix.lower() == ".xls":
            raise DatasetError(f"{path}: the old Excel format .xls is not read; save the sheet as .xlsx or CSV")
        else:
            sheets = [pd.read_csv(path, dtype=str, keep_default_na=False, encoding="utf-8-sig")]
    except DatasetError:
        raise
    except Exception as exc:  # pandas, openpyxl, zipfile and the csv parser raise their own types
        raise DatasetError(f"{path}: cannot read the grade table ({type(exc).__name__}: {exc}); expected a CSV "
                           "file or an Excel workbook (.xlsx) with a header row") from None
    for sheet in sheets:
        sheet.columns = [str(c).strip() for c in sheet.columns]
    return sheets


def _form(columns) -> str | None:
    lower = {c.lower() for c in columns}
    if set(LONG_COLUMNS) <= lower:
        return "long"
    if lower & set(WIDE_ID_COLUMNS) and any(c.endswith(WIDE_SUFFIX) for c in lower):
        return "wide"
    return None


def read_grade_table(path) -> list[GradeEntry]:
    """Every graded (or marked) cell of a wide or long grade table, in table order.

    Raises :class:`DatasetError` naming the table (and row and column) for a file
    that cannot be read, columns of neither form, an unknown level, a row with
    grades but no id, and a number that is not a grade 0-3.
    """
    path = Path(path)
    sheets = _sheets(path)
    for table in sheets:
        form = _form(table.columns)
        if form == "long":
            return _read_long(path, table)
        if form == "wide":
            return _read_wide(path, table)
    columns = list(sheets[0].columns) if sheets else []
    shown = ", ".join(columns[:8]) + (", ..." if len(columns) > 8 else "")
    raise DatasetError(f"{path}: columns [{shown}] are neither the wide form (an id column verse_ID or "
                       f"subject_ID and <level>{WIDE_SUFFIX} columns such as T12{WIDE_SUFFIX}) nor the long form "
                       "(subject, level, grade)")


def _read_long(path: Path, table) -> list[GradeEntry]:
    lower = {c.lower(): c for c in table.columns}
    entries = []
    for i, row in enumerate(table.to_dict("records")):
        where = f"{path}: row {i + 2}"  # 1-based, after the header line
        subject, level, grade = (row[lower[c]] for c in LONG_COLUMNS)
        if _is_blank(subject) and _is_blank(level) and _is_blank(grade):
            continue
        if _is_blank(subject) or _is_blank(level):
            raise DatasetError(f"{where}: empty subject or level (expected e.g. sub-verse004,T12,1)")
        if _is_blank(grade):
            continue
        label = _level_label(level, where)
        cell = f"{where}, column {lower['grade']}"
        entries.append(GradeEntry(_cell_text(subject), label, parse_grade(grade, cell), _cell_text(grade), cell,
                                  where))
    return entries


def _read_wide(path: Path, table) -> list[GradeEntry]:
    lower = {c.lower(): c for c in table.columns}
    id_columns = [lower[c] for c in WIDE_ID_COLUMNS if c in lower]
    grade_columns = [c for c in table.columns if c.lower().endswith(WIDE_SUFFIX)]
    labels = {}
    for column in grade_columns:
        labels[column] = _level_label(column[: -len(WIDE_SUFFIX)], f"{path}: column {column!r}")
    entries = []
    for i, row in enumerate(table.to_dict("records")):
        where = f"{path}: row {i + 2}"
        ids = [row[c] for c in id_columns if not _is_blank(row[c])]
        filled = [c for c in grade_columns if not _is_blank(row[c])]
        if not ids:
            if filled:
                raise DatasetError(f"{where}: grades in {filled[0]} but no id in {' or '.join(id_columns)}")
            continue  # a blank line, or a footnote
        key = _cell_text(ids[0])
        for column in filled:
            cell = f"{where}, column {column}"
            entries.append(GradeEntry(key, labels[column], parse_grade(row[column], cell), _cell_text(row[column]),
                                      cell, where))
    return entries
