"""The digits TFDS builder and the grain pipeline: splits, determinism, per-process rows, state."""

import jax
import ml_collections
import numpy as np
import pytest
import tensorflow_datasets as tfds
import tensorflow_datasets.core.data_sources.base  # noqa: F401  (patched below, loaded lazily by tfds)
from sklearn.datasets import load_digits

from jaxdistill import config as config_lib
from jaxdistill import data, train
from jaxdistill.data import sklearn_digits
from jaxdistill.errors import DistillError


@pytest.fixture
def digits(data_dir):
    return ml_collections.ConfigDict(
        {"name": "sklearn_digits", "data_dir": data_dir, "train_split": "train", "cache": True})


def _take(iterator, count):
    return [next(iterator) for _ in range(count)]


def test_splits_are_fixed_disjoint_and_cover_the_dataset(digits):
    spec = data.spec(digits)
    assert spec.num_classes == 10 and spec.inputs == {"image": ((8, 8, 1), np.float32)}
    assert spec.split_sizes == {"train": 1257, "validation": 180, "test": 360}
    images = {split: data.reader(digits, split)[1](np.arange(size))["image"]
              for split, size in spec.split_sizes.items()}
    indices = sklearn_digits._split_indices(load_digits().target)
    assert sorted(np.concatenate(list(indices.values())).tolist()) == list(range(1797))

    def multiset(images):  # TFDS shuffles the order within a split, so compare contents
        return sorted(map(bytes, np.round(images * 255).astype(np.uint8).reshape(len(images), -1)))

    expected = np.round(load_digits().images[indices["test"]] * 255 / 16) / 255
    assert multiset(images["test"][..., 0]) == multiset(expected)
    assert all(0.0 <= array.min() and array.max() <= 1.0 for array in images.values())


def test_cached_and_uncached_readers_agree(digits):
    indices = np.array([5, 0, 1256, 17])
    cached = data.reader(digits, "train")[1](indices)
    digits.cache = False
    uncached = data.reader(digits, "train")[1](indices)
    for key in cached:
        np.testing.assert_array_equal(cached[key], uncached[key])


def test_one_epoch_visits_every_example_once_and_seeds_differ(digits):
    shuffle = data.EpochShuffle(1257, seed=3)
    np.testing.assert_array_equal(np.sort(shuffle(np.arange(1257))), np.arange(1257))
    assert not np.array_equal(shuffle(np.arange(1257)), shuffle(np.arange(1257, 2514)))
    first, again, other = (data.train_iterator(digits, 32, seed) for seed in (0, 0, 1))
    for a, b, c in zip(_take(first, 3), _take(again, 3), _take(other, 3)):
        np.testing.assert_array_equal(a["image"], b["image"])
        assert not np.array_equal(a["label"], c["label"])


def test_each_process_reads_only_its_rows_of_the_global_batch(digits, monkeypatch):
    whole = _take(data.train_iterator(digits, 64, seed=0), 3)
    monkeypatch.setattr(jax, "process_count", lambda: 2)
    parts = []
    for process in range(2):
        monkeypatch.setattr(jax, "process_index", lambda process=process: process)
        parts.append(_take(data.train_iterator(digits, 64, seed=0), 3))
    for step, batch in enumerate(whole):
        assert parts[0][step]["image"].shape[0] == 32
        joined = np.concatenate([parts[0][step]["image"], parts[1][step]["image"]])
        np.testing.assert_array_equal(joined, batch["image"])
    with pytest.raises(DistillError, match="divisible by the 2 processes"):
        data.train_iterator(digits, 63, seed=0)


def test_stream_restarts_at_any_batch(digits):
    iterator = data.train_iterator(digits, 32, seed=0)
    _take(iterator, 41)  # past the end of the first epoch (1257 / 32 < 40)
    expected = _take(iterator, 2)
    restarted = data.train_iterator(digits, 32, seed=0, start_batch=41)
    for a, b in zip(expected, _take(restarted, 2)):
        np.testing.assert_array_equal(a["image"], b["image"])


def test_eval_batches_pad_the_last_batch_and_mask_it(digits):
    batches = list(data.eval_batches(digits, "validation", 64))
    assert [b["image"].shape[0] for b in batches] == [64, 64, 64]
    assert sum(int(b["mask"].sum()) for b in batches) == 180
    assert not batches[-1]["mask"][-(192 - 180):].any()


def test_unknown_dataset_is_a_clear_error(digits):
    digits.name = "no_such_dataset"
    with pytest.raises(DistillError, match="unknown dataset 'no_such_dataset'"):
        data.spec(digits)


def test_paper_config_trains_on_mnist_through_the_same_pipeline(tmp_path, monkeypatch):
    """The `paper` variant names TFDS mnist; mock_data stands in for the download."""
    # tfds.testing.mock_data (4.9) installs `__getitems__` as an unbound partial that cannot be
    # called; batched reads go through the per-record path it does mock correctly.
    monkeypatch.setattr(tfds.core.data_sources.base.BaseDataSource, "__getitems__",
                        lambda self, keys: [self[key] for key in keys])
    config = config_lib.load("hinton_teacher_digits:paper")
    assert config.data.name == "mnist" and config.student.hidden == (1200, 1200)
    config.update({"total_steps": 2, "batch_size": 16, "eval_batch_size": 16})
    config.checkpoint.async_save = False
    with tfds.testing.mock_data(num_examples=64):
        summary = train.train_and_evaluate(config, str(tmp_path), progress=False)
    assert summary["step"] == 2
    assert summary["eval"]["test"]["examples"] == 64


@pytest.fixture
def sentences(data_dir):
    config = config_lib.load("minilm_sentences:smoke").data
    config.data_dir = data_dir
    return config


def test_sentence_corpus_splits_by_document_without_duplicates():
    from jaxdistill.data import bundled_sentences

    corpus = bundled_sentences.corpus()
    documents = {split: {doc for doc, _ in rows} for split, rows in corpus.items()}
    texts = [text for rows in corpus.values() for _, text in rows]
    assert all(len(rows) > 300 for rows in corpus.values())
    assert len(texts) == len(set(texts))
    train, validation, test = documents["train"], documents["validation"], documents["test"]
    assert not (train & test or train & validation or validation & test)
    assert all(bundled_sentences.split_of(doc) == split
               for split, docs in documents.items() for doc in docs)
    assert all(6 <= len(text.split()) <= 40 and text.endswith(".") for text in texts)


def test_sentence_dataset_is_tokenized_by_the_teachers_tokenizer(sentences):
    spec = data.spec(sentences)
    length = sentences.max_length
    assert spec.task == "sentences" and spec.vocab_size == 30522 and spec.num_classes is None
    assert spec.inputs == {"input_ids": ((length,), np.int32),
                           "attention_mask": ((length,), np.int32)}
    size, read = data.reader(sentences, "test")
    assert size == spec.split_sizes["test"]
    batch = read(np.arange(16))
    ids, mask = batch["input_ids"], batch["attention_mask"]
    assert ids.shape == mask.shape == (16, length) and set(batch) == {"input_ids", "attention_mask"}
    assert np.all(ids[:, 0] == 101)  # [CLS]
    assert np.all((ids == 0) == (mask == 0))  # padding is exactly the masked positions
    lengths = mask.sum(1)
    assert np.all(ids[np.arange(16), lengths - 1] == 102)  # [SEP] ends every (truncated) row
