"""Every test sees 8 simulated CPU devices; the digits dataset and a smoke teacher are shared."""

import json
import os

os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "")
                           + " --xla_force_host_platform_device_count=8").strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import pytest  # noqa: E402

from jaxdistill import config as config_lib  # noqa: E402
from jaxdistill import methods  # noqa: E402


@pytest.fixture(scope="session")
def data_dir(tmp_path_factory):
    return str(tmp_path_factory.mktemp("tfds"))


@pytest.fixture
def smoke_config(data_dir):
    """Returns `NAME:smoke` configs that read the session's dataset and save synchronously."""

    def load(name: str, **updates):
        config = config_lib.load(f"{name}:smoke")
        config.data.data_dir = data_dir
        config.checkpoint.async_save = False
        config.update(updates)
        return config

    return load


@pytest.fixture(scope="session")
def teacher_dir(tmp_path_factory, data_dir):
    """A smoke-sized digits teacher run (MLP 64-64), trained once per session."""
    from jaxdistill import train

    config = config_lib.load("hinton_teacher_digits:smoke")
    config.data.data_dir = data_dir
    workdir = str(tmp_path_factory.mktemp("teacher"))
    train.train_and_evaluate(config, workdir, progress=False)
    return workdir


@pytest.fixture(scope="session")
def lm_teacher_dir(tmp_path_factory, data_dir):
    """A smoke-sized teacher LM (sft on packed docs), trained once per session."""
    from jaxdistill import train

    config = config_lib.load("lm_teacher_docs:smoke")
    config.data.data_dir = data_dir
    config.checkpoint.async_save = False
    workdir = str(tmp_path_factory.mktemp("lm_teacher"))
    train.train_and_evaluate(config, workdir, progress=False)
    return workdir


@pytest.fixture
def student_config(data_dir, lm_teacher_dir):
    """student_config(method=..., **dotted overrides): gkd_docs:smoke distilling the smoke LM."""
    def load(**updates):
        config = config_lib.load("gkd_docs:smoke")
        config.data.data_dir = data_dir
        config.teacher.checkpoint = lm_teacher_dir
        config.checkpoint.async_save = False
        config.method = updates.pop("method", config.method)
        methods.with_settings(config)  # the settings of the method chosen here
        config.update_from_flattened_dict(updates)
        return config
    return load


@pytest.fixture
def hf_with_config(tmp_path):
    """hf_with_config(source, **changes): a Hugging Face directory with `source`'s weights (linked)
    and its config.json changed, to test what the importer makes of a disagreeing config."""
    def copy(source: str, **changes) -> str:
        target = tmp_path / "model"
        target.mkdir()
        os.symlink(os.path.join(source, "model.safetensors"), target / "model.safetensors")
        with open(os.path.join(source, "config.json")) as f:
            config = json.load(f)
        (target / "config.json").write_text(json.dumps({**config, **changes}))
        return str(target)

    return copy


@pytest.fixture(scope="session")
def byte_level_bpe():
    """byte_level_bpe(texts, specials, vocab_size): a byte-level BPE `tokenizers.Tokenizer`
    trained on `texts` with those special tokens first, as Llama 3 / Qwen / Gemma ship theirs."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    def train(texts: list[str], specials: list[str], vocab_size: int) -> Tokenizer:
        tokenizer = Tokenizer(models.BPE())
        tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        tokenizer.decoder = decoders.ByteLevel()
        tokenizer.train_from_iterator(texts, trainers.BpeTrainer(
            vocab_size=vocab_size, special_tokens=specials, show_progress=False,
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
        return tokenizer

    return train


@pytest.fixture(scope="session")
def randomized():
    """randomized(model): a transformers model with every parameter drawn (matrices N(0, 0.2²),
    vectors U(0.5, 1.5): norms and biases too), so that a mis-mapped tensor shows in outputs."""
    import torch

    def draw(model):
        with torch.no_grad():
            for parameter in model.parameters():
                if parameter.ndim > 1:
                    parameter.normal_(0.0, 0.2)
                else:
                    parameter.uniform_(0.5, 1.5)
        return model.eval()

    return draw
