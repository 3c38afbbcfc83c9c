"""Every registered method works on every preset with its default options: the config validates
(so, e.g., GMP reaches its target within the preset's run) and the agent's networks build."""

from __future__ import annotations

import dataclasses

import jax
import pytest

from mtrl_sparse.agents.ppo import make_ppo
from mtrl_sparse.agents.sac import make_sac
from mtrl_sparse.config import ConfigError, PPOTrainConfig, validate, with_current_methods
from mtrl_sparse.envs.metaworld import metaworld_task_names
from mtrl_sparse.envs.minigrid import MINIGRID_BENCHMARKS, NUM_ACTIONS, OBS_SHAPE
from mtrl_sparse.methods.base import scale_intervals
from mtrl_sparse.methods.network import build_network
from mtrl_sparse.methods.registry import METHODS
from mtrl_sparse.presets import PRESETS, paper_interval_scale
from mtrl_sparse.run_loop import default_run_dir

METAWORLD_OBS_DIM, METAWORLD_ACTION_DIM = 39, 4


def preset_with(preset: str, method: str):
    """The preset's config running ``method`` on every network, with its default options:
    sparsity 0.9 for a sparsity method, 0 otherwise."""
    sparsity = 0.9 if METHODS[method].kind == "sparsity" else 0.0
    config = with_current_methods(PRESETS[preset].config)
    return dataclasses.replace(config, method=method, sparsity=sparsity)


def agent_init_shapes(config):
    """Build the agent of ``config`` (methods resolved per network) and trace its init: the
    state's shapes."""
    networks = {name: build_network(settings, config.methods, name)
                for name, settings in config.network_methods().items()}
    if isinstance(config, PPOTrainConfig):
        num_tasks = len(MINIGRID_BENCHMARKS[config.env.benchmark])
        agent = make_ppo(config.ppo, num_tasks, OBS_SHAPE, NUM_ACTIONS, networks["actor"],
                         networks["critic"])
    else:
        num_tasks = len(metaworld_task_names(config.env.benchmark, config.env.task))
        agent = make_sac(config.sac, num_tasks, METAWORLD_OBS_DIM, METAWORLD_ACTION_DIM,
                         networks["actor"], networks["critic"])
    return jax.eval_shape(agent.init, jax.random.PRNGKey(0))


@pytest.mark.parametrize("preset", list(PRESETS))
def test_every_method_validates_and_builds_on_every_preset(preset):
    """Every method runs on every preset with its default options, except that the methods
    acting at task boundaries only are refused (a usage error) on multi-task presets."""
    for method in METHODS:
        config = preset_with(preset, method)
        if METHODS[method].sequential_only and config.phases() == 1:
            with pytest.raises(ConfigError, match="--schedule sequential"):
                validate(config)
            continue
        validate(config)
        state = agent_init_shapes(config)
        # A sparsity method's networks carry masks from init; the others' none.
        draws_masks = METHODS[method].kind == "sparsity"
        for network in (state.actor, state.critic):
            assert bool(jax.tree.leaves(network.masks)) == draws_masks, method


@pytest.mark.parametrize("preset", ["mt10-quick", "mt10-smoke"])
def test_short_metaworld_presets_scale_the_paper_intervals_by_their_length(preset):
    config, paper = PRESETS[preset].config, PRESETS["mt10-paper"].config
    for network in ("actor", "critic"):
        scale = getattr(config, network).interval_scale
        assert scale == paper_interval_scale(config, paper, network)
        assert scale == config.total_updates(network) / paper.total_updates(network) < 1
    assert f"x {config.actor.interval_scale:.3g}" in PRESETS[preset].description
    # GMP on mt10-quick: every 23 of its 9,000 updates, as the paper's 5,000 of 1,996,000.
    if preset == "mt10-quick":
        gmp = scale_intervals(config.methods.gmp, config.actor.interval_scale)
        assert (config.total_updates(), gmp.prune_every_updates) == (9_000, 23)


@pytest.mark.parametrize(("preset", "args", "label"), [
    ("minigrid-quick", {}, "mt3-dense-s0-"),  # the critic's interval scale differs: still dense
    ("mt10-quick", {"method": "gmp", "sparsity": 0.9}, "mt10-gmp-s0-"),
])
def test_default_run_dir_names_the_benchmark_method_and_seed(preset, args, label):
    config = dataclasses.replace(PRESETS[preset].config, **args)
    assert default_run_dir(config).name.startswith(label)
    mixed = dataclasses.replace(config, critic=dataclasses.replace(config.critic, method="static",
                                                                    sparsity=0.5))
    assert "-mixed-" in default_run_dir(mixed).name
