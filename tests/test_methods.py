"""The method contract: a method is one file plus one config, and the engine names no method."""

import json
import os
import pkgutil
import re
import sys
import textwrap

import ml_collections
import pytest

from jaxdistill import cli, methods, models
from jaxdistill.errors import DistillError

# A complete method in a user's own file: its own setting, its own check, its own state.
USER_METHOD = textwrap.dedent('''
    import jax.numpy as jnp

    from jaxdistill import losses
    from jaxdistill.errors import DistillError
    from jaxdistill.methods import Context, StatefulLoss, register


    @register("tempered_jsd", tasks=("classification",),
              settings={"loss": {"temperature": 2.0, "jsd_beta": 0.5}})
    def make_loss(ctx: Context):
        student, teacher, settings = ctx.student, ctx.teacher, ctx.config.loss
        if not 0 < settings.jsd_beta < 1:
            raise DistillError(f"config.loss.jsd_beta must lie in (0, 1), got {settings.jsd_beta}")

        def loss_fn(params, teacher_params, batch, rng, step, seen):
            logits = student.apply(params, batch["image"], train=True, rngs={"dropout": rng})
            teacher_logits = teacher.apply(teacher_params, batch["image"], train=False)
            loss = losses.divergence(logits, teacher_logits, "jsd", beta=settings.jsd_beta,
                                     temperature=settings.temperature)
            return loss, {"user/examples_seen": seen, "user/epochs": step / ctx.steps_per_epoch}

        def update_state(seen, step, loss, metrics, params, batch):
            return seen + batch["image"].shape[0]

        return StatefulLoss(loss_fn, lambda params: jnp.zeros((), jnp.int32), update_state)
''')


def _train(tmp_path, data_dir, teacher_dir, *overrides):
    cli.main(["train", "--config=configs/hinton_kd_digits.py:smoke",
              f"--workdir={tmp_path / 'run'}", "--no_progress",
              f"--config.data.data_dir={data_dir}", "--config.checkpoint.async_save=False",
              f"--config.teacher.checkpoint={teacher_dir}", *overrides])


def test_a_method_in_a_user_file_trains_from_the_cli(tmp_path, data_dir, teacher_dir):
    path = tmp_path / "my_method.py"
    path.write_text(USER_METHOD)
    _train(tmp_path, data_dir, teacher_dir, f"--config.method={path}:tempered_jsd",
           "--config.loss.jsd_beta=0.25")
    records = [json.loads(line) for line in open(tmp_path / "run" / "metrics.jsonl")]
    train = [r for r in records if "split" not in r]
    saved = json.loads(open(tmp_path / "run" / "config.json").read())
    assert train[-1]["step"] == 20
    # The method's state went through every step: step 19 reads what 19 updates counted.
    assert train[-1]["user/examples_seen"] == 19 * saved["batch_size"]
    assert saved["loss"]["jsd_beta"] == 0.25 and saved["loss"]["temperature"] == 20.0


def test_a_user_methods_setting_is_checked_and_listed(capsys, tmp_path, data_dir, teacher_dir):
    path = tmp_path / "checked_method.py"
    path.write_text(USER_METHOD.replace('"tempered_jsd"', '"checked_jsd"'))
    for override, expected in (("--config.loss.jsd_beta=1.5", "jsd_beta must lie in (0, 1)"),
                               ("--config.loss.jsd_bta=0.3", "jsd_beta, temperature")):
        with pytest.raises(SystemExit):
            _train(tmp_path, data_dir, teacher_dir, f"--config.method={path}:checked_jsd",
                   override)
        assert expected in capsys.readouterr().err


def test_a_method_named_by_module_path(tmp_path, monkeypatch):
    (tmp_path / "user_methods_pkg.py").write_text(USER_METHOD.replace('"tempered_jsd"',
                                                                      '"tempered_jsd_2"'))
    monkeypatch.syspath_prepend(str(tmp_path))
    method = methods.get("user_methods_pkg:tempered_jsd_2")
    assert method.needs_teacher and method.tasks == ("classification",)
    with pytest.raises(DistillError, match="cannot import method module 'no_such_module'"):
        methods.get("no_such_module:x")
    with pytest.raises(DistillError, match="method file .*missing.py does not exist"):
        methods.get(f"{tmp_path}/missing.py:x")


def test_every_module_of_the_package_is_discovered():
    methods.names()
    for module in pkgutil.iter_modules(methods.__path__):
        assert f"jaxdistill.methods.{module.name}" in sys.modules, module.name
    # Every method the README's table of methods names is registered.
    for name in ("supervised", "kd", "born_again", "pskd", "minilm", "embedding_kd", "hidden_mse",
                 "hidden_cosine", "sft", "logit_kd", "cached_kd", "seqkd", "gkd", "taid",
                 "adaspec", "distillspec", "denoising", "cd", "ict", "scd", "sct", "meanflow",
                 "dmd2"):
        assert name in methods.names(), name


def test_registering_a_name_twice_is_refused():
    with pytest.raises(DistillError, match="method 'kd' is registered twice"):
        methods.register("kd")(lambda ctx: None)


def test_settings_merge_fills_only_what_is_missing():
    config = methods.base_config("kd")
    config.loss.temperature = 7.0
    config.method = "taid"
    methods.with_settings(config)
    assert config.loss.temperature == 7.0 and config.loss.taid.t_start == 0.4
    assert "consistency" not in methods.base_config("kd")


def test_the_engine_names_no_method():
    root = os.path.join(os.path.dirname(methods.__file__), "..")
    engine = ("state.py", "step.py", "run.py", "config.py", "train.py", "checkpoint.py",
              "sharding.py", "memory.py", "student_init.py", "loading.py")
    quoted = {f'"{name}"' for name in methods.names()} | {f"'{name}'" for name in methods.names()}
    for module in engine:
        text = open(os.path.join(root, module)).read()
        found = [q for q in quoted if q in text]
        assert not found, f"{module} names methods {found}"
        assert not re.search(r"\bsnapshot_params\b|\bself_teacher\b", text), module


def test_a_method_on_data_of_another_task_is_refused(smoke_config):
    from jaxdistill.run import build

    with pytest.raises(DistillError, match="method 'sft' trains on lm data but config.data names"
                                           " a classification dataset"):
        build(smoke_config("hinton_teacher_digits", method="sft"))


USER_MODEL = '''
import flax.linen as nn


class ResidualMLP(nn.Module):
    """A user's classifier: one hidden layer with a skip, unannotated params (replicated)."""

    num_classes: int
    hidden: tuple = (32,)
    dropout: float = 0.0
    input_dropout: float = 0.0

    @nn.compact
    def __call__(self, images, *, train: bool):
        x = images.reshape(images.shape[0], -1)
        h = nn.relu(nn.Dense(self.hidden[0])(x))
        return nn.Dense(self.num_classes)(h + nn.Dense(self.hidden[0])(x))
'''


def test_a_model_of_your_own_file_trains_and_resumes(tmp_path, data_dir):
    model_file = tmp_path / "my_models.py"
    model_file.write_text(USER_MODEL)
    flags = ["train", "--config", "hinton_teacher_digits:smoke", "--workdir",
             str(tmp_path / "run"), f"--config.data.data_dir={data_dir}",
             "--config.checkpoint.async_save=False",
             f"--config.student.model={model_file}:ResidualMLP"]
    cli.main(flags + ["--config.total_steps=6"])
    cli.main(flags + ["--config.total_steps=12"])  # resumes: the model is rebuilt from its file
    lines = [json.loads(line) for line in open(tmp_path / "run" / "metrics.jsonl")]
    assert max(line["step"] for line in lines) == 12
    for name, message in ((f"{model_file}:Missing", "has no Flax module 'Missing'"),
                          (f"{tmp_path}/absent.py:X", "model file .*absent.py does not exist"),
                          ("no_such_package:X", "cannot import model module 'no_such_package'")):
        with pytest.raises(DistillError, match=message):
            models.build(ml_collections.ConfigDict({"model": name, "num_classes": 10}))
