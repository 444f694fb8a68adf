"""DistillSpec (Zhou et al. 2024): a speculative-decoding draft distilled from its target.

The training loss is GKD's (on-policy data from the draft, λ = config.loss.student_data_fraction)
with the divergence that bounds the acceptance rate: for one token the acceptance probability
of speculative sampling is 1 − TVD(target, draft), so `tvd` maximises it directly (the paper's
best choice varies; fkl and jsd are its alternatives). What differs from GKD is the purpose and
the measure: `jaxdistill.speculative` reports the draft's acceptance rate and block efficiency.
"""

from __future__ import annotations

from jaxdistill.methods import gkd, register

register("distillspec", tasks=("lm",), settings=gkd.SETTINGS)(gkd.make_loss)
