"""One merchant's share of a distributed DP step: its noise is secret, not a function of anything public."""

import numpy as np
import torch

from shared_model.checkpoint import model_for_catalogue
from shared_model.distributed_step import noised_gradient_sum
from shared_model.merchant_data import simulated_merchants
from shared_model.shared_weights import initial_shared_state
from tests.conftest import tiny_run


def _vector(run, merchant, *, share, seed=None):
    torch.manual_seed(0)  # what a fresh ClientApp process has: torch's global generator in a known state
    shared = initial_shared_state(run.model_config(), seed=run.seed)
    model = model_for_catalogue(run.model_config(), shared, merchant.sequences.catalogue)
    shapes = {name: tuple(t.shape) for name, t in shared.items()}
    return noised_gradient_sum(model, merchant.sequences, run, shapes, share=share, device=torch.device("cpu"),
                               seed=seed).vector


def test_the_noise_share_is_secret_and_only_the_noise_differs(tmp_path):
    run = tiny_run(tmp_path, privacy="distributed", sample_rate=1.0)  # every customer sampled: no sampling noise
    merchant = simulated_merchants(run, 2)[0]
    assert np.array_equal(_vector(run, merchant, share=0.0), _vector(run, merchant, share=0.0))
    first, second = _vector(run, merchant, share=0.5), _vector(run, merchant, share=0.5)
    assert not np.array_equal(first, second)  # the same public inputs, different noise: nobody can redraw it
    assert np.std(first - second) > 0.5  # two independent draws of N(0, 0.5^2) per coordinate differ by ~0.71
    assert np.array_equal(_vector(run, merchant, share=0.5, seed=3), _vector(run, merchant, share=0.5, seed=3))
