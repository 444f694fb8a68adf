"""The bundled docs corpus, byte and BPE tokenizers, and the packed and prompt LM formats."""

import numpy as np
import pytest

from jaxdistill import config as config_lib
from jaxdistill import data
from jaxdistill.data import bundled_docs, cpython_docs, lm_formats, text_tokenizers
from jaxdistill.data import text as data_text
from jaxdistill.errors import DistillError

PAD, BOS, EOS = 0, 1, 2


@pytest.fixture
def docs(data_dir):
    """The docs corpus, byte-tokenized and packed into rows of 128 tokens."""
    config = config_lib.base().data
    config.update({"name": "bundled_docs", "data_dir": data_dir, "tokenizer": "byte",
                   "max_length": 128, "format": "packed", "prompt_length": 24,
                   "continuation_length": 40})
    return config


def _documents(config, split):
    records = data.source(config, split)
    return {r["name"].decode(): r["text"].decode()
            for r in records.__getitems__(range(len(records)))}


def _bodies(config, split):
    tokenizer = data.tokenizer(config)
    return lm_formats.bodies(tokenizer, _documents(config, split).values(), EOS)


def _pieces(rows):
    """(targets, input_ids, positions) of every piece: the tokens of one segment of a row."""
    for row, segments in enumerate(rows["segment_ids"]):
        for segment in range(1, segments.max() + 1):
            yield tuple(rows[key][row, segments == segment]
                        for key in ("targets", "input_ids", "positions"))


def test_documents_are_split_whole_and_built_deterministically(docs):
    splits = {split: _documents(docs, split) for split in ("train", "validation", "test")}
    names = {split: set(documents) for split, documents in splits.items()}
    assert not (names["train"] & names["validation"] or names["train"] & names["test"]
                or names["validation"] & names["test"])
    assert all(cpython_docs.split_of(name) == split
               for split, split_names in names.items() for name in split_names)
    built = {name: text for documents in splits.values() for name, text in documents.items()}
    assert built == {name: text for documents in bundled_docs.corpus().values()
                     for name, text in documents.items()}
    assert len(splits["train"]) > 150 and all(len(splits[s]) > 15 for s in ("validation", "test"))
    assert all(text and text == text.strip("\n") and "\n\n\n" not in text and " \n" not in text
               for text in splits["test"].values())
    assert any(">>>" in text for text in splits["train"].values())  # code stays in


def test_byte_tokenizer_round_trips_any_text_one_token_per_byte(docs):
    tokenizer = data.tokenizer(docs)
    assert tokenizer.get_vocab_size() == text_tokenizers.BYTE_VOCAB_SIZE == 259
    assert [tokenizer.token_to_id(t) for t in ("<pad>", "<bos>", "<eos>")] == [PAD, BOS, EOS]
    text = "Tab\tnul\x00 <eos> <pad> naïve 🐍\n\n    x = {'a': 1}\r\n"
    ids = tokenizer.encode(text).ids
    assert len(ids) == len(text.encode()) and min(ids) > EOS  # specials are never read from text
    assert tokenizer.decode(ids) == text
    many_bytes = "".join(map(chr, range(0x3000))).encode()
    pairs = set(zip(tokenizer.encode(many_bytes.decode()).ids, many_bytes))
    assert len(pairs) == len(set(many_bytes))  # one id per byte value


def test_bpe_has_n_tokens_trains_once_on_train_deterministically_and_round_trips(
        docs, monkeypatch):
    docs.tokenizer = "bpe:1024"
    tokenizer = data.tokenizer(docs)
    assert tokenizer.get_vocab_size() == data.spec(docs).vocab_size == 1024
    assert [tokenizer.token_to_id(t) for t in ("<pad>", "<bos>", "<eos>")] == [PAD, BOS, EOS]
    saved = data.builder(docs).data_path / "bpe-1024" / "tokenizer.json"
    retrained = text_tokenizers.byte_level_bpe(1024, _documents(docs, "train").values())
    assert saved.read_text() == retrained.to_str()
    retrained = text_tokenizers.with_special_tokens(retrained)
    assert text_tokenizers.difference(data_text.transformers_tokenizer(docs), retrained) is None
    for text in _documents(docs, "validation").values():
        ids = tokenizer.encode(text).ids
        assert tokenizer.decode(ids) == text and len(ids) < len(text.encode())
    monkeypatch.setattr(text_tokenizers, "byte_level_bpe", lambda *_: pytest.fail("retrained"))
    reloaded = text_tokenizers.load("bpe:1024", saved.parent.parent, lambda: [])
    assert text_tokenizers.difference(reloaded, retrained) is None
    with pytest.raises(DistillError, match="bpe:N with N > 259"):
        text_tokenizers.load("bpe:200", saved.parent.parent, lambda: [])


def test_spec_of_each_format_names_the_lm_inputs_vocabulary_and_special_ids(docs):
    spec = data.spec(docs)
    assert spec.task == "lm" and spec.vocab_size == 259 and spec.num_classes is None
    assert spec.inputs == {"input_ids": ((128,), np.int32)}
    assert spec.special_ids == text_tokenizers.SpecialIds(pad=PAD, bos=BOS, eos=EOS,
                                                          eos_ids=(EOS,))
    assert spec.split_sizes["train"] == data.num_examples(docs, "train") > 5000
    docs.format = "prompts"
    assert data.spec(docs).inputs == {"input_ids": ((24 + 40,), np.int32)}
    docs.format = "words"
    with pytest.raises(DistillError, match="unknown config.data.format 'words'"):
        data.spec(docs)


def test_packed_rows_predict_each_next_token_within_its_own_piece(docs):
    size, read = data.reader(docs, "test")
    rows = read(np.arange(size))
    assert set(rows) == {"input_ids", "targets", "segment_ids", "positions", "loss_mask"}
    assert all(value.shape == (size, 128) and value.dtype == np.int32 for value in rows.values())
    segments = rows["segment_ids"]
    np.testing.assert_array_equal(rows["loss_mask"], segments > 0)
    padding = segments == 0
    assert not (rows["input_ids"][padding].any() or rows["targets"][padding].any()
                or rows["positions"][padding].any())
    assert np.all(segments[:, 0] == 1) and not (padding[:, :-1] & ~padding[:, 1:]).any()
    assert np.isin(np.diff(segments, axis=1)[~padding[:, 1:]], (0, 1)).all()  # 1..k, then padding
    same_piece = (segments[:, 1:] == segments[:, :-1]) & ~padding[:, 1:]
    np.testing.assert_array_equal(rows["targets"][:, :-1][same_piece],
                                  rows["input_ids"][:, 1:][same_piece])
    assert padding.mean() < 0.01  # first-fit decreasing leaves little room unused
    for targets, inputs, positions in _pieces(rows):
        np.testing.assert_array_equal(positions, np.arange(len(targets)))
        np.testing.assert_array_equal(inputs, np.concatenate([[BOS], targets[:-1]]))
    data_text._lm_rows_of.cache_clear()
    for key, value in data.reader(docs, "test")[1](np.arange(size)).items():
        np.testing.assert_array_equal(value, rows[key])  # rebuilt identically


def test_packed_pieces_are_exactly_the_documents_cut_every_max_length_tokens(docs):
    """Each piece is one document's run of tokens (so with segment-masked attention nothing is
    predicted from another document), and each document token is a target exactly once."""
    size, read = data.reader(docs, "validation")
    pieces = sorted(targets.tobytes() for targets, _, _ in _pieces(read(np.arange(size))))
    expected = sorted(body[start:start + 128].tobytes() for body in _bodies(docs, "validation")
                      for start in range(0, len(body), 128))
    assert pieces == expected


def test_one_training_epoch_reads_every_row_once(docs):
    size, read = data.reader(docs, "validation")
    docs.train_split = "validation"
    epoch = next(data.train_iterator(docs, size, seed=0))["targets"]
    assert sorted(map(bytes, epoch)) == sorted(map(bytes, read(np.arange(size))["targets"]))


def test_prompt_rows_are_left_padded_prompts_and_right_padded_continuations(docs):
    docs.format = "prompts"
    size, read = data.reader(docs, "validation")
    rows = read(np.arange(size))
    assert {k: v.shape for k, v in rows.items()} == {
        "prompt": (size, 24), "prompt_mask": (size, 24),
        "continuation": (size, 40), "continuation_mask": (size, 40)}
    prompt_mask, continuation_mask = rows["prompt_mask"], rows["continuation_mask"]
    assert np.all(np.diff(prompt_mask, axis=1) >= 0)  # padding, then the prompt
    assert np.all(np.diff(continuation_mask, axis=1) <= 0)  # the continuation, then padding
    assert np.all((rows["prompt"] == PAD) == (prompt_mask == 0))
    assert np.all((rows["continuation"] == PAD) == (continuation_mask == 0))
    starts = np.argmax(prompt_mask, axis=1)
    assert np.all(rows["prompt"][np.arange(size), starts] == BOS)
    assert np.all(continuation_mask[:, 0] == 1) and (prompt_mask.sum(1) > 1).all()
    bodies = _bodies(docs, "validation")
    separated = np.concatenate([np.append(body, -1) for body in bodies]).astype(np.int32)
    for prompt, prompt_ok, continuation, continuation_ok in zip(*rows.values()):
        window = np.concatenate([prompt[prompt_ok == 1][1:], continuation[continuation_ok == 1]])
        assert window.tobytes() in separated.tobytes()  # one document's run of tokens


@pytest.mark.parametrize("row_format", lm_formats.FORMATS)
def test_training_stream_resumes_at_any_batch_and_eval_pads_the_last(docs, row_format):
    docs.format = row_format
    stream = data.train_iterator(docs, 16, seed=0)
    expected = [next(stream) for _ in range(5)][3:]
    resumed = data.train_iterator(docs, 16, seed=0, start_batch=3)
    for batch in expected:
        for key, value in next(resumed).items():
            np.testing.assert_array_equal(value, batch[key])
    batches = list(data.eval_batches(docs, "validation", 64))
    examples = sum(int(batch["mask"].sum()) for batch in batches)
    assert examples == data.num_examples(docs, "validation")
    assert all(len(batch["mask"]) == 64 for batch in batches)


def test_a_short_document_gives_one_padded_window():
    rows = lm_formats.prompts([np.array([5, 6, 7, EOS])], 4, 3,
                              text_tokenizers.SpecialIds(pad=PAD, bos=BOS, eos=EOS,
                                                         eos_ids=(EOS,)))
    assert {k: v.tolist() for k, v in rows.items()} == {
        "prompt": [[PAD, BOS, 5, 6]], "prompt_mask": [[0, 1, 1, 1]],
        "continuation": [[7, EOS, PAD]], "continuation_mask": [[1, 1, 0]]}


def test_windows_tile_a_body_and_split_short_ones():
    assert lm_formats.windows(10, 3, 2) == [(0, 3, 5), (5, 8, 10)]
    assert lm_formats.windows(12, 3, 2) == [(0, 3, 5), (5, 8, 10), (7, 10, 12)]
    assert lm_formats.windows(4, 3, 2) == [(0, 2, 4)]
    assert lm_formats.windows(4, 3, 1) == [(0, 3, 4)]
    assert lm_formats.windows(2, 3, 2) == [(0, 1, 2)]
