"""One budget for every request (issue 29 #13, #15): work in network evaluations scaled by the
network's measured FLOPs, and the memory a generation needs, both refused before any work."""

import functools
import time

import numpy as np
import pytest

from tf_score import config, sampling
from tf_score.families import score_model
from tf_score.families.run import generate_from
from tf_score.sampling import budget

TOY = dict(dataset="two_mode", hidden_units=(128, 128), activation="softplus")
#: flags/presets/mnist_ncsn_cpu.cfg's network: the 195,841-parameter conditional ResNet
MNIST_RESNET = dict(dataset="mnist", network="resnet", ngf=16, channel_mults=(1, 2, 2),
                    num_res_blocks=2, sigma_max=1.0, sigma_min=0.01, num_levels=10)  # fmt: skip


def _model(flat: dict, shape):
    cfg = config.from_flat(flat).replace(data={"data_shape": shape})
    network = score_model.network_fn(cfg, shape)()
    return cfg, network, score_model.score_model(cfg, network)


def test_the_work_of_a_request_scales_with_the_network_s_flops():
    """The issue's request, sample_with_steps(num_samples=99, n_steps_each=1000) on 10 levels,
    is 990,099 evaluations: within the default cap of 1,000,000 on the toy (3.6 s), and 23-31
    minutes on the MNIST ResNet. Its evaluations cost 76 units each (76 MFLOPs), so there it
    is refused, before any sampling, through generate as through the export's unit."""
    _, _, toy = _model(TOY, (2,))
    cfg, network, resnet = _model(MNIST_RESNET, (28, 28, 1))
    assert network.count_params() == 195_841
    toy_cost, resnet_cost = budget.network_cost(toy, (2,)), budget.network_cost(resnet, (28, 28, 1))
    assert toy_cost.units == 1 and toy_cost.flops < 100_000
    assert 70 <= resnet_cost.units <= 80 and resnet_cost.units == -(-resnet_cost.flops // 10**6)
    evaluations = 10 * 1000 + 1  # annealed Langevin: T steps per level, one final denoise
    budget.check_work(99, evaluations, toy_cost, 1_000_000)
    with pytest.raises(budget.BudgetError, match=r"x cost \(7\d per evaluation of this network"):
        budget.check_work(99, evaluations, resnet_cost, 1_000_000)
    sampler = cfg.sampler.replace(n_steps_each=1000)
    space = score_model.sample_space(cfg, (28, 28, 1))
    t0 = time.time()
    with pytest.raises(budget.BudgetError, match=r"ask for at most --num_samples=1\b"):
        generate_from(resnet, cfg.noise.sigmas(), space, 99, 0, sampler,
                      max_evaluations=1_000_000)  # fmt: skip
    assert time.time() - t0 < 60  # refused, not sampled (that takes 23-31 minutes)
    # the check generate makes: a request within the cap passes, one more sample is over it
    options = sampling.options_of(cfg.sampler.replace(n_steps_each=1))
    cap = 2 * 11 * resnet_cost.units
    made = sampling.plan("annealed_langevin", resnet, cfg.noise.sigmas(), options)
    check = functools.partial(budget.check_draw, made, space, batch_size=0)
    assert check(num_samples=2, max_evaluations=cap) == resnet_cost
    with pytest.raises(budget.BudgetError, match=f"must be <= {cap}"):
        check(num_samples=3, max_evaluations=cap)


def test_a_generation_that_cannot_fit_in_memory_is_refused_with_the_most_that_fits(monkeypatch):
    """run_sample.py --num_samples=1000000000 on the toy grew to 24 GB and was killed; now the
    memory it would need is computed first and compared with what is available."""
    cfg, _, toy = _model(TOY, (2,))
    cost = budget.network_cost(toy, (2,))
    assert 0 < cost.peak_bytes < 100_000  # live tensors of one example through 128-128
    available = 16 * 2**30
    with pytest.raises(budget.BudgetError) as err:
        budget.check_generation(10**9, 0, (2,), cost, 1, available=available)
    message = str(err.value)
    assert message.startswith("--num_samples=1000000000 needs about ") and "\n" not in message
    assert "more than the 16.0 GB available here" in message
    most = int(message.rsplit("--num_samples=", 1)[1].split()[0])
    budget.check_generation(most, 0, (2,), cost, 1, available=available)
    with pytest.raises(budget.BudgetError):
        budget.check_generation(most + 1, 0, (2,), cost, 1, available=available)
    # image samples in batches: the batch's working memory once, the samples kept all along
    with pytest.raises(budget.BudgetError, match=r"or a smaller --sample_batch_size"):
        budget.check_generation(10**7, 64, (28, 28, 1), cost, 1, available=available)
    with pytest.raises(budget.BudgetError, match=r"draw them in batches with --sample_batch"):
        budget.check_generation(10**6, 0, (28, 28, 1), cost, 1, available=available)
    # generate checks before it draws anything
    monkeypatch.setattr(budget, "available_memory", lambda: 50 * 2**20)
    space = score_model.sample_space(cfg, (2,))
    t0 = time.time()
    with pytest.raises(budget.BudgetError, match="--num_samples=1000000 needs about"):
        generate_from(toy, cfg.noise.sigmas(), space, 10**6, 0, cfg.sampler)
    assert time.time() - t0 < 30
    out = generate_from(toy, cfg.noise.sigmas(), space, 100, 0, cfg.sampler.replace(n_steps_each=2))
    assert out.samples.shape == (100, 2) and np.all(np.isfinite(out.samples))


def test_available_memory_is_read_from_the_system():
    available = budget.available_memory()
    assert available is None or 0 < available < 2**50
