"""`jaxdistill export`: a trained student loads back in transformers / sentence-transformers and
computes what it computed here."""

import json

import numpy as np
import pytest

from jaxdistill import checkpoint, cli, data, loading
from jaxdistill import export as export_lib
from jaxdistill.errors import DistillError

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")


def _export(workdir, out, *flags):
    cli.main(["export", str(workdir), f"--out={out}", *flags])
    return out


def _jax_logits(workdir, input_ids):
    student = loading.run(str(workdir))
    return np.asarray(student.module.apply(student.params, input_ids, train=False))


@pytest.mark.parametrize("flags, shards", [([], 1), (["--max_shard_gib=0.00005"], None)])
def test_an_exported_lm_loads_in_transformers_with_equal_logits(lm_teacher_dir, tmp_path, flags,
                                                                shards):
    out = _export(lm_teacher_dir, tmp_path / "hf", *flags)
    files = sorted(p.name for p in out.glob("*.safetensors"))
    if shards == 1:
        assert files == ["model.safetensors"]
    else:
        index = json.loads((out / "model.safetensors.index.json").read_text())
        assert len(files) > 1 and set(index["weight_map"].values()) == set(files)
    model = transformers.AutoModelForCausalLM.from_pretrained(out).eval()
    tokenizer = transformers.AutoTokenizer.from_pretrained(out)
    ids = tokenizer(["def main():\n    return 0", "The loop ends."], padding=True,
                    return_tensors="pt")
    with torch.no_grad():
        theirs = model(ids["input_ids"], attention_mask=ids["attention_mask"]).logits.numpy()
    ours = _jax_logits(lm_teacher_dir, ids["input_ids"].numpy())
    real = ids["attention_mask"].numpy().astype(bool)
    np.testing.assert_allclose(ours[real], theirs[real], atol=1e-4, rtol=1e-4)
    special = data.special_ids(checkpoint.read_config(lm_teacher_dir).data)
    generation = json.loads((out / "generation_config.json").read_text())
    assert (generation["eos_token_id"], generation["bos_token_id"]) == (special.eos, special.bos)


def test_a_bfloat16_export_is_bfloat16(lm_teacher_dir, tmp_path):
    out = _export(lm_teacher_dir, tmp_path / "hf", "--dtype=bfloat16")
    model = transformers.AutoModelForCausalLM.from_pretrained(out, dtype="auto")
    assert {p.dtype for p in model.parameters()} == {torch.bfloat16}
    assert json.loads((out / "config.json").read_text())["dtype"] == "bfloat16"


def test_export_refuses_a_directory_in_use_and_a_model_without_a_counterpart(
        lm_teacher_dir, teacher_dir, tmp_path):
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "file").write_text("x")
    with pytest.raises(DistillError, match="exists and is not empty"):
        export_lib.export(lm_teacher_dir, str(tmp_path / "taken"))
    with pytest.raises(DistillError, match="is a 'mlp' model, which has no Hugging Face"):
        export_lib.export(teacher_dir, str(tmp_path / "mlp"))
    assert not (tmp_path / "mlp").exists()


def test_an_exported_encoder_gives_the_same_embeddings_in_sentence_transformers(smoke_config,
                                                                                 tmp_path):
    sentence_transformers = pytest.importorskip("sentence_transformers")
    from jaxdistill import train

    config = smoke_config("minilm_sentences", total_steps=2, eval_every=2)
    train.train_and_evaluate(config, str(tmp_path / "run"), progress=False)
    out = _export(tmp_path / "run", tmp_path / "st")
    sentences = ["A cat sits on the mat.", "Distillation moves knowledge " * 12]  # past 48 tokens
    theirs = sentence_transformers.SentenceTransformer(str(out), device="cpu").encode(sentences)
    student = loading.run(str(tmp_path / "run"))
    encoded = data.tokenizer(config.data, config.data.max_length).encode_batch(sentences)
    ids = np.asarray([e.ids for e in encoded])
    mask = np.asarray([e.attention_mask for e in encoded])
    ours = np.asarray(student.module.apply(student.params, ids, mask, method="embed"))
    np.testing.assert_allclose(ours, theirs, atol=2e-5)
