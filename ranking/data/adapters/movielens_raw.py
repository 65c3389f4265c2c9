"""Read MovieLens's raw files into arrays: MovieLens-1M (GroupLens's ``::``
format, latin-1) and MovieLens-100K (RecBole's atomic TSV files with typed
headers). The protocol and the dataset directory: :mod:`ranking.data.adapters.movielens`.

A malformed line (wrong field count, a field that is not a number, an unknown
gender or age code, a negative id) raises :class:`~ranking.data.errors.DataError`
naming the file, column and line (0-based, the header not counted). The
ratings file (a million lines) is parsed by pyarrow's CSV reader; only on a
failure are its lines scanned in Python to name the first bad one.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv

from ranking.data.adapters.raw_csv import fail_first
from ranking.data.errors import DataError

log = logging.getLogger("ranking")

AGE_BRACKETS = (18, 25, 35, 45, 50, 56)  # lower bounds of brackets 1..6 (0: under 18)
ML1M_AGES = {1: 0, 18: 1, 25: 2, 35: 3, 45: 4, 50: 5, 56: 6}
ML1M_OCCUPATIONS = 21
GENDERS = {"M": 0, "F": 1}
YEAR_IN_TITLE = re.compile(r"\((\d{4})\)\s*$")


@dataclass(frozen=True)
class Raw:
    """A MovieLens release read into arrays (ratings in file line order).

    Ratings [R]: ``user``, ``item``, ``rating``, ``ts`` int64.
    Users [U]: ``user_ids`` and code arrays ``gender``, ``age``, ``occupation``
    (int64) and ``zip`` (str). Movies [M]: ``item_ids``, ``year`` (int64,
    0 = unknown) and ``genres`` (a list of genre codes per movie).
    """

    name: str
    user: np.ndarray
    item: np.ndarray
    rating: np.ndarray
    ts: np.ndarray
    users: dict[str, np.ndarray]
    item_ids: np.ndarray
    year: np.ndarray
    genres: list[list[int]]
    genre_names: list[str]
    year_values: list[int]
    occupation_names: list[str] | None


def _lines(path: Path, sep: str, n_fields: int, encoding: str, skip_header: bool = False):
    """(0-based row, fields) per line; a line without ``n_fields`` fields is an error."""
    with open(path, encoding=encoding, newline="") as f:
        if skip_header:
            f.readline()
        for row, line in enumerate(f):
            line = line.rstrip("\r\n")
            if not line:
                continue
            fields = line.split(sep)
            if len(fields) != n_fields:
                raise DataError(
                    f"expected {n_fields} fields separated by {sep!r}, found {len(fields)}",
                    path,
                    row=row,
                    value=line,
                )
            yield row, fields


def _int(path: Path, row: int, column: str, text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise DataError("not an integer", path, column, row, text) from None


def _number(path: Path, row: int, column: str, text: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise DataError("not a number", path, column, row, text) from None


def _check_ints(path: Path, columns: dict[str, np.ndarray], min_value: dict[str, int]) -> None:
    for name, low in min_value.items():
        fail_first(f"below {low}", path, name, columns[name] < low, columns[name])


def _ratings(path: Path, sep: str, header: bool) -> dict[str, np.ndarray]:
    """user, item, rating, ts of a ratings file, vectorised (pyarrow's CSV reader);
    on a parse failure the lines are scanned to name the first bad one."""
    fields = ["user", "item", "rating", "ts"]
    if sep == "::":  # one-character delimiter: the empty columns between the colons
        cols = ["user", "_a", "item", "_b", "rating", "_c", "ts"]
        parse = pacsv.ParseOptions(delimiter=":")
    else:
        cols, parse = fields, pacsv.ParseOptions(delimiter=sep)
    types = {"user": pa.int64(), "item": pa.int64(), "rating": pa.float64(), "ts": pa.float64()}
    try:
        t = pacsv.read_csv(
            path,
            read_options=pacsv.ReadOptions(column_names=cols, skip_rows=1 if header else 0),
            parse_options=parse,
            convert_options=pacsv.ConvertOptions(column_types=types, include_columns=fields),
        )
        if any(t.column(k).null_count for k in fields):
            raise ValueError("empty field")
        out = {k: t.column(k).to_numpy() for k in fields}
    except (pa.ArrowInvalid, ValueError):
        for row, parts in _lines(path, sep, 4, "latin-1", header):
            for name, text in zip(fields, parts, strict=True):
                _number(path, row, name, text)
        raise DataError("could not be parsed as a ratings file", path) from None
    for name in ("rating", "ts"):
        v = out[name]
        frac = np.flatnonzero(v != np.floor(v))
        if len(frac):
            raise DataError("not a whole number", path, name, int(frac[0]), float(v[frac[0]]))
        out[name] = v.astype(np.int64)
    _check_ints(path, out, {"user": 0, "item": 0, "rating": 0, "ts": 0})
    return out


def _age_bracket(age: int) -> int:
    return int(np.searchsorted(AGE_BRACKETS, age, side="right"))


def _codes(values: list[str]) -> tuple[list[str], dict[str, int]]:
    names = sorted(set(values))
    return names, {v: i for i, v in enumerate(names)}


def read_ml1m(root: Path) -> Raw:
    """MovieLens-1M: ``ratings.dat``, ``users.dat``, ``movies.dat`` (``::``, latin-1)."""
    r = _ratings(root / "ratings.dat", "::", header=False)
    path = root / "users.dat"
    users: dict[str, list] = {"user_ids": [], "gender": [], "age": [], "occupation": [], "zip": []}
    for row, (uid, gender, age, occ, zip_code) in _lines(path, "::", 5, "latin-1"):
        if gender not in GENDERS:
            raise DataError("gender is not M or F", path, "gender", row, gender)
        a = _int(path, row, "age", age)
        if a not in ML1M_AGES:
            raise DataError(f"age is not one of {sorted(ML1M_AGES)}", path, "age", row, a)
        o = _int(path, row, "occupation", occ)
        if not 0 <= o < ML1M_OCCUPATIONS:
            raise DataError(
                f"occupation outside 0..{ML1M_OCCUPATIONS - 1}", path, "occupation", row, o
            )
        users["user_ids"].append(_int(path, row, "user_id", uid))
        users["gender"].append(GENDERS[gender])
        users["age"].append(ML1M_AGES[a])
        users["occupation"].append(o)
        users["zip"].append(zip_code)
    path = root / "movies.dat"
    ids, years, genres = [], [], []
    unknown_years: list[tuple[int, str]] = []
    for row, (mid, title, genre) in _lines(path, "::", 3, "latin-1"):
        ids.append(_int(path, row, "movie_id", mid))
        year = YEAR_IN_TITLE.search(title)  # "Toy Story (1995)"
        years.append(int(year.group(1)) if year else 0)
        if not year:
            unknown_years.append((row, title))
        genres.append(genre.split("|") if genre else [])
    _warn_unknown_years(path, "title", unknown_years)
    return _assemble("movielens_1m", r, users, ids, years, genres, None)


def _check_header(path: Path, want: list[str]) -> None:
    """RecBole's typed header (``user_id:token\\t...``) must name ``want``."""
    with open(path, encoding="latin-1") as f:
        got = [c.split(":")[0] for c in f.readline().rstrip("\r\n").split("\t")]
    if got != want:
        raise DataError(f"header is not {want}", path, value=got)


def read_ml100k(root: Path) -> Raw:
    """MovieLens-100K in RecBole's atomic files ``ml-100k.inter/.user/.item`` (TSV,
    typed headers)."""
    path = root / "ml-100k.inter"
    _check_header(path, ["user_id", "item_id", "rating", "timestamp"])
    r = _ratings(path, "\t", header=True)
    path = root / "ml-100k.user"
    _check_header(path, ["user_id", "age", "gender", "occupation", "zip_code"])
    rows = list(_lines(path, "\t", 5, "latin-1", skip_header=True))
    occ_names, occ_code = _codes([f[3] for _, f in rows])
    users: dict[str, list] = {"user_ids": [], "gender": [], "age": [], "occupation": [], "zip": []}
    for row, (uid, age, gender, occ, zip_code) in rows:
        if gender not in GENDERS:
            raise DataError("gender is not M or F", path, "gender", row, gender)
        users["user_ids"].append(_int(path, row, "user_id", uid))
        users["gender"].append(GENDERS[gender])
        users["age"].append(_age_bracket(_int(path, row, "age", age)))
        users["occupation"].append(occ_code[occ])
        users["zip"].append(zip_code)
    path = root / "ml-100k.item"
    _check_header(path, ["item_id", "movie_title", "release_year", "class"])
    ids, years, genres = [], [], []
    unknown_years: list[tuple[int, str]] = []
    for row, (mid, _title, year, genre) in _lines(path, "\t", 4, "latin-1", skip_header=True):
        ids.append(_int(path, row, "item_id", mid))
        # RecBole's file writes two unknown years as text ('unkonwn', 'V'): the
        # year feature is then 0 (unknown), said in the log, never a guess
        if year.isdigit():
            years.append(int(year))
        else:
            years.append(0)
            unknown_years.append((row, year))
        genres.append(genre.split(" ") if genre else [])
    _warn_unknown_years(path, "release_year", unknown_years)
    return _assemble("movielens_100k", r, users, ids, years, genres, occ_names)


def _warn_unknown_years(path: Path, column: str, rows: list[tuple[int, str]]) -> None:
    """Movies whose year cannot be read get year 0 (unknown): said, never guessed."""
    if rows:
        log.warning(
            "%s, column %r: %d rows are not a year (first: row %d, value %r); "
            "their year feature is 0 (unknown)",
            path,
            column,
            len(rows),
            *rows[0],
        )


def _assemble(name, r, users, ids, years, genres, occ_names) -> Raw:
    genre_names, genre_code = _codes([g for gs in genres for g in gs])
    year_values = sorted({y for y in years if y})
    year_code = {y: i + 1 for i, y in enumerate(year_values)}
    return Raw(
        name=name,
        user=r["user"],
        item=r["item"],
        rating=r["rating"],
        ts=r["ts"],
        users={
            "user_ids": np.asarray(users["user_ids"], np.int64),
            "gender": np.asarray(users["gender"], np.int64),
            "age": np.asarray(users["age"], np.int64),
            "occupation": np.asarray(users["occupation"], np.int64),
            "zip": np.asarray(users["zip"], object),
        },
        item_ids=np.asarray(ids, np.int64),
        year=np.asarray([year_code.get(y, 0) for y in years], np.int64),
        genres=[[genre_code[g] for g in gs] for gs in genres],
        genre_names=genre_names,
        year_values=year_values,
        occupation_names=occ_names,
    )


READERS = {"movielens-1m": read_ml1m, "movielens-100k": read_ml100k}
#: Each source's (ratings, users, movies) files.
FILES = {
    "movielens-1m": ("ratings.dat", "users.dat", "movies.dat"),
    "movielens-100k": ("ml-100k.inter", "ml-100k.user", "ml-100k.item"),
}
