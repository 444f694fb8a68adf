"""The five step-distillation tables, each a teacher and its paper's students
(`step_distillation` runs them)."""

from __future__ import annotations

from jaxdistill.reproduce.step_distillation import Student, experiment

CD2023 = experiment(
    "cd2023",
    "Song et al. (2023), Consistency Models: consistency distillation (CD) of an EDM teacher "
    "with N = 18 Heun-discretised levels and an EMA target (μ = 0.95); squared L2 instead of "
    "LPIPS. The paper's consistency training (CT) row is improved on by ict2023.",
    "CIFAR-10 FID: CD 3.55 (1 step) / 2.93 (2 steps); CT 8.70 / 5.83; EDM teacher 2.04 at 35 NFE",
    "edm", (Student("CD", "cd2023"),))

ICT2023 = experiment(
    "ict2023",
    "Song & Dhariwal (2023), Improved Techniques for Training Consistency Models: iCT trains "
    "from data alone (pseudo-Huber loss, log-normal levels, doubling curriculum 10 → 1280, no "
    "EMA target). The EDM teacher rows are for comparison; iCT never sees the teacher.",
    "CIFAR-10 FID: iCT 2.83 (1 step) / 2.46 (2 steps); iCT-deep 2.51 / 2.24",
    "edm", (Student("iCT", "ict2023"),))

SCM2024 = experiment(
    "scm2024",
    "Lu & Song (2024), sCM: continuous-time consistency in TrigFlow with the tangent by "
    "jax.jvp (tangent normalisation, warm-up, adaptive weighting): sCD distils the TrigFlow "
    "teacher, sCT trains from data alone. Two steps go through t = 1.1.",
    "CIFAR-10 FID: sCD 3.66 (1 step) / 2.52 (2 steps), sCT 2.97 / 2.06; "
    "ImageNet-64 sCT 2.04 / 1.48",
    "trigflow",
    (Student("sCD", "scm2024"),
     Student("sCT", "scm2024", {"method": "sct", "student_init.from_teacher": False})))

MEANFLOW2025 = experiment(
    "meanflow2025",
    "Geng et al. (2025), Mean Flows: the average velocity u(z, r, t) learnt from the MeanFlow "
    "identity with du/dt by jax.jvp, trained from data alone; the flow-matching teacher rows "
    "(the same network family, trained by instantaneous velocity) are the comparison. The last "
    "rows repeat MeanFlow with time embedded as 1000·t instead of t (sCM §4.1's warning).",
    "ImageNet-256 FID: MeanFlow-XL/2 3.43 (1 NFE) / 2.93 (2 NFE)",
    "flow",
    (Student("MeanFlow", "meanflow2025"),
     # The ablation behind `time_scale`: the same run with EDM-style 1000·t time embeddings.
     Student("MeanFlow, time embedded as 1000·t", "meanflow2025",
             {"diffusion.time_scale": 1000.0})))

DMD2_2024 = experiment(
    "dmd2_2024",
    "Yin et al. (2024), DMD2: a one-step generator trained by the distribution-matching "
    "gradient against a fake score updated 5× per generator step, with the GAN head on the "
    "fake score (no regression loss). Its 2-step row re-noises the one-step sample to σ ≈ 2.5 "
    "and generates again (a generator trained at σ = 2.5 too, `dmd2.generator_times`, is left "
    "out of this CPU table for time).",
    "ImageNet-64 FID: DMD2 1.28 (1 step), 2.61 without the GAN head",
    "edm",
    (Student("DMD2", "dmd2_2024"),))

EXPERIMENTS = (CD2023, ICT2023, SCM2024, MEANFLOW2025, DMD2_2024)
