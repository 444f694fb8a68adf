"""Born-Again Networks (Furlanello et al., 2018): distil a model into its own architecture.

Generation k is trained from scratch to match generation k−1's softened outputs (the `kd`
loss; BAN's own setting is α = 1, τ = 1, the teacher's distribution alone), and the paper finds
students that outperform their identical teachers. The method is `kd` plus the requirement that
both networks share one architecture; chaining generations is a teacher that is itself a
born-again run (see configs/born_again_digits.py).
"""

from __future__ import annotations

import dataclasses

from jaxdistill.errors import DistillError
from jaxdistill.methods import Context, kd, register

# Regularisation may differ between generations; the architecture may not.
_NOT_ARCHITECTURE = ("parent", "name", "dropout", "input_dropout")


def architecture(module) -> tuple:
    """The module's class and fields, less regularisation (sequences compared as tuples, since
    a teacher rebuilt from its config.json has lists where the config had tuples)."""
    def frozen(value):
        return tuple(value) if isinstance(value, (list, tuple)) else value

    return (type(module).__name__,) + tuple(
        (f.name, frozen(getattr(module, f.name))) for f in dataclasses.fields(module)
        if f.name not in _NOT_ARCHITECTURE)


@register("born_again", tasks=("classification",), settings=kd.SETTINGS)
def make_loss(ctx: Context):
    student, teacher = ctx.student, ctx.teacher
    if architecture(student) != architecture(teacher):
        raise DistillError(
            f"born_again needs the student to share the teacher's architecture, but the student is"
            f" {architecture(student)} and the teacher {architecture(teacher)}; use method 'kd' to"
            " distil into another architecture")
    return kd.make_loss(ctx)
