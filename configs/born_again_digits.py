"""Born-again networks on digits: generation k distils generation k−1 of the same MLP.

  jaxdistill train --config configs/born_again_digits.py:local --workdir runs/ban
  jaxdistill train --config configs/born_again_digits.py:local,3 --workdir runs/ban3

`ARG` is `SCALE[,GENERATION]` (generation 1 by default). Generation 0 is the network trained
from labels (`supervised`); generation k ≥ 1 (`born_again`) learns from generation k−1 with the
paper's loss, the teacher's distribution alone (α = 1, τ = 1). With `teacher.checkpoint` empty
the whole chain is trained: generation k−1 into WORKDIR/teacher, k−2 into
WORKDIR/teacher/teacher, and so on. Runtime: local about 15 s per generation on 2 CPU cores.
"""

from jaxdistill import config as config_lib

from . import common


def get_config(arg=None):
    scale, generation = config_lib.parse_arg(arg, "1")
    generation = int(generation)
    config = common.digits_base(scale, "born_again" if generation else "supervised")
    config.student.update(common.SELF_DISTILLATION_MLP)
    config.teacher.config = f"born_again_digits:{scale},{generation - 1}" if generation else ""
    config.loss.update({"temperature": 1.0, "alpha": 1.0})
    return config
