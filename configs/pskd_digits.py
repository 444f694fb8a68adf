"""PS-KD on digits: the MLP learns from labels softened by its own previous-epoch predictions.

  jaxdistill train --config configs/pskd_digits.py:local --workdir runs/pskd

Target at epoch t of T: (1 − α_t)·onehot(y) + α_t·p_{t−1}(x) with α_t = α_T·t/T, α_T =
`loss.alpha` = 0.8 as in the paper. No separate teacher: the previous epoch's params live in
the training state. The network is born_again_digits' generation 0, so that run is the baseline.
Runtime: local about 15 s on 2 CPU cores.
"""

from jaxdistill import config as config_lib

from . import common


def get_config(arg=None):
    config = common.digits_base(config_lib.scale_of(arg), "pskd")
    config.student.update(common.SELF_DISTILLATION_MLP)
    config.loss.alpha = 0.8
    return config
