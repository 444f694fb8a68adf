"""Data from the user's own files, read into examples of one kind and split into "train" and
"validation" (the reading side; `text` tokenizes the examples and `lm_formats` makes the rows).

`config.data.files` (and `validation_files`) is a path, a glob, or a comma-separated list of them.
A directory stands for the files in it (recursively, sorted, hidden ones left out: those with an
extension below, or every one when `config.data.file_reader` names their reader), or, when
Hugging Face `datasets` saved it (`save_to_disk`), for that dataset. Each file is read by
extension, or by `config.data.file_reader`:
- `jsonl` (`.jsonl`, `.json`): one JSON object per line, read by `pyarrow.json`;
- `parquet` (`.parquet`): read by `pyarrow.parquet`;
- `text` (`.txt`): the whole file is one document (kind "text");
- `text_lines`: each line is one document (a blank line an empty one, dropped with a count);
- `hf_dataset`: a directory `datasets.Dataset.save_to_disk` wrote (one split of a DatasetDict:
  its `DIR/train` directory).

Every example is of one `config.data.kind`, read from the columns `config.data.columns` names:
- `text`: a document (`columns.text`);
- `prompt_completion`: a prompt and its completion (`columns.prompt`, `columns.completion`), the
  loss on the completion only; the two texts are joined as they are, so a separator belongs in
  the data;
- `messages`: a conversation (`columns.messages`: a list of {"role", "content"} with roles in
  ROLES), rendered by the tokenizer's chat template, the loss on the assistant's turns only.
An empty kind is chosen from the first file's columns: messages, else prompt and completion, else
text.

Splits: "train" is `files`; "validation" is `validation_files`, or else, when
`validation_fraction` > 0, round(fraction · N) of the N examples of `files` (at least one, and
at least one left to train on) drawn by a permutation seeded with VALIDATION_SEED: the same files
always hold out the same examples, whatever the run's seed or tokenizer.

Bad data is refused in one line naming the file (and its line or row) and the fix.
"""

from __future__ import annotations

import dataclasses
import functools
import glob
import hashlib
import json
import os
from typing import Any

import ml_collections
import numpy as np
import pyarrow as pa
from etils import epath

from jaxdistill.errors import DistillError

READERS = ("jsonl", "parquet", "text", "text_lines", "hf_dataset")
EXTENSIONS = {".jsonl": "jsonl", ".json": "jsonl", ".parquet": "parquet", ".txt": "text"}
KINDS = ("text", "prompt_completion", "messages")
ROLES = ("system", "user", "assistant", "tool")
SPLITS = ("train", "validation")
# Seeds the permutation that holds out config.data.validation_fraction of the examples: fixed, so
# the held-out examples depend on the files alone.
VALIDATION_SEED = 20240229
# The config.data keys the examples depend on, with the values a config without them means.
KEYS = {"files": "", "validation_files": "", "validation_fraction": 0.0, "file_reader": "",
        "kind": "", "columns": {"text": "text", "prompt": "prompt", "completion": "completion",
                                "messages": "messages"}}
# The columns each kind reads, by their key in config.data.columns, in the order kinds are tried.
COLUMNS = {"messages": ("messages",), "prompt_completion": ("prompt", "completion"),
           "text": ("text",)}


def used(data_config: ml_collections.ConfigDict) -> bool:
    """Whether the data comes from files (config.data.files) rather than a TFDS dataset."""
    return bool(data_config.get("files"))


def settings(data_config: ml_collections.ConfigDict) -> dict[str, Any]:
    """The settings the examples depend on (config.data.KEYS), defaults filled in."""
    found = {key: data_config.get(key, default) for key, default in KEYS.items()}
    columns = found["columns"]
    found["columns"] = {**KEYS["columns"],
                        **(columns.to_dict() if hasattr(columns, "to_dict") else columns)}
    return found


def split_names(data_config: ml_collections.ConfigDict) -> tuple[str, ...]:
    held_out = data_config.get("validation_files") or data_config.get("validation_fraction")
    return SPLITS if held_out else SPLITS[:1]


@dataclasses.dataclass(frozen=True)
class Origin:
    """Where an example was read: its file, how, and its row there (0-based)."""

    path: str
    reader: str
    row: int

    def __str__(self) -> str:
        if self.reader == "text":
            return self.path
        if self.reader in ("jsonl", "text_lines"):
            return f"{self.path} line {_line_number(self.path, self.reader, self.row)}"
        return f"{self.path} row {self.row}"


def _line_number(path: str, reader: str, row: int) -> int:
    """The 1-based line of example `row` (pyarrow's JSON reader skips blank lines)."""
    with epath.Path(path).open() as f:
        seen = -1
        for number, line in enumerate(f, 1):
            seen += bool(line.strip()) or reader == "text_lines"
            if seen == row:
                return number
    return row + 1


@dataclasses.dataclass(frozen=True)
class Examples:
    """A split's examples, in file order: a text (kind "text"), a (prompt, completion) pair or a
    conversation (a tuple of messages) each, and where each was read."""

    kind: str
    values: tuple
    origins: tuple[Origin, ...]

    def subset(self, keep: np.ndarray) -> Examples:
        return Examples(self.kind, tuple(v for v, k in zip(self.values, keep) if k),
                        tuple(o for o, k in zip(self.origins, keep) if k))

    def texts(self) -> list[str]:
        """Each example's text, what a tokenizer is trained on: the document, the prompt then the
        completion, or the messages' contents one per line."""
        if self.kind == "text":
            return list(self.values)
        if self.kind == "prompt_completion":
            return [prompt + completion for prompt, completion in self.values]
        return ["\n".join(message["content"] for message in messages)
                for messages in self.values]


def examples(data_config: ml_collections.ConfigDict, split: str) -> Examples:
    """The examples of `split` ("train", or "validation" where the config holds some out)."""
    found = settings(data_config)
    names = split_names(data_config)
    if split not in names:
        hint = ("" if "validation" in names else "; hold some out with"
                " config.data.validation_fraction or config.data.validation_files")
        raise DistillError(f"the file data has the split{'s' * (len(names) > 1)}"
                           f" {', '.join(names)}, not {split!r}{hint}")
    return _split(ml_collections.FrozenConfigDict(found), split)


def train_texts(data_config: ml_collections.ConfigDict) -> list[str]:
    """The train split's texts (see `Examples.texts`), which a bpe tokenizer is trained on."""
    return examples(data_config, "train").texts()


def cache_directory(data_config: ml_collections.ConfigDict) -> epath.Path:
    """Where what is made from the files (a trained bpe tokenizer) is kept: under
    config.data.data_dir (else ~/.cache/jaxdistill), named by the train texts' SHA-256."""
    digest = hashlib.sha256()
    for text in train_texts(data_config):
        digest.update(text.encode())
        digest.update(b"\0")
    root = epath.Path(data_config.get("data_dir") or "~/.cache/jaxdistill").expanduser()
    return root / "files" / digest.hexdigest()[:16]


@functools.lru_cache(maxsize=8)
def _split(found: ml_collections.FrozenConfigDict, split: str) -> Examples:
    train = _read(found.files, "files", found.file_reader, found.kind, found.columns)
    if found.validation_files:
        return train if split == "train" else _read(
            found.validation_files, "validation_files", found.file_reader, train.kind,
            found.columns)
    if not found.validation_fraction:
        return train
    held = held_out(len(train.values), found.validation_fraction)
    return train.subset(held if split == "validation" else ~held)


def held_out(num_examples: int, fraction: float) -> np.ndarray:
    """Which of `num_examples` examples are held out for validation (a boolean mask)."""
    if not 0 < fraction < 1:
        raise DistillError(f"config.data.validation_fraction={fraction} must lie in [0, 1)")
    if num_examples < 2:
        raise DistillError(f"cannot hold out a validation fraction of {num_examples} example;"
                           " give more examples or config.data.validation_files")
    count = int(np.clip(round(fraction * num_examples), 1, num_examples - 1))
    held = np.zeros(num_examples, bool)
    held[np.random.default_rng(VALIDATION_SEED).permutation(num_examples)[:count]] = True
    return held


@functools.lru_cache(maxsize=8)
def _read(spec: str, key: str, file_reader: str, kind: str,
          columns: ml_collections.FrozenConfigDict) -> Examples:
    """Every example of the files `spec` names (config.data.`key`), of `kind` ("" to choose)."""
    if kind and kind not in KINDS:
        raise DistillError(f"unknown config.data.kind {kind!r}; choose one of {', '.join(KINDS)}"
                           " (or leave it empty to choose from the columns)")
    values, origins = [], []
    for path in paths(spec, key, file_reader):
        reader = _reader(path, file_reader)
        table = _table(path, reader, columns.text)
        if table.num_rows == 0:
            raise DistillError(f"{path} holds no examples; fill it or remove it from"
                               f" config.data.{key}")
        kind = kind or _kind(path, table.column_names, columns)
        found = [_column(table, path, reader, kind, name, columns[name])
                 for name in COLUMNS[kind]]
        rows = list(zip(*found)) if len(found) > 1 else found[0]
        if kind == "messages":
            rows = [_conversation(value, Origin(path, reader, row), columns.messages)
                    for row, value in enumerate(rows)]
        values += rows
        origins += [Origin(path, reader, row) for row in range(table.num_rows)]
    return Examples(kind, tuple(values), tuple(origins))


def paths(spec: str, key: str = "files", file_reader: str = "") -> list[str]:
    """The files (and `datasets` directories) that `spec` names, each once, in the order given
    (a glob's or a directory's files sorted)."""
    found = []
    for item in (part.strip() for part in spec.split(",")):
        if not item:
            continue
        if any(char in item for char in "*?["):
            matches = sorted(glob.glob(os.path.expanduser(item), recursive=True))
            if not matches:
                raise DistillError(f"config.data.{key}: {item!r} matches no file")
        elif not os.path.exists(os.path.expanduser(item)):
            raise DistillError(f"config.data.{key}: there is no file or directory {item!r}")
        else:
            matches = [os.path.expanduser(item)]
        for match in matches:
            found += (_files_in(match, key, file_reader)
                      if os.path.isdir(match) and not _saved_dataset(match) else [match])
    if not found:
        raise DistillError(f"config.data.{key}={spec!r} names no file")
    return list(dict.fromkeys(found))


def _files_in(directory: str, key: str, file_reader: str) -> list[str]:
    found = sorted(
        os.path.join(root, name) for root, dirs, names in os.walk(directory) for name in names
        if not name.startswith(".") and (file_reader or os.path.splitext(name)[1] in EXTENSIONS))
    if not found:
        raise DistillError(f"config.data.{key}: the directory {directory} holds no"
                           f" {'/'.join(EXTENSIONS)} file (name the reader of other files in"
                           " config.data.file_reader)")
    return found


def _saved_dataset(path: str) -> bool:
    """Whether Hugging Face `datasets` wrote the directory (a Dataset or a DatasetDict)."""
    return any(os.path.exists(os.path.join(path, name))
               for name in ("state.json", "dataset_dict.json"))


def _reader(path: str, file_reader: str) -> str:
    if file_reader:
        if file_reader not in READERS:
            raise DistillError(f"unknown config.data.file_reader {file_reader!r}; choose one of"
                               f" {', '.join(READERS)} (or leave it empty to read by extension)")
        return file_reader
    if os.path.isdir(path):
        return "hf_dataset"
    extension = os.path.splitext(path)[1]
    if extension not in EXTENSIONS:
        raise DistillError(f"cannot tell how to read {path} from its extension; name its reader"
                           f" in config.data.file_reader ({', '.join(READERS)})")
    return EXTENSIONS[extension]


def _table(path: str, reader: str, text_column: str) -> pa.Table:
    """The file's examples as an Arrow table (a text file's under the text column)."""
    if reader == "jsonl":
        return _json_lines(path)
    if reader == "parquet":
        import pyarrow.parquet as pq
        try:
            return pq.read_table(path)
        except (pa.ArrowException, OSError) as error:
            raise DistillError(f"cannot read {path} as Parquet: {_one_line(error)}") from None
    if reader == "hf_dataset":
        return _saved_table(path)
    try:
        with epath.Path(path).open() as f:
            if reader == "text":
                content = f.read()
                texts = [content] if content else []
            else:
                texts = [line.removesuffix("\n") for line in f]
    except UnicodeDecodeError as error:
        raise DistillError(f"{path} is not UTF-8 text ({error.reason} at byte {error.start});"
                           " convert it, or name its reader in config.data.file_reader") from None
    return pa.table({text_column: pa.array(texts, pa.string())})


def _json_lines(path: str) -> pa.Table:
    import pyarrow.json as pj
    try:
        try:
            with epath.Path(path).open("rb") as f:
                return pj.read_json(f)
        except pa.ArrowInvalid as error:
            if "straddl" not in str(error):
                raise
            # A line longer than pyarrow's block (1 MiB): read the file as one block.
            block = min(epath.Path(path).stat().length + 1, 2**31 - 1)
            with epath.Path(path).open("rb") as f:
                return pj.read_json(f, read_options=pj.ReadOptions(block_size=block))
    except pa.ArrowInvalid as error:
        if "Empty JSON file" in str(error):
            return pa.table({})
        bad = _bad_json_line(path)
        raise DistillError(bad or f"cannot read {path} as JSON lines: {_one_line(error)}; give"
                           " each key one type of value on every line") from None


def _bad_json_line(path: str) -> str | None:
    """The first line of `path` that is not a JSON object, in one line, or None."""
    with epath.Path(path).open() as f:
        for number, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                value = json.loads(line)
            except json.JSONDecodeError as error:
                return (f"{path} line {number} is not valid JSON ({error.msg} at column"
                        f" {error.colno}); fix or remove that line")
            if not isinstance(value, dict):
                return (f"{path} line {number} is a JSON {type(value).__name__}, not an object;"
                        " give each example as one JSON object per line")
    return None


def _saved_table(path: str) -> pa.Table:
    import datasets
    try:
        dataset = datasets.load_from_disk(path)
    except FileNotFoundError as error:
        raise DistillError(f"cannot read {path} as a Hugging Face `datasets` directory"
                           f" ({_one_line(error)}); save one with Dataset.save_to_disk") from None
    if isinstance(dataset, datasets.DatasetDict):
        splits = ", ".join(dataset)
        raise DistillError(f"{path} holds a DatasetDict (splits {splits}); name one split's"
                           f" directory, e.g. config.data.files={os.path.join(path, 'train')}")
    return dataset.with_format("arrow")[:] if len(dataset) else pa.table({})


def _one_line(error: BaseException) -> str:
    return " ".join(str(error).split())


def _kind(path: str, found: list[str], columns: ml_collections.FrozenConfigDict) -> str:
    for kind, names in COLUMNS.items():
        if all(columns[name] in found for name in names):
            return kind
    wanted = "; ".join(f"{kind}: {' and '.join(repr(columns[name]) for name in names)}"
                       for kind, names in COLUMNS.items())
    raise DistillError(f"{path} has no columns that make examples of any kind ({wanted}); its"
                       f" columns are {', '.join(map(repr, found))}: name them in"
                       " config.data.columns")


def _column(table: pa.Table, path: str, reader: str, kind: str, key: str, name: str) -> list:
    """The values of column `name` (config.data.columns.`key`), text except for messages."""
    if name not in table.column_names:
        raise DistillError(f"{path} has no column {name!r} (config.data.columns.{key}) for"
                           f" examples of kind {kind!r}; its columns are"
                           f" {', '.join(map(repr, table.column_names))}")
    column = table.column(name)
    if key != "messages" and not (pa.types.is_string(column.type)
                                  or pa.types.is_large_string(column.type)):
        raise DistillError(f"column {name!r} of {path} holds {column.type}, not text; name the"
                           f" text column in config.data.columns.{key}")
    values = column.to_pylist()
    if column.null_count:
        row = values.index(None)
        raise DistillError(f"{Origin(path, reader, row)} has no {name!r}; give every example"
                           " one, or remove that example")
    return values


def _conversation(value: Any, origin: Origin, column: str) -> tuple[dict, ...]:
    """The messages of one conversation, checked, without the keys a file left empty."""
    if not isinstance(value, list) or not value:
        raise DistillError(f"{origin}: {column!r} must be a non-empty list of"
                           " {\"role\", \"content\"} messages")
    messages = []
    for turn, message in enumerate(value):
        if not (isinstance(message, dict) and "role" in message
                and isinstance(message.get("content"), str)):
            raise DistillError(f"{origin}: message {turn} is not a {{\"role\", \"content\"}}"
                               " object with text content")
        if message["role"] not in ROLES:
            raise DistillError(f"{origin}: message {turn} has the role {message['role']!r};"
                               f" use one of {', '.join(ROLES)}")
        messages.append({key: item for key, item in message.items() if item is not None})
    return tuple(messages)
