"""DMD2: improved distribution matching distillation (Yin et al., NeurIPS 2024).

A generator G (the student, initialised from the EDM teacher) maps noise to data in one step,
G(z) = f_θ(σ_max·z, σ_max). Its loss follows the distribution-matching gradient: the difference
between a "fake" score network, trained on G's own samples, and the teacher's ("real") score at
a noised version of G's sample,
    x = G(z),  x_t = x + σ·ε,  grad = (D_fake(x_t) − D_real(x_t)) / mean|x − D_real(x_t)|,
    loss = ½·mean((x − sg(x − grad))²)  (+ gan_weight · softplus(−C(x_t)), the GAN term),
so G moves where the teacher's denoiser points and away from where its own distribution's does.
The fake score is a copy of the teacher, trained by denoising score matching on sg(G(z)); it is
carried in the method state with its own Adam (β1 = 0, β2 = 0.99) and updated `fake_updates`
times per generator update (the two time-scale rule that replaces DMD's regression loss).
With `gan_weight` > 0 the fake score also carries DMD2's GAN head C on its last hidden
features (`config.student.gan_head`): it learns to tell noised real images from noised
generated ones (`discriminator_weight` · the logistic loss, in the fake-score updates), and
the generator gets the non-saturating loss softplus(−C). A multi-step generator
(`generator_times`) is also trained at inner times, on its own one-step samples re-noised
(backward simulation). Noise levels come from EDM's log-normal, where DMD2 draws DDPM
timesteps uniformly in [0.02, 0.98]·T. Each step reports the fake score's losses, averaged over
its updates: `dmd2/fake_score_loss` (denoising score matching) and, with the GAN head,
`dmd2/discriminator_loss`.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxdistill.diffusion.parameterizations import consistency_function, per_example
from jaxdistill.diffusion.sampling import network
from jaxdistill.errors import DistillError
from jaxdistill.methods import Context, StatefulLoss, StateUpdate, generative, register

# The fake-score network's updates per generator update (two time-scale rule) and their learning
# rate, the teacher's guidance scale in the real score, and the times the generator is trained to
# denoise from (empty: one step from σ_max; more for a multi-step generator, reached by backward
# simulation from its own one-step samples); gan_weight > 0 adds the GAN head's generator loss,
# discriminator_weight its loss in the fake updates.
SETTINGS = {**generative.SETTINGS, "dmd2": {
    "fake_updates": 5, "fake_lr": 2e-4, "guidance": 1.0, "generator_times": (),
    "gan_weight": 0.0, "discriminator_weight": 1e-2}}


@register("dmd2", tasks=("generation",), settings=SETTINGS)
def make_loss(ctx: Context):
    config, student, teacher = ctx.config, ctx.student, ctx.teacher
    generative.check_teacher(ctx)
    param = generative.edm_parameterization(config, "dmd2")
    settings = config.dmd2
    gan = settings.gan_weight > 0
    if gan and not config.student.get("gan_head"):
        raise DistillError("dmd2 with config.dmd2.gan_weight > 0 needs the fake score's GAN head;"
                           " set config.student.gan_head=True")
    num_classes = generative.class_count(config)
    sample_shape = (config.batch_size, *ctx.dataset.inputs["x"][0])
    times = jnp.asarray(np.array([param.t_max, *settings.generator_times], np.float32))
    fake_optimizer = optax.adam(settings.fake_lr, b1=0.0, b2=0.99)
    fake_key = jax.random.key(config.seed + 1)  # the fake-score updates' own stream

    def generate(params, rng, n, label):
        """G's samples, each from one of the generator times (backward simulation for the
        inner ones: its own one-step sample re-noised)."""
        noise_rng, renoise_rng, time_rng = jax.random.split(rng, 3)
        generator = network(student, params, train=True)
        shape = (n, *sample_shape[1:])
        x_max = param.prior(noise_rng, shape)
        t_max = jnp.full((n,), param.t_max)
        one_step = consistency_function(param, generator, x_max, t_max, label)
        if len(times) == 1:
            return one_step
        t = times[jax.random.randint(time_rng, (n,), 0, len(times))]
        x_t = jnp.where(per_example(t, x_max) == param.t_max, x_max, param.noisy(
            jax.lax.stop_gradient(one_step), jax.random.normal(renoise_rng, shape), t))
        return consistency_function(param, generator, x_t, t, label)

    def random_labels(rng, n):
        return jax.random.randint(rng, (n,), 0, num_classes) if num_classes else None

    def logit(fake_params, x, t, label):
        c_in, c_noise = param.network_inputs(x, t)
        return student.apply(fake_params, c_in * x, c_noise, label, train=True,
                             with_logit=True)[1]

    def loss_fn(params, teacher_params, batch, rng, step, fake):
        del step
        n = batch["x"].shape[0]
        gen_rng, time_rng, noise_rng, label_rng = jax.random.split(rng, 4)
        label = random_labels(label_rng, n)
        x = generate(params, gen_rng, n, label)
        t = param.sample_time(time_rng, n)
        _, x_t = generative.noisy_pair(param, x, t, noise_rng)
        frozen_x_t = jax.lax.stop_gradient(x_t)
        real = param.denoise(network(teacher, teacher_params, settings.guidance, num_classes),
                             frozen_x_t, t, label)
        fake_denoised = param.denoise(network(student, fake["params"]), frozen_x_t, t, label)
        scale = jnp.mean(jnp.abs(jnp.reshape(x - real, (n, -1))), axis=-1)
        grad = (fake_denoised - real) / per_example(jnp.maximum(scale, 1e-8), x)
        # Mean over features, as DMD2's code reduces it: the GAN weight is relative to this.
        target, ok = generative.guard_target(jax.lax.stop_gradient(x - grad), x)
        per_example_loss = 0.5 * generative.mean_squared_error(x, target)
        metrics = {"dmd_scale": jnp.mean(scale)}
        if gan:
            generator_gan = jax.nn.softplus(-logit(jax.lax.stop_gradient(fake["params"]), x_t, t,
                                                   label))
            per_example_loss += settings.gan_weight * generator_gan
            metrics["gan_generator"] = jnp.mean(generator_gan)
        loss, metrics["nonfinite"] = generative.finite_mean(per_example_loss, ok)
        return loss, metrics

    def discriminator_loss(fake_params, batch, generated: generative.DenoisingLoss, label,
                           time_rng, noise_rng):
        """The GAN head's logistic loss: the batch's real data noised at training times against
        G's samples at the noise the fake score was trained on."""
        real = batch["x"]
        real_t = param.sample_time(time_rng, real.shape[0])
        _, real_x_t = generative.noisy_pair(param, real, real_t, noise_rng)
        real_label = generative.class_labels(batch, num_classes)
        return (jnp.mean(jax.nn.softplus(-logit(fake_params, real_x_t, real_t, real_label)))
                + jnp.mean(jax.nn.softplus(logit(fake_params, generated.x_t, generated.t,
                                                 label))))

    def fake_loss(fake_params, generator_params, rng, batch):
        """Denoising score matching on G's samples (+ the discriminator's logistic loss), with
        each part as a metric."""
        gen_rng, time_rng, noise_rng, label_rng, real_time_rng, real_noise_rng = (
            jax.random.split(rng, 6))
        n = sample_shape[0]
        label = random_labels(label_rng, n)
        x0 = jax.lax.stop_gradient(generate(generator_params, gen_rng, n, label))
        score = generative.denoising_loss(param, network(student, fake_params, train=True), x0,
                                          label, time_rng, noise_rng)
        loss, metrics = score.loss, {"dmd2/fake_score_loss": score.loss}
        if gan:
            discriminator = discriminator_loss(fake_params, batch, score, label, real_time_rng,
                                               real_noise_rng)
            loss += settings.discriminator_weight * discriminator
            metrics["dmd2/discriminator_loss"] = discriminator
        return loss, metrics

    def init_state(params):
        fake = jax.tree.map(jnp.copy, params)
        return {"params": fake, "opt_state": fake_optimizer.init(fake)}

    def update_state(fake, step, loss, metrics, params, batch):
        del loss, metrics

        def fake_update(fake, index):
            rng = jax.random.fold_in(jax.random.fold_in(fake_key, step), index)
            grads, update_metrics = jax.grad(fake_loss, has_aux=True)(fake["params"], params,
                                                                      rng, batch)
            updates, opt_state = fake_optimizer.update(grads, fake["opt_state"], fake["params"])
            return {"params": optax.apply_updates(fake["params"], updates),
                    "opt_state": opt_state}, update_metrics

        fake, update_metrics = jax.lax.scan(fake_update, fake, jnp.arange(settings.fake_updates))
        # Each update's losses are those of the fake score before it; report their mean.
        return StateUpdate(fake, jax.tree.map(jnp.mean, update_metrics))

    return StatefulLoss(loss_fn, init_state, update_state)
