"""Distil your own Hugging Face model, end to end (the README's walk-through): a teacher and a
student from Hugging Face directories sharing a tokenizer, distilled on data tokenized with it,
exported, loaded by transformers and generating as jaxdistill does."""

import json

import jax
import ml_collections
import numpy as np
import pytest
import torch
import transformers
from tokenizers import Tokenizer, models, pre_tokenizers, trainers

from jaxdistill import cli, loading
from jaxdistill import config as config_lib
from jaxdistill.errors import DistillError
from jaxdistill.generate import generate
from jaxdistill.models import pretrained
from jaxdistill.run import build

TEXTS = ["def main():\n    return 0", "The loop ends when the iterator is exhausted.",
         "Return a new list containing all items from the iterable in ascending order."] * 20


def _tokenizer(vocab_size: int, texts=TEXTS) -> transformers.PreTrainedTokenizerFast:
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.train_from_iterator(texts, trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=["<s>", "</s>"], show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    return transformers.PreTrainedTokenizerFast(tokenizer_object=tokenizer, bos_token="<s>",
                                                eos_token="</s>")


def _save_llama(path, tokenizer, layers: int, seed: int) -> str:
    torch.manual_seed(seed)
    config = transformers.LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=layers,
        num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=256,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        tie_word_embeddings=True)
    transformers.LlamaForCausalLM(config).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return str(path)


@pytest.fixture(scope="module")
def hf_models(tmp_path_factory):
    tokenizer = _tokenizer(300)
    root = tmp_path_factory.mktemp("hf")
    return (_save_llama(root / "teacher", tokenizer, layers=2, seed=0),
            _save_llama(root / "student", tokenizer, layers=1, seed=1))


def _argv(teacher, student, workdir, data_dir, *more):
    return ["train", "--config=configs/gkd_docs.py:smoke", f"--workdir={workdir}",
            "--no_progress", f"--config.data.data_dir={data_dir}", "--config.method=logit_kd",
            f"--config.teacher.pretrained={teacher}", f"--config.data.tokenizer={teacher}",
            f"--config.student_init.pretrained={student}", "--config.total_steps=4",
            "--config.eval_every=4", "--config.checkpoint.every_steps=4", *more]


def test_distill_export_and_generate_with_transformers(hf_models, tmp_path, data_dir):
    teacher, student = hf_models
    cli.main(_argv(teacher, student, tmp_path / "run", data_dir))
    cli.main(["export", str(tmp_path / "run"), f"--out={tmp_path / 'out'}"])

    model = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "out").eval()
    trained = loading.run(str(tmp_path / "run"))
    assert trained.model_config.num_layers == 1  # the student's own depth, from its directory
    tokenizer = transformers.AutoTokenizer.from_pretrained(tmp_path / "out")
    prompt = tokenizer(["The loop ends"], return_tensors="pt")
    with torch.no_grad():
        theirs = model.generate(**prompt, max_new_tokens=6, do_sample=False)[0, prompt[
            "input_ids"].shape[1]:].numpy()
    ids = prompt["input_ids"].numpy().astype(np.int32)
    ours = generate(trained.module, trained.params, ids, np.array([ids.shape[1]], np.int32),
                    max_new_tokens=6, rng=jax.random.key(0), temperature=0.0,
                    eos_id=tokenizer.eos_token_id)
    mask = np.asarray(ours.mask[0])
    np.testing.assert_array_equal(np.asarray(ours.tokens[0])[mask], theirs[:mask.sum()])


def test_a_student_started_from_hf_weights_starts_from_them(hf_models, tmp_path, data_dir):
    teacher, student = hf_models
    cli.main(_argv(teacher, student, tmp_path / "run", data_dir, "--config.total_steps=1",
                   "--config.optimizer.lr=0.0", "--config.optimizer.warmup_steps=0",
                   "--config.eval_every=1", "--config.checkpoint.every_steps=1"))
    trained = loading.run(str(tmp_path / "run"))
    original = transformers.AutoModelForCausalLM.from_pretrained(student)
    embedding = original.model.embed_tokens.weight.detach().numpy()
    np.testing.assert_array_equal(np.asarray(trained.params["params"]["embed"]["embedding"]),
                                  embedding)


def test_a_tokenizer_other_than_the_teachers_is_refused(hf_models, tmp_path, data_dir, capsys):
    teacher, student = hf_models
    # As many tokens, other merges: every size check passes.
    other = _save_llama(tmp_path / "other", _tokenizer(300, [t.upper() for t in TEXTS]),
                        layers=1, seed=2)
    with pytest.raises(SystemExit):
        cli.main(_argv(teacher, other, tmp_path / "run", data_dir,
                       f"--config.data.tokenizer={other}"))
    assert "is not the teacher's: token" in capsys.readouterr().err
    config = config_lib.load("gkd_docs:smoke")
    config.student_init.update({"pretrained": student, "teacher_layers": (0,)})
    with pytest.raises(DistillError, match="set only one of them"):
        build(config)


def test_an_lm_student_can_be_the_teachers_layers(hf_models, data_dir):
    teacher, _ = hf_models
    config = config_lib.load("gkd_docs:smoke")
    config.update_from_flattened_dict({
        "method": "logit_kd", "data.data_dir": data_dir, "data.tokenizer": teacher,
        "teacher.pretrained": teacher, "teacher.config": ""})
    config.student = ml_collections.ConfigDict(
        {**pretrained.model_config(teacher), "num_layers": 1})
    config.student_init.teacher_layers = (1,)  # depth-pruned: keep the teacher's last layer
    run = build(config)
    student = run.init().params["params"]
    np.testing.assert_array_equal(student["layer_0"]["mlp"]["up"]["kernel"],
                                  run.teacher_params["params"]["layer_1"]["mlp"]["up"]["kernel"])


# The methods that read the data differently: packed rows (logit_kd; sft, taid and adaspec read
# them the same way and train from the CLI in test_lm_distillation), sampled continuations of the
# file's prompts, and offline teacher targets of the file's rows.
LLM_DISTILL_ROWS = [
    ("logit_kd", "packed", ["--config.loss.fused=True"]), ("seqkd", "prompts", []),
    ("gkd", "prompts", []), ("distillspec", "prompts", ["--config.loss.divergence=tvd"]),
    ("cached_kd", "packed", []),
]


@pytest.mark.slow
@pytest.mark.parametrize("method, row_format, flags", LLM_DISTILL_ROWS)
def test_llm_distill_trains_every_lm_method_on_a_jsonl_file(hf_models, tmp_path, method,
                                                            row_format, flags):
    """configs/llm_distill.py as its docstring says: HF teacher and student, a data file."""
    teacher, student = hf_models
    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text("".join(json.dumps({"prompt": text[:20], "completion": text[20:]}) + "\n"
                             for text in TEXTS))
    common = ["--config=configs/llm_distill.py:smoke", f"--config.method={method}",
              f"--config.teacher.pretrained={teacher}", f"--config.data.tokenizer={teacher}",
              f"--config.data.files={pairs}", f"--config.data.format={row_format}",
              "--config.data.validation_fraction=0.2", f"--config.data.data_dir={tmp_path}"]
    if method == "cached_kd":
        cli.main(["cache-teacher", *common, f"--out={tmp_path / 'cache'}", "--top_k=4"])
        flags = [f"--config.data.teacher_cache={tmp_path / 'cache'}"]
    cli.main(["train", f"--workdir={tmp_path / 'run'}", "--no_progress", *common,
              f"--config.student_init.pretrained={student}", *flags])
    lines = [json.loads(line) for line in open(tmp_path / "run" / "metrics.jsonl")]
    assert all(np.isfinite(line["loss"]) for line in lines)
    assert [line for line in lines if line.get("split") == "validation"]
