"""Diffusion and flow models, one module per job, shared by the generative methods (the
`denoising` teacher and every step-distillation method), evaluation and the reproduced tables:

- `parameterizations`: EDM, TrigFlow and flow: how data and noise mix, what a denoiser sees
  and what its output means (denoiser, velocity, consistency function, average velocity);
- `sampling`: a denoiser's network with guidance, ODE steps, the samplers and their NFE;
- `distances`: the sliced Wasserstein and Fréchet distances generation is scored by.

What only training needs (CFG label dropout, guarded targets, finite means, consistency
distances) is the generative methods' family helper, `jaxdistill.methods.generative`.
"""
