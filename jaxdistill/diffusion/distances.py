"""Distances between a model's samples and real data, as generation is scored: the sliced
Wasserstein distance on raw points and the Fréchet distance on features (FID's formula)."""

from __future__ import annotations

import math

import numpy as np

from jaxdistill.errors import DistillError


def sliced_wasserstein(samples: np.ndarray, reference: np.ndarray, projections: int = 1024,
                       seed: int = 0) -> float:
    """Sliced 2-Wasserstein distance between two equal-size point sets (flattened per row):
    √(mean over random unit directions of W2² of the 1-D projections), the directions fixed by
    `seed` so every model is scored on the same ones."""
    samples = np.reshape(np.asarray(samples, np.float64), (len(samples), -1))
    reference = np.reshape(np.asarray(reference, np.float64), (len(reference), -1))
    if samples.shape != reference.shape:
        raise DistillError(f"sliced Wasserstein needs equal sets; got {samples.shape} samples"
                           f" and {reference.shape} reference points")
    directions = np.random.default_rng(seed).normal(size=(samples.shape[1], projections))
    directions /= np.linalg.norm(directions, axis=0, keepdims=True)
    gaps = np.sort(samples @ directions, axis=0) - np.sort(reference @ directions, axis=0)
    return float(math.sqrt(np.mean(gaps ** 2)))


def frechet_distance(features: np.ndarray, reference: np.ndarray) -> float:
    """Fréchet distance between Gaussians fitted to two feature sets (FID's formula):
    ‖μ₁ − μ₂‖² + Tr(Σ₁ + Σ₂ − 2(Σ₁Σ₂)^½), in float64.

    Tr((Σ₁Σ₂)^½) is computed as Σ √eig(Σ₁^½ Σ₂ Σ₁^½), a symmetric PSD matrix with the same
    spectrum, so singular covariances (ReLU features that never fire, fewer samples than
    dimensions) give an exact answer where a general matrix square root is ill-conditioned."""
    features = np.asarray(features, np.float64)
    reference = np.asarray(reference, np.float64)
    mean_gap = np.sum((features.mean(0) - reference.mean(0)) ** 2)
    cov_a, cov_b = np.cov(features, rowvar=False), np.cov(reference, rowvar=False)
    values, vectors = np.linalg.eigh(cov_a)
    root_a = (vectors * np.sqrt(np.clip(values, 0, None))) @ vectors.T
    trace_root = np.sum(np.sqrt(np.clip(np.linalg.eigvalsh(root_a @ cov_b @ root_a), 0, None)))
    return float(mean_gap + np.trace(cov_a) + np.trace(cov_b) - 2.0 * trace_root)
