"""Language-model data from the user's own files (config.data.files): JSON lines, Parquet, text
files and `datasets` directories, of the kinds text, prompt_completion and messages, in packed
and prompt rows, with held-out validation, resumable training streams and one-line errors."""

import json
import re

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from transformers import PreTrainedTokenizerFast

from jaxdistill import cli, data, run
from jaxdistill import config as config_lib
from jaxdistill.data import files, lm_formats, sources, text_tokenizers
from jaxdistill.data import text as data_text
from jaxdistill.errors import DistillError

CHATML = ("{% for message in messages %}<|im_start|>{{ message['role'] }}\n"
          "{{ message['content'] }}<|im_end|>\n{% endfor %}"
          "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")

SENTENCES = ["The capital of France is Paris, and the capital of Italy is Rome.",
             "You are a helpful assistant; answer briefly and well.",
             "What is two plus two? Four. What is the capital of Spain? Madrid."]


def _conversation(i: int) -> list[dict]:
    turns = [{"role": "user", "content": f"What is {i} plus {i}?"},
             {"role": "assistant", "content": f"It is {2 * i}."}]
    if i % 3 == 0:
        turns = [{"role": "system", "content": "Be brief."}, *turns,
                 {"role": "user", "content": "And times two?"},
                 {"role": "assistant", "content": f"{4 * i}."}]
    return turns


def _write_jsonl(path, records) -> str:
    path.write_text("".join(json.dumps(record) + "\n" for record in records))
    return str(path)


def _documents(n: int = 30) -> list[str]:
    return [f"Document {i} says: " + " ".join(f"w{j}" for j in range(i % 11)) for i in range(n)]


def _pairs(n: int = 24) -> list[dict]:
    return [{"prompt": f"Question {i}: what is {i} plus {i}? ",
             "completion": "The answer is " + str(2 * i) + "." * (1 + i % 4)} for i in range(n)]


@pytest.fixture(scope="module")
def chat_tokenizer(tmp_path_factory, byte_level_bpe) -> str:
    """A ChatML tokenizer directory: a 300-token byte-level BPE with <|im_end|> as eos."""
    bpe = byte_level_bpe(SENTENCES, ["<|endoftext|>", "<|im_start|>", "<|im_end|>"], 300)
    directory = tmp_path_factory.mktemp("chatml")
    PreTrainedTokenizerFast(tokenizer_object=bpe, eos_token="<|im_end|>",
                            pad_token="<|endoftext|>", chat_template=CHATML
                            ).save_pretrained(directory)
    return str(directory)


@pytest.fixture
def file_config(tmp_path):
    """file_config(files, **changes): config.data reading `files`, byte-tokenized."""
    def make(paths: str, **changes):
        config = config_lib.base().data
        config.update({"files": paths, "tokenizer": "byte", "max_length": 64,
                       "prompt_length": 24, "continuation_length": 16,
                       "data_dir": str(tmp_path / "cache"), **changes})
        return config
    return make


def _rows(config, split="train") -> dict:
    size, read = data.reader(config, split)
    return read(np.arange(size))


def _segments(rows):
    """(targets, loss_mask, positions) of each segment of each row."""
    for row, segments in enumerate(rows["segment_ids"]):
        for segment in range(1, segments.max() + 1):
            yield tuple(rows[key][row, segments == segment]
                        for key in ("targets", "loss_mask", "positions"))


def test_jsonl_documents_pack_as_the_tfds_documents_do(tmp_path, file_config):
    documents = _documents()
    config = file_config(_write_jsonl(tmp_path / "docs.jsonl", [
        {"text": d, "id": i} for i, d in enumerate(documents)]))
    spec = data.spec(config)
    assert (spec.task, spec.format, spec.split_sizes.keys()) == ("lm", "packed", {"train"})
    assert spec.name == f"files {config.files}" and spec.vocab_size == 259
    ids = data_text.special_ids(config)
    expected = lm_formats.packed(lm_formats.bodies(data.tokenizer(config), documents, ids.eos),
                                 64, ids)
    rows = _rows(config)
    assert rows.keys() == expected.keys()
    for key, value in expected.items():
        np.testing.assert_array_equal(rows[key], value)
    np.testing.assert_array_equal(rows["loss_mask"], rows["segment_ids"] > 0)
    assert data.summary(config) == (
        f"data: text from files {config.files} as packed rows of 64: train 30 examples ->"
        f" {spec.split_sizes['train']} rows")
    assert data.summary(config_lib.base().data) == ""  # a TFDS dataset: nothing to say


def test_a_json_line_longer_than_pyarrow_s_block_is_read_whole(tmp_path, file_config):
    long = "x" * (1 << 21)
    config = file_config(_write_jsonl(tmp_path / "long.jsonl", [{"text": long}, {"text": "y"}]))
    assert files.examples(config, "train").values == (long, "y")


def test_parquet_prompt_completion_learns_only_the_completion(tmp_path, file_config):
    pairs = _pairs()
    pq.write_table(pa.Table.from_pylist(pairs), tmp_path / "pairs.parquet")
    config = file_config(str(tmp_path / "pairs.parquet"))
    tokenizer = data.tokenizer(config)
    eos = data_text.special_ids(config).eos
    wanted = {}
    for pair in pairs:
        prompt, completion = (tokenizer.encode(pair[key], add_special_tokens=False).ids
                              for key in ("prompt", "completion"))
        wanted[bytes(np.asarray([*prompt, *completion, eos], np.int32))] = (
            [0] * len(prompt) + [1] * (len(completion) + 1))
    found = {}
    for targets, loss_mask, positions in _segments(_rows(config)):
        np.testing.assert_array_equal(positions, np.arange(len(targets)))
        found[bytes(targets)] = loss_mask.tolist()
    assert found == wanted  # each example whole in one segment, masked on its completion

    config.update({"format": "prompts", "prompt_length": 40, "continuation_length": 24})
    rows = _rows(config)
    assert len(rows["prompt"]) == len(pairs) and data_text.counts(config, "train").truncated == 0
    decode = data.transformers_tokenizer(config).decode
    for pair, prompt, prompt_mask, continuation, continuation_mask in zip(pairs, *rows.values()):
        assert decode(prompt[prompt_mask == 1]) == "<bos>" + pair["prompt"]
        assert decode(continuation[continuation_mask == 1]) == pair["completion"] + "<eos>"


def test_a_folder_of_text_files_gives_a_document_per_file_and_text_lines_one_per_line(
        tmp_path, file_config):
    folder = tmp_path / "texts"
    folder.mkdir()
    for i, document in enumerate(_documents(5)):
        (folder / f"{i}.txt").write_text(document + "\nsecond line\n")
    (folder / "notes.md").write_text("not read: no known extension")  # unless named
    config = file_config(str(folder))
    assert files.examples(config, "train").values == tuple(
        d + "\nsecond line\n" for d in _documents(5))
    rows = data.num_examples(config, "train")
    assert rows < 5 and data.summary(config).endswith(f"train 5 examples -> {rows} rows")
    config.update({"files": str(folder / "*.txt"), "file_reader": "text_lines"})
    lines = files.examples(config, "train")
    assert lines.values == tuple(line for d in _documents(5) for line in (d, "second line"))
    assert str(lines.origins[3]) == f"{folder / '1.txt'} line 2"
    config.files = str(folder)  # a named reader reads every file of a directory
    assert files.examples(config, "train").values[-1] == "not read: no known extension"


def test_a_saved_datasets_directory_reads_like_any_file(tmp_path, file_config):
    import datasets
    pairs = _pairs(10)
    dataset = datasets.Dataset.from_list(pairs)
    dataset.save_to_disk(str(tmp_path / "saved"))
    config = file_config(str(tmp_path / "saved"))
    examples = files.examples(config, "train")
    assert examples.kind == "prompt_completion"
    assert examples.values == tuple((p["prompt"], p["completion"]) for p in pairs)
    assert str(examples.origins[4]) == f"{tmp_path / 'saved'} row 4"
    datasets.DatasetDict({"train": dataset, "test": dataset}).save_to_disk(
        str(tmp_path / "splits"))
    with pytest.raises(DistillError, match=r"holds a DatasetDict \(splits train, test\); name"
                                           r" one split's directory, e.g\. .*splits/train"):
        files.examples(file_config(str(tmp_path / "splits")), "train")


def _decoded_runs(decode, tokens, mask) -> list[str]:
    runs, run_ = [], []
    for token, marked in zip([*tokens, None], [*mask, 0]):
        if marked:
            run_.append(token)
        elif run_:
            runs.append(decode(run_))
            run_ = []
    return runs


def test_messages_learn_exactly_the_assistant_turns(tmp_path, file_config, chat_tokenizer):
    conversations = [_conversation(i) for i in range(12)]
    config = file_config(_write_jsonl(tmp_path / "chats.jsonl", [
        {"messages": turns} for turns in conversations]), tokenizer=chat_tokenizer,
        max_length=96)
    tokenizer = data.transformers_tokenizer(config)
    found = {}
    for targets, loss_mask, _ in _segments(_rows(config)):
        found[tokenizer.decode(targets)] = _decoded_runs(tokenizer.decode, targets, loss_mask)
    assert found == {  # whole conversations, each reply and its end of turn learned
        tokenizer.apply_chat_template(turns, tokenize=False): [
            f"{turn['content']}<|im_end|>\n" for turn in turns if turn["role"] == "assistant"]
        for turns in conversations}

    config.update({"format": "prompts", "prompt_length": 128})  # the last reply continues the
    # rest of the conversation, as gkd samples it
    rows = _rows(config)
    for turns, prompt, prompt_mask, continuation, continuation_mask in zip(
            conversations, *rows.values()):
        assert tokenizer.decode(prompt[prompt_mask == 1]) == "<|im_end|>" + (  # <bos> = eos
            tokenizer.apply_chat_template(turns[:-1], tokenize=False,
                                          add_generation_prompt=True))
        assert tokenizer.decode(continuation[continuation_mask == 1]) == (
            f"{turns[-1]['content']}<|im_end|>\n")


def test_validation_fraction_holds_out_the_same_examples_apart_from_train(tmp_path,
                                                                         file_config):
    config = file_config(_write_jsonl(tmp_path / "docs.jsonl", [
        {"text": d} for d in _documents(40)]), validation_fraction=0.25)
    train, validation = (files.examples(config, split).values for split in files.SPLITS)
    assert len(validation) == 10 and len(train) == 30
    assert set(train).isdisjoint(validation) and set(train) | set(validation) == set(
        _documents(40))
    assert [d for d in _documents(40) if d in validation] == list(validation)  # file order
    expected = files.held_out(40, 0.25)
    files._split.cache_clear()
    files._read.cache_clear()
    assert files.examples(config, "validation").values == validation  # rebuilt the same
    np.testing.assert_array_equal(files.held_out(40, 0.25), expected)
    assert set(data.spec(config).split_sizes) == {"train", "validation"}
    separate = file_config(config.files, validation_files=_write_jsonl(
        tmp_path / "held.jsonl", [{"text": "held out"}]), validation_fraction=0.25)
    assert files.examples(separate, "validation").values == ("held out",)
    assert len(files.examples(separate, "train").values) == 40


@pytest.mark.parametrize("row_format", lm_formats.FORMATS)
def test_the_stream_resumes_at_any_batch_and_eval_pads_the_last(tmp_path, file_config,
                                                                  row_format):
    config = file_config(_write_jsonl(tmp_path / "pairs.jsonl", _pairs(40)),
                         format=row_format, max_length=48, validation_fraction=0.2)
    stream = data.train_iterator(config, 8, seed=3)
    expected = [next(stream) for _ in range(6)][4:]
    resumed = data.train_iterator(config, 8, seed=3, start_batch=4)
    for batch in expected:
        for key, value in next(resumed).items():
            np.testing.assert_array_equal(value, batch[key])
    batches = list(data.eval_batches(config, "validation", 16))
    assert sum(int(batch["mask"].sum()) for batch in batches) == data.num_examples(
        config, "validation")
    assert all(len(batch["mask"]) == 16 for batch in batches)


def test_too_long_examples_are_truncated_or_dropped_and_counted(tmp_path, file_config):
    pairs = [{"prompt": "p" * 10, "completion": "c" * 10},   # 21 tokens with <eos>
             {"prompt": "p" * 30, "completion": "c" * 5},    # 36
             {"prompt": "p" * 5, "completion": "c" * 30},    # 36
             {"prompt": "p" * 40, "completion": "c" * 5}]    # 46: its completion past 32
    config = file_config(_write_jsonl(tmp_path / "pairs.jsonl", pairs), max_length=32)
    assert data_text.counts(config, "train") == lm_formats.Counts(
        examples=4, truncated=2, no_target=1, rows=3)
    rows = _rows(config)
    assert rows["loss_mask"].sum() == 11 + 2 + 27  # the completions' tokens within 32
    config.too_long = "drop"
    assert data_text.counts(config, "train") == lm_formats.Counts(
        examples=4, too_long=3, rows=1)
    assert "4 examples -> 1 rows (3 dropped as too long)" in data.summary(config)

    config.update({"format": "prompts", "prompt_length": 21, "continuation_length": 11})
    assert data_text.counts(config, "train") == lm_formats.Counts(
        examples=4, too_long=3, rows=1)
    config.too_long = "truncate"
    assert data_text.counts(config, "train") == lm_formats.Counts(
        examples=4, truncated=3, rows=4)
    rows = _rows(config)
    decode = data.transformers_tokenizer(config).decode
    assert [decode(row[mask == 1]) for row, mask in zip(rows["prompt"], rows["prompt_mask"])] == [
        "<bos>" + "p" * 10, "<bos>" + "p" * 20, "<bos>" + "p" * 5, "<bos>" + "p" * 20]
    assert [decode(row[mask == 1]) for row, mask in zip(
        rows["continuation"], rows["continuation_mask"])] == [
        "c" * 10 + "<eos>", "c" * 5 + "<eos>", "c" * 11, "c" * 5 + "<eos>"]


def test_examples_with_nothing_to_learn_are_dropped_with_a_count_or_refused(
        tmp_path, file_config, chat_tokenizer):
    conversations = [_conversation(1), [{"role": "user", "content": "Hello?"}]]
    config = file_config(_write_jsonl(tmp_path / "chats.jsonl", [
        {"messages": turns} for turns in conversations]), tokenizer=chat_tokenizer)
    assert data_text.counts(config, "train") == lm_formats.Counts(
        examples=2, no_target=1, rows=1)
    config.files = _write_jsonl(tmp_path / "unanswered.jsonl", [
        {"messages": conversations[1]}])
    with pytest.raises(DistillError, match=r"split 'train' of files .* has no example left of 1:"
                                           r" 1 with no token to learn from"):
        data.spec(config)
    lines = ["first", "", "second"]  # a blank line is an empty document
    (tmp_path / "lines.txt").write_text("\n".join(lines) + "\n")
    config = file_config(str(tmp_path / "lines.txt"), file_reader="text_lines")
    assert data_text.counts(config, "train") == lm_formats.Counts(
        examples=3, no_target=1, rows=1)


def _bad(tmp_path, name: str, content: str) -> str:
    (tmp_path / name).write_text(content)
    return str(tmp_path / name)


@pytest.mark.parametrize("case, expected", [
    ("malformed", r"bad\.jsonl line 3 is not valid JSON \(Expecting value at column 10\); fix or"
                  r" remove that line"),
    ("not an object", r"bad\.jsonl line 2 is a JSON list, not an object"),
    ("missing column", r"bad\.jsonl has no column 'completion' \(config\.data\.columns\."
                       r"completion\) for examples of kind 'prompt_completion'; its columns are"
                       r" 'prompt', 'answer'"),
    ("no kind fits", r"bad\.jsonl has no columns that make examples of any kind \(messages:"
                     r" 'messages'; prompt_completion: 'prompt' and 'completion'; text: 'text'\);"
                     r" its columns are 'question', 'answer': name them in config\.data\.columns"),
    ("empty file", r"bad\.jsonl holds no examples; fill it or remove it from config\.data\.files"),
    ("no match", r"config\.data\.files: '.*/\*\.parquet' matches no file"),
    ("unknown role", r"bad\.jsonl line 2: message 1 has the role 'bot'; use one of system, user,"
                     r" assistant, tool"),
    ("not text", r"column 'text' of .*bad\.jsonl holds int64, not text"),
    ("a null", r"bad\.jsonl line 2 has no 'text'"),
    ("unknown extension", r"cannot tell how to read .*bad\.csv from its extension; name its"
                          r" reader in config\.data\.file_reader"),
    ("no such split", r"the file data has the split train, not 'validation'; hold some out"),
    ("not utf-8", r"bad\.txt is not UTF-8 text \(invalid start byte at byte 1\)"),
    ("template refuses", r"bad\.jsonl line 2: the conversation starts with an assistant turn"),
])
def test_bad_data_is_refused_in_one_line_naming_the_fix(tmp_path, file_config, chat_tokenizer,
                                                        case, expected):
    split, changes = "train", {}
    if case == "malformed":
        path = _bad(tmp_path, "bad.jsonl", '{"text": "a"}\n\n{"text": b}\n')
    elif case == "not an object":
        path = _bad(tmp_path, "bad.jsonl", '{"text": "a"}\n["b"]\n')
    elif case == "missing column":
        path = _bad(tmp_path, "bad.jsonl", '{"prompt": "a", "answer": "b"}\n')
        changes = {"kind": "prompt_completion"}
    elif case == "no kind fits":
        path = _bad(tmp_path, "bad.jsonl", '{"question": "a", "answer": "b"}\n')
    elif case == "empty file":
        path = _bad(tmp_path, "bad.jsonl", "")
    elif case == "no match":
        path = str(tmp_path / "*.parquet")
    elif case == "unknown role":
        path = _write_jsonl(tmp_path / "bad.jsonl", [
            {"messages": _conversation(1)},
            {"messages": [{"role": "user", "content": "Hi"}, {"role": "bot", "content": "Yo"}]}])
        changes = {"tokenizer": chat_tokenizer}
    elif case == "not text":
        path = _bad(tmp_path, "bad.jsonl", '{"text": 1}\n')
    elif case == "a null":
        path = _bad(tmp_path, "bad.jsonl", '{"text": "a"}\n{"text": null}\n')
    elif case == "not utf-8":
        (tmp_path / "bad.txt").write_bytes(b"a\xff")
        path = str(tmp_path / "bad.txt")
    elif case == "template refuses":
        path = _write_jsonl(tmp_path / "bad.jsonl", [
            {"messages": _conversation(1)}, {"messages": _conversation(2)[1:]}])
        changes = {"tokenizer": chat_tokenizer}
    elif case == "unknown extension":
        path = _bad(tmp_path, "bad.csv", "text\na\n")
    else:
        path, split = _write_jsonl(tmp_path / "docs.jsonl", [{"text": "a"}]), "validation"
    with pytest.raises(DistillError, match=expected) as raised:
        data.reader(file_config(path, **changes), split)
    assert "\n" not in str(raised.value)


def test_an_eval_split_the_files_lack_is_refused_before_anything_runs(tmp_path, file_config):
    config = config_lib.base()
    config.data = file_config(_write_jsonl(tmp_path / "docs.jsonl", [
        {"text": d} for d in _documents(8)]))
    with pytest.raises(DistillError, match=r"config\.eval_splits names split 'validation', which"
                                           r" .* lacks; its splits are train"):
        run._check_splits(config, data.spec(config.data))
    config.data.validation_fraction = 0.25
    config.eval_splits = ("validation",)
    run._check_splits(config, data.spec(config.data))


def test_a_bpe_tokenizer_is_trained_on_the_train_texts_and_kept_by_their_digest(
        tmp_path, file_config, monkeypatch):
    pairs = _pairs(30)
    config = file_config(_write_jsonl(tmp_path / "pairs.jsonl", pairs), tokenizer="bpe:300",
                         validation_fraction=0.2)
    assert data.spec(config).vocab_size == 300
    train = files.examples(config, "train").values
    expected = text_tokenizers.byte_level_bpe(300, [p + c for p, c in train])
    saved = files.cache_directory(config) / "bpe-300" / "tokenizer.json"
    assert saved.parent.parent.parent == tmp_path / "cache" / "files"
    assert saved.read_text() == expected.to_str()
    # The tokens depend on the files' settings, not on the dataset's name.
    settings = data_text._token_settings(config)
    assert set(files.KEYS) <= set(settings) and settings.name == ""
    config.name = "mnist"
    assert data_text._token_settings(config) == settings
    monkeypatch.setattr(sources, "builder", lambda *_: pytest.fail("read a TFDS builder"))
    monkeypatch.setattr(text_tokenizers, "byte_level_bpe", lambda *_: pytest.fail("retrained"))
    data_text._shared_tokenizer.cache_clear()
    assert data.spec(config).vocab_size == 300  # the saved tokenizer, the name unread


@pytest.mark.slow
def test_sft_trains_from_the_cli_on_messages_and_on_prompt_completion_files(
        tmp_path, chat_tokenizer, capsys):
    chats = _write_jsonl(tmp_path / "chats.jsonl", [
        {"messages": _conversation(i)} for i in range(40)])
    pq.write_table(pa.Table.from_pylist(_pairs(40)), tmp_path / "pairs.parquet")
    for name, flags in [
            ("chats", [f"--config.data.files={chats}", f"--config.data.tokenizer={chat_tokenizer}",
                       "--config.data.format=packed", "--config.student.vocab_size=300"]),
            ("pairs", [f"--config.data.files={tmp_path / 'pairs.parquet'}",
                       "--config.data.tokenizer=bpe:300", "--config.student.vocab_size=300"])]:
        workdir = tmp_path / name
        cli.main(["train", "--config", "gkd_docs:smoke", "--workdir", str(workdir),
                  "--config.method=sft", "--config.data.validation_fraction=0.2",
                  f"--config.data.data_dir={tmp_path / 'cache'}",
                  "--config.checkpoint.async_save=False", *flags])
        lines = [json.loads(line) for line in open(workdir / "metrics.jsonl")]
        assert all(np.isfinite(line["loss"]) for line in lines)
        assert [line for line in lines if line.get("split") == "validation"]
        kind = {"chats": "messages", "pairs": "prompt_completion"}[name]
        assert re.search(rf"^data: {kind} from files .*: train 32 examples -> \d+ rows",
                         capsys.readouterr().out, re.MULTILINE)


@pytest.mark.slow
def test_gkd_distils_the_smoke_teacher_on_files_of_its_own_corpus(tmp_path, data_dir,
                                                                  lm_teacher_dir):
    """The teacher's bpe:512 tokenizer was trained on bundled_docs' train split: the same texts
    as a file train the same tokenizer, which the run's tokenizer check accepts."""
    docs = config_lib.load("lm_teacher_docs:smoke").data
    docs.data_dir = data_dir
    paths = {split: _write_jsonl(tmp_path / f"{split}.jsonl", [
        {"text": t} for t in sources.texts(docs, split)]) for split in ("train", "validation")}
    workdir = tmp_path / "run"
    cli.main(["train", "--config", "gkd_docs:smoke", "--workdir", str(workdir),
              f"--config.data.files={paths['train']}",
              f"--config.data.validation_files={paths['validation']}",
              f"--config.data.data_dir={data_dir}", f"--config.teacher.checkpoint={lm_teacher_dir}",
              "--config.checkpoint.async_save=False"])
    lines = [json.loads(line) for line in open(workdir / "metrics.jsonl")]
    final = [line for line in lines if line.get("split") == "validation"][-1]
    assert np.isfinite(final["loss"]) and np.isfinite(final["teacher_agreement"])
