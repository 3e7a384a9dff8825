"""A table's files: a path (one file, a folder of part files, or a glob; local, s3:// or gs://)
expanded into its shards, each checked before any worker starts. Only file footers (Parquet)
or first blocks (CSV) are read here.

    shards = Shards.open("data/events/*.parquet")
    shards.files, shards.format, shards.schema, shards.bytes

Bad input is one DataError naming the file: no files, a corrupt file, columns that differ
from the first shard's.
"""

import codecs
import fnmatch
import hashlib
import os
import re
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from typing import Any, Literal

import pyarrow as pa
import pyarrow.csv
import pyarrow.fs
import pyarrow.parquet as pq
from pydantic import BaseModel, ConfigDict, Field, field_validator

from kiln.data.stream import root_cause
from kiln.errors import DataError

Format = Literal["parquet", "csv"]
COMPRESSED = ("", ".gz", ".bz2", ".zst", ".lz4")  # what pyarrow and Ray Data decompress by name
SUFFIXES: dict[Format, tuple[str, ...]] = {
    "parquet": (".parquet", ".pq"),
    "csv": tuple(
        kind + packed for kind in (".csv", ".tsv", ".tab", ".txt") for packed in COMPRESSED
    ),
}
TAB_SEPARATED = tuple(kind + packed for kind in (".tsv", ".tab") for packed in COMPRESSED)
GLOB = set("*?[")


class CsvDialect(BaseModel):
    """How a CSV file is written (a dataset's `csv` param): what separates its fields, what
    marks a decimal (a comma in many European exports, with `;` between fields), its text
    encoding, and the values that mark a missing one beside pyarrow's (empty, NA, NaN, null,
    N/A, ...): `?` in many public datasets. A file without a header row (UCI's `adult.data`)
    names its columns in `columns`, in order: its first line is then data. Files named
    `.tsv` or `.tab` are read with a tab between fields unless `delimiter` says otherwise."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    delimiter: str = Field(",", min_length=1, max_length=1)
    decimal: str = Field(".", min_length=1, max_length=1)
    encoding: str = "utf8"
    missing: list[str] = Field(default_factory=list)
    columns: list[str] | None = Field(None, min_length=1)

    @field_validator("columns")
    @classmethod
    def _distinct(cls, columns: list[str] | None) -> list[str] | None:
        if columns and (twice := sorted({c for c in columns if columns.count(c) > 1})):
            raise ValueError(f"column names must differ; given twice: {', '.join(twice)}")
        return columns

    @field_validator("encoding")
    @classmethod
    def _known(cls, encoding: str) -> str:
        try:
            codecs.lookup(encoding)
        except LookupError:
            raise ValueError(
                f"unknown encoding {encoding!r} (utf8, latin-1, cp1252, ...)"
            ) from None
        return encoding

    def for_files(self, paths: Sequence[str]) -> "CsvDialect":
        """This dialect as it reads `paths`: with a tab between fields where they are all named
        as tab-separated and no delimiter was given."""
        named = "delimiter" in self.model_fields_set
        if named or not paths or not all(p.lower().endswith(TAB_SEPARATED) for p in paths):
            return self
        return self.model_copy(update={"delimiter": "\t"})

    def options(self, floats: Sequence[str] = ()) -> dict[str, Any]:
        """pyarrow's reader options, as pyarrow.csv.open_csv and ray.data.read_csv take them.
        `floats`: columns read as float64 whatever their first rows hold (pyarrow infers a
        column's type from its first block: whole numbers there and a decimal further down
        would fail the read)."""
        convert = pyarrow.csv.ConvertOptions(
            decimal_point=self.decimal, column_types={name: pa.float64() for name in floats}
        )
        if self.missing:
            convert.null_values = [*convert.null_values, *self.missing]
            convert.strings_can_be_null = True  # a text column's `?` is missing too
        return {
            "read_options": pyarrow.csv.ReadOptions(
                encoding=self.encoding, column_names=self.columns
            ),
            "parse_options": pyarrow.csv.ParseOptions(delimiter=self.delimiter),
            "convert_options": convert,
        }


@dataclass(frozen=True)
class Shards:
    path: str  # as the user wrote it
    files: list[str]  # what Ray Data reads: local paths or URIs, sorted
    format: Format
    schema: pa.Schema  # the first shard's (every shard has the same columns)
    bytes: int
    fingerprint: str  # of the files' names, sizes and modification times
    dialect: CsvDialect = CsvDialect()  # CSV only
    parts_differ: bool = False  # Parquet parts whose schemas differ (column order, int/double)
    floats: tuple[str, ...] = ()  # CSV columns read as float64 (CsvDialect.options)

    @classmethod
    def open(cls, path: str, dialect: CsvDialect = CsvDialect()) -> "Shards":
        filesystem, found = list_files(path, SUFFIXES["parquet"] + SUFFIXES["csv"])
        if not found:
            raise DataError(f"no Parquet or CSV files in {path}")
        files = sorted(found, key=lambda info: info.path)
        fmt = _format(path, files, filesystem)
        dialect = dialect.for_files([info.path for info in files])
        schemas = _read_footers(filesystem, files, fmt, dialect)
        schema = _same_columns(files, schemas, fmt)
        prefix = scheme(path)
        return cls(
            path=path,
            files=[prefix + info.path for info in files],
            format=fmt,
            schema=schema,
            bytes=sum(info.size or 0 for info in files),
            fingerprint=files_fingerprint(files),
            dialect=dialect,
            parts_differ=fmt == "parquet" and any(not s.equals(schemas[0]) for s in schemas),
        )

    def dataset(self, columns: list[str]):
        """The shards' rows as a ray.data.Dataset of only the columns named (the selection is
        pushed down to the reader). A read task per file at least: Ray Data sizes reads by
        bytes, and a few small files read as one block hand one worker everything and
        pipeline nothing."""
        import ray.data

        blocks = len(self.files)
        if self.format == "parquet":
            # Ray 2.60's V2 Parquet reader (a ListFiles task, a footer-reader actor, then
            # reads) took 19 s to a Train worker's first batch on 2 CPUs against 7 s for V1,
            # and grouped 10 files into 3 read tasks: Kiln reads its listed files with V1.
            context = ray.data.DataContext.get_current()
            v2, context.use_datasource_v2 = context.use_datasource_v2, False
            # parts that differ are read with their unified schema (int64 and double: double)
            promoted = {"schema": self.schema} if self.parts_differ else {}
            try:  # the files are listed and known to be Parquet, whatever their names
                dataset = ray.data.read_parquet(
                    self.files, override_num_blocks=blocks, file_extensions=None, **promoted
                )
            finally:
                context.use_datasource_v2 = v2
        else:
            options = self.dialect.options(self.floats)
            dataset = ray.data.read_csv(self.files, **options, override_num_blocks=blocks)
        return dataset.select_columns(columns)

    def reading_floats(self, columns: Sequence[str]) -> "Shards":
        """These shards with those of `columns` (a table's number features) whose first rows
        hold whole numbers or nothing read as float64: pyarrow types a CSV column by its
        first block, and a decimal (or a first value) further down would fail the read."""
        types = {name: self.schema.field(name).type for name in columns}
        widened = [n for n, t in types.items() if pa.types.is_integer(t) or pa.types.is_null(t)]
        return replace(self, floats=tuple(widened))

    def explain(self, error: Exception) -> str:
        """What failed in a read of these shards, in one line. Ray Data's CSV reader drops
        pyarrow's message (the column, the row, the value): the file it names is read again
        here, up to the error."""
        failed = re.search(r"Failed to read CSV file: (.+?)\. Please check", str(error))
        file = next((f for f in self.files if failed and f.endswith(failed[1])), None)
        if self.format != "csv" or file is None:
            return root_cause(error)
        uri = file if "://" in file else os.path.abspath(file)
        filesystem, inside = pyarrow.fs.FileSystem.from_uri(uri)
        try:
            with filesystem.open_input_stream(inside) as f:
                for _ in pyarrow.csv.open_csv(f, **self.dialect.options(self.floats)):
                    pass
        except pa.ArrowInvalid as invalid:
            return f"{file}: {self._named(str(invalid).strip().splitlines()[0])}{_hint(invalid)}"
        return root_cause(error)

    def _named(self, message: str) -> str:
        """pyarrow's "CSV column #3" with the column's name."""
        names = self.schema.names

        def name(found: re.Match) -> str:
            index = int(found[1])
            return f"{found[0]} ({names[index]!r})" if index < len(names) else found[0]

        return re.sub(r"CSV column #(\d+)", name, message)

    def validation(self, val_path: str | None, columns: list[str]) -> "Shards | None":
        """The user's own validation files (`data.val_path`), read as these are (dialect,
        numbers read as floats) and holding `columns`; None without them."""
        if val_path is None:
            return None
        val = Shards.open(val_path, self.dialect)
        val.require(columns)
        return val.reading_floats(list(self.floats))

    def require(self, columns: list[str]) -> None:
        if missing := [c for c in columns if c not in self.schema.names]:
            names = self.schema.names
            hint = ""
            if self.format == "csv" and len(names) == 1 and set(names[0]) & set("\t;|,"):
                hint = _delimiter_hint(self.dialect)  # the whole header read as one name
            elif self.format == "csv" and any(is_number(name) for name in names):
                hint = " (a number as a name: name a headerless file's in data.params.csv.columns)"
            raise DataError(
                f"{self.path} has no column {missing[0]!r}; columns: {', '.join(names)}{hint}"
            )


def is_number(text: str) -> bool:
    """Whether a CSV field reads as a number (pyarrow's sense, give or take its spellings)."""
    try:
        float(text)
    except ValueError:
        return False
    return True


def scheme(path: str) -> str:
    """ "s3://" for "s3://bucket/key", "" for a local path."""
    return path.split("://", 1)[0] + "://" if "://" in path else ""


def files_fingerprint(files: list[pyarrow.fs.FileInfo]) -> str:
    """Of the files' names, sizes and modification times: what changes when the data do."""
    digest = hashlib.sha256()
    for info in files:
        digest.update(f"{info.path}\0{info.size}\0{info.mtime_ns}\n".encode())
    return digest.hexdigest()


def list_files(
    path: str, suffixes: tuple[str, ...]
) -> tuple[pyarrow.fs.FileSystem, list[pyarrow.fs.FileInfo]]:
    """The files a path names (a file, a folder searched recursively, or a glob) that end in
    one of `suffixes`; a missing path is a DataError."""
    try:
        if "://" in path:
            filesystem, base = pyarrow.fs.FileSystem.from_uri(path)
        else:
            filesystem, base = pyarrow.fs.LocalFileSystem(), os.path.abspath(path)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError, OSError) as e:
        raise DataError(f"cannot open {path}: {e}") from None
    pattern = None
    if GLOB & set(base):
        pattern, base = base, _glob_root(base)
    info = filesystem.get_file_info(base)
    if info.type == pyarrow.fs.FileType.NotFound:
        raise DataError(f"file not found: {path}")
    if info.type == pyarrow.fs.FileType.File:
        return filesystem, [info]
    listed = filesystem.get_file_info(pyarrow.fs.FileSelector(base, recursive=True))
    data_files = [
        i
        for i in listed
        if i.type == pyarrow.fs.FileType.File
        and not os.path.basename(i.path).startswith(("_", "."))  # _SUCCESS, .crc, ...
        and i.path.lower().endswith(suffixes)
        and (pattern is None or fnmatch.fnmatch(i.path, pattern))
    ]
    return filesystem, data_files


def _glob_root(pattern: str) -> str:
    """The folder above a glob's first wildcard."""
    parts = pattern.split("/")
    fixed = [p for p in parts[: next(i for i, p in enumerate(parts) if GLOB & set(p))]]
    return "/".join(fixed) or "/"


def _format(
    path: str, files: list[pyarrow.fs.FileInfo], filesystem: pyarrow.fs.FileSystem
) -> Format:
    """By suffix; a file named otherwise (`adult.data`, `ratings.csv.gz`) by its first bytes."""
    kinds = {_suffix_format(i.path) or _sniffed_format(filesystem, i.path) for i in files}
    if len(kinds) > 1:
        raise DataError(f"{path} mixes Parquet and CSV files; give one format")
    return kinds.pop()


def _suffix_format(path: str) -> Format | None:
    return next((kind for kind, ends in SUFFIXES.items() if path.lower().endswith(ends)), None)


def _sniffed_format(filesystem: pyarrow.fs.FileSystem, path: str) -> Format:
    """Parquet begins with its magic number, `PAR1`; anything else is read as (possibly
    compressed) CSV, whose reader says what is wrong with it."""
    try:
        with filesystem.open_input_file(path) as f:
            return "parquet" if f.read(4) == b"PAR1" else "csv"
    except OSError as e:
        raise DataError(f"cannot read {path}: {e}") from None


def _read_footers(
    filesystem: pyarrow.fs.FileSystem,
    files: list[pyarrow.fs.FileInfo],
    fmt: Format,
    dialect: CsvDialect,
) -> list[pa.Schema]:
    """Each file's schema, read in parallel: object stores answer many small requests at
    once."""

    def read(info: pyarrow.fs.FileInfo) -> pa.Schema:
        try:
            if fmt == "parquet":
                with filesystem.open_input_file(info.path) as f:
                    return pq.read_schema(f)
            with filesystem.open_input_stream(info.path) as f:
                schema = pyarrow.csv.open_csv(f, **dialect.options()).schema
            # pyarrow reads a column it cannot decode as bytes, and a header as a name that
            # fails later: both are text in another encoding.
            if raw := [field.name for field in schema if pa.types.is_binary(field.type)]:
                raise DataError(f"{info.path}: column {raw[0]!r} is {_not_decoded(dialect)}")
            return schema
        except UnicodeDecodeError:
            raise DataError(f"{info.path}: its header is {_not_decoded(dialect)}") from None
        except (pa.ArrowException, OSError) as e:
            what = "Parquet" if fmt == "parquet" else "CSV"
            reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            if "Expected 1 columns" in reason:
                reason += _delimiter_hint(dialect)
            elif dialect.columns and "Expected" in reason:
                reason += f"; data.params.csv.columns names {len(dialect.columns)}"
            raise DataError(f"{info.path}: not a readable {what} file ({reason})") from None

    with ThreadPoolExecutor(max_workers=min(32, len(files))) as pool:
        return list(pool.map(read, files))


def _alike(a: pa.DataType, b: pa.DataType) -> bool:
    """The same type, or two kinds of number (or no value at all: a part whose column is
    empty)."""
    numeric = (pa.types.is_integer, pa.types.is_floating, pa.types.is_null)
    return a == b or all(any(is_kind(t) for is_kind in numeric) for t in (a, b))


def _delimiter_hint(dialect: CsvDialect) -> str:
    return f"; fields not separated by {dialect.delimiter!r} need data.params.csv.delimiter"


def _hint(invalid: pa.ArrowInvalid) -> str:
    if "conversion error" not in str(invalid):
        return ""
    return "; a value that marks a missing one goes in data.params.csv.missing (e.g. ['?'])"


def _not_decoded(dialect: CsvDialect) -> str:
    return (
        f"not {dialect.encoding} text; name its encoding in data.params.csv.encoding, e.g. latin-1"
    )


def _same_columns(
    files: list[pyarrow.fs.FileInfo], schemas: list[pa.Schema], fmt: Format
) -> pa.Schema:
    """Every shard has the first one's columns, in any order (they are read by name), and,
    for Parquet, their types, but for numbers: pandas writes a column of whole numbers as
    int64 in a part without a missing value and as double in one with. (CSV types are
    inferred per file, so only the names must agree.)"""
    first = schemas[0]
    for info, schema in zip(files[1:], schemas[1:], strict=True):
        if sorted(schema.names) != sorted(first.names):
            raise DataError(
                f"{info.path}: columns {schema.names} differ from {files[0].path}'s {first.names}"
            )
        if fmt == "csv":
            continue
        changed = next((f for f in schema if not _alike(first.field(f.name).type, f.type)), None)
        if changed is not None:
            raise DataError(
                f"{info.path}: column {changed.name!r} is {changed.type}, "
                f"but {first.field(changed.name).type} in {files[0].path}"
            )
    if fmt == "csv":
        return first
    return pa.unify_schemas(schemas, promote_options="permissive")  # in the first's order
