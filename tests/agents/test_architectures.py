"""Architectures mh / moe / moore: MOORE's Gram-Schmidt, the per-task mixing of the experts, an
unmasked task encoder under sparse methods, the CLI flags, and one short run per agent and
mixture architecture (mh is covered by the other test files)."""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from mtrl_sparse.agents.net_state import masked_params
from mtrl_sparse.agents.networks import (
    REPRESENTATION_OUT,
    TASK_ENCODER,
    check_neuron_layers,
    orthonormalize,
)
from mtrl_sparse.agents.optim import NetworkSetup
from mtrl_sparse.agents.ppo import PPO, PPOConfig, Rollout, make_ppo
from mtrl_sparse.agents.replay_buffer import Transition
from mtrl_sparse.agents.sac import SACConfig, make_sac
from mtrl_sparse.agents.tree_paths import path_str
from mtrl_sparse.methods.base import NetworkMethodSettings
from mtrl_sparse.methods.network import build_network
from mtrl_sparse.presets import get_preset
from mtrl_sparse.run_dir import read_metrics
from mtrl_sparse.run_loop import train
from mtrl_sparse.train_args import parse_train_args
from support.invariants import assert_mask_invariant
from support.method_options import options_firing_every_update

NUM_TASKS, OBS_DIM, ACTION_DIM, BATCH, EXPERTS = 3, 5, 2, 12, 2
OBS_SHAPE, NUM_ACTIONS = (7, 7, 3), 7

# ----------------------------------------------------------------------------- orthonormalize


def classic_gram_schmidt(x: np.ndarray) -> np.ndarray:
    """Textbook Gram-Schmidt in float64 over the rows of each (k, d) sample of (B, k, d); an
    all-zero row stays zero."""
    out = np.zeros_like(x, dtype=np.float64)
    for b in range(x.shape[0]):
        for i in range(x.shape[1]):
            v = x[b, i].astype(np.float64)
            v = v - sum(np.dot(out[b, j], x[b, i]) * out[b, j] for j in range(i))
            norm = np.linalg.norm(v)
            out[b, i] = v / norm if norm > 0 else 0.0  # a dead expert stays zero
    return out


def gram(q: jax.Array) -> np.ndarray:
    """(B, k, d) -> (B, k, k) inner products of each sample's rows."""
    return np.einsum("bkd,bjd->bkj", np.asarray(q, np.float64), np.asarray(q, np.float64))


orthonormalize_jit = jax.jit(orthonormalize)


@settings(deadline=None)
@given(seed=st.integers(0, 2**20), batch=st.integers(1, 3), k=st.integers(1, 4),
       extra=st.integers(0, 4), scale=st.floats(0.1, 100.0))
def test_orthonormalize_gives_orthonormal_rows_spanning_the_input(seed, batch, k, extra, scale):
    x = scale * np.random.default_rng(seed).normal(size=(batch, k, k + extra)).astype(np.float32)
    # Unit rows are promised where each residual is much longer than eps = 1e-6 (the residuals
    # are |R_ii| of x^T = QR); a near-zero residual (a 1 x 1 input of 3e-5, say) comes out shorter.
    residuals = np.abs(np.diagonal(np.linalg.qr(np.swapaxes(x, 1, 2).astype(np.float64))[1],
                                   axis1=-2, axis2=-1))
    assume(residuals.min() > 1e-3)
    q = orthonormalize_jit(jnp.asarray(x))
    assert q.shape == x.shape
    np.testing.assert_allclose(gram(q), np.broadcast_to(np.eye(k), (batch, k, k)), atol=1e-5)
    # Same span: every input row is its own projection on the rows of q.
    projected = np.einsum("bkj,bjd->bkd", np.einsum("bkd,bjd->bkj", x, q), q)
    np.testing.assert_allclose(projected, x, atol=1e-4 * scale)
    if np.linalg.cond(x.astype(np.float64)).max() < 1e3:  # well conditioned: the textbook result
        np.testing.assert_allclose(q, classic_gram_schmidt(x), atol=1e-4)


@settings(deadline=None)
@given(seed=st.integers(0, 2**20), closeness=st.floats(1e-3, 1e-1))
def test_orthonormalize_stays_orthonormal_on_nearly_dependent_experts(seed, closeness):
    rng = np.random.default_rng(seed)
    shared = rng.normal(size=(2, 1, 16))
    x = (shared + closeness * rng.normal(size=(2, 4, 16))).astype(np.float32)
    q = orthonormalize_jit(jnp.asarray(x))
    np.testing.assert_allclose(gram(q), np.broadcast_to(np.eye(4), (2, 4, 4)), atol=1e-4)
    # Row 0 is expert 0 normalised; the others are what their small differences add to it.
    np.testing.assert_allclose(q[:, 0], x[:, 0] / np.linalg.norm(x[:, 0], axis=-1, keepdims=True),
                               rtol=1e-5, atol=1e-6)


def test_orthonormalize_of_a_zero_or_repeated_expert_is_finite_with_finite_gradients():
    x = np.random.default_rng(0).normal(size=(2, 4, 8)).astype(np.float32)
    x[:, 1] = 0.0  # a dead expert
    x[:, 3] = 2.0 * x[:, 0]  # an expert repeating another
    q = orthonormalize_jit(jnp.asarray(x))
    assert np.all(np.isfinite(q))
    np.testing.assert_array_equal(q[:, 1], 0.0)
    assert np.all(np.linalg.norm(q, axis=-1) <= 1.0 + 1e-6)
    kept = np.asarray(q)[:, [0, 2]]
    np.testing.assert_allclose(gram(kept), np.broadcast_to(np.eye(2), (2, 2, 2)), atol=1e-5)
    grads = jax.grad(lambda v: jnp.sum(jnp.sin(orthonormalize(v))))(jnp.asarray(x))
    assert np.all(np.isfinite(grads))


# ----------------------------------------------------------------------------- trained agents

TINY_SAC = SACConfig(hidden_sizes=(16, 16), batch_size=BATCH, num_experts=EXPERTS)
TINY_PPO = PPOConfig(actor_lr=3e-3, critic_lr=3e-3, policy_epochs=2, critic_epochs=1,
                     policy_batch_size=8, critic_batch_size=16, rollout_env_steps=16,
                     conv_channels=(4, 8, 8), head_hidden_dim=8, num_experts=EXPERTS)
# SAC: each architecture, under a fixed (static) and a pruning (gmp) method at sparsity 0.9;
# ReDo and Reset fire at every update of the gmp case, so they run on the experts too. PPO:
# moore (moe's code and the Gram-Schmidt) under gmp; its moe runs in the smoke test below.
# Compiling these agents dominates this file's run time, so there are few, and their keys use
# the "rbg" PRNG, whose initialisers compile several times faster than threefry's.
SAC_CASES = [("moe", "static"), ("moore", "gmp+redo+reset")]
PPO_CASES = [("moore", "gmp")]
UPDATES = 3


def key(seed: int) -> jax.Array:
    return jax.random.key(seed, impl="rbg")


def setup_of(method: str, total_updates: int) -> NetworkSetup:
    settings_ = NetworkMethodSettings(method, 0.9, "erk", total_updates=total_updates)
    return build_network(settings_, options_firing_every_update())


def sac_batch(key) -> tuple[Transition, jax.Array]:
    k = jax.random.split(key, 4)
    batch = Transition(obs=jax.random.normal(k[0], (BATCH, OBS_DIM)),
                       actions=jax.random.uniform(k[1], (BATCH, ACTION_DIM), minval=-1),
                       rewards=jax.random.uniform(k[2], (BATCH,), maxval=10),
                       next_obs=jax.random.normal(k[3], (BATCH, OBS_DIM)),
                       terminated=jnp.zeros(BATCH))
    return batch, jnp.repeat(jnp.arange(NUM_TASKS), BATCH // NUM_TASKS)


@functools.cache
def trained_sac(arch: str, method: str):
    """(sac, initial state, states after each of UPDATES updates, their metrics)."""
    setup = setup_of(method, total_updates=UPDATES)
    sac = make_sac(dataclasses.replace(TINY_SAC, arch=arch), NUM_TASKS, OBS_DIM, ACTION_DIM,
                   setup, setup)
    update = jax.jit(sac.update)
    states, metrics = [jax.jit(sac.init)(key(0))], []
    for i in range(UPDATES):
        state, info = update(states[-1], *sac_batch(jax.random.PRNGKey(i)), key(100 + i))
        states.append(state)
        metrics.append(info)
    return sac, states, metrics


def ppo_rollout(ppo: PPO, state, key) -> Rollout:
    """16 env steps (4 x 4 envs, tasks 0 and 1) collected by the agent on random images."""
    horizon, num_envs = 4, 4
    k_obs, k_act, k_rew, k_end = jax.random.split(key, 4)
    obs = jax.random.randint(k_obs, (horizon, num_envs, *OBS_SHAPE), 0, 11).astype(jnp.uint8)
    task_ids = jnp.broadcast_to(jnp.array([0, 1, 0, 1]), (horizon, num_envs))
    actions, log_probs, values = ppo.act(state, obs.reshape(-1, *OBS_SHAPE),
                                         task_ids.reshape(-1), k_act)
    shape = (horizon, num_envs)
    return Rollout(obs=obs, task_ids=task_ids, actions=actions.reshape(shape),
                   log_probs=log_probs.reshape(shape), values=values.reshape(shape),
                   rewards=jax.random.uniform(k_rew, shape),
                   terminated=jax.random.bernoulli(k_end, 0.2, shape),
                   truncated=jnp.zeros(shape, bool), truncation_values=jnp.zeros(shape),
                   last_values=jnp.zeros(num_envs))


@functools.cache
def trained_ppo(arch: str, method: str):
    """(ppo, initial state, states after each of UPDATES rollout updates, their metrics)."""
    # One rollout: 2 epochs x 2 actor minibatches, 1 critic minibatch.
    ppo = make_ppo(dataclasses.replace(TINY_PPO, arch=arch), 2, OBS_SHAPE, NUM_ACTIONS,
                   setup_of(method, UPDATES * 4), setup_of(method, UPDATES))

    @jax.jit
    def collect_and_update(state, key):
        k_rollout, k_update = jax.random.split(key)
        return ppo.update(state, ppo_rollout(ppo, state, k_rollout), k_update)

    states, metrics = [jax.jit(ppo.init)(key(0))], []
    for i in range(UPDATES):
        state, info = collect_and_update(states[-1], key(10 + i))
        states.append(state)
        metrics.append(info)
    return ppo, states, metrics


# ----------------------------------------------------------------------------- the mixture


def mixed_by_hand(experts: np.ndarray, encoder_kernel: np.ndarray, tasks: np.ndarray,
                  orthogonal: bool) -> np.ndarray:
    """(B, k, d) expert outputs, (T, k) task encoder kernel, (B,) tasks -> (B, d)
    tanh(sum_k W[t, k] * expert_k), the experts orthonormalised first for MOORE."""
    if orthogonal:
        experts = classic_gram_schmidt(experts)
    return np.tanh(np.einsum("bk,bkd->bd", encoder_kernel[tasks], experts))


@pytest.mark.parametrize(("arch", "method"), SAC_CASES)
def test_sac_representation_is_the_task_encoder_mix_of_the_experts(arch, method):
    """By hand from the trained (masked) weights: expert_j(x) = relu(x W0 + b0) W1 + b1 sees no
    task; sample of task t mixes them with row t of the task encoder's kernel (no bias)."""
    sac, states, _ = trained_sac(arch, method)
    weights = masked_params(states[-1].critic)
    batch, _ = sac_batch(jax.random.PRNGKey(99))
    tasks = np.array([0, 1, 2, 2, 1, 0, 0, 1, 2, 2, 1, 0])
    sown = jax.jit(sac.critic_activations)(weights, batch.obs, batch.actions, tasks)
    x = np.concatenate([batch.obs, batch.actions], axis=-1)
    for q in ("q1", "q2"):
        mlp = jax.tree.map(np.asarray, weights["params"][q])
        assert set(mlp[TASK_ENCODER]) == {"kernel"}
        assert mlp[TASK_ENCODER]["kernel"].shape == (NUM_TASKS, EXPERTS)
        experts = np.stack([
            np.maximum(x @ mlp[f"expert_{j}"]["hidden_0"]["kernel"]
                       + mlp[f"expert_{j}"]["hidden_0"]["bias"], 0.0)
            @ mlp[f"expert_{j}"]["hidden_1"]["kernel"] + mlp[f"expert_{j}"]["hidden_1"]["bias"]
            for j in range(EXPERTS)], axis=1)
        np.testing.assert_allclose(
            sown[q][REPRESENTATION_OUT],
            mixed_by_hand(experts, mlp[TASK_ENCODER]["kernel"], tasks, arch == "moore"),
            rtol=1e-4, atol=1e-5)
    # The probe's effective rank reads this representation.
    assert sac.representations["critic"] == (("q1", REPRESENTATION_OUT),
                                             ("q2", REPRESENTATION_OUT))


@pytest.mark.parametrize(("arch", "method"), PPO_CASES)
def test_ppo_representation_mixes_the_flattened_expert_cnns_per_task(arch, method):
    ppo, states, _ = trained_ppo(arch, method)
    weights = masked_params(states[-1].actor)
    image = np.random.default_rng(2).integers(0, 11, size=(6, *OBS_SHAPE)).astype(np.uint8)
    tasks = np.array([0, 1, 1, 0, 0, 1])
    sown = jax.jit(ppo.actor_activations)(weights, image, tasks)
    experts = np.stack([np.asarray(sown[f"expert_{j}"]["conv_2_out"]).reshape(6, -1)
                        for j in range(EXPERTS)], axis=1)
    encoder = np.asarray(weights["params"][TASK_ENCODER]["kernel"])
    np.testing.assert_allclose(sown[REPRESENTATION_OUT],
                               mixed_by_hand(experts, encoder, tasks, arch == "moore"),
                               rtol=1e-4, atol=1e-5)
    assert "trunk" not in weights["params"]


# ----------------------------------------------------------------------------- sparse methods


def masks_by_path(net) -> dict:
    return {path_str(p): m for p, m in jax.tree_util.tree_flatten_with_path(
        net.masks, is_leaf=lambda x: x is None)[0]}


def assert_encoder_unmasked_experts_sparse(net, expert_kernels: list[str]) -> None:
    masks = masks_by_path(net)
    encoder = [p for p in masks if TASK_ENCODER in p]
    assert encoder and all(masks[p] is None for p in encoder), encoder
    for kernel in expert_kernels:
        assert masks[kernel] is not None and not np.all(np.asarray(masks[kernel])), kernel


def task_encoder_kernels(net) -> list[np.ndarray]:
    return [np.asarray(leaf) for path, leaf in jax.tree_util.tree_flatten_with_path(net.params)[0]
            if TASK_ENCODER in path_str(path)]


def assert_sparse_training_keeps_the_invariant(states, metrics, networks, expert_kernels):
    for state, info in zip(states[1:], metrics, strict=True):
        for name in networks:
            assert_mask_invariant(getattr(state, name))
        assert all(np.all(np.isfinite(np.asarray(v))) for v in info.values())
    for name in networks:
        net = getattr(states[-1], name)
        assert_encoder_unmasked_experts_sparse(net, expert_kernels[name])
        assert float(metrics[-1][f"{name}_sparsity"]) == pytest.approx(0.9, abs=0.02)
        # The unmasked task encoder trains.
        before = task_encoder_kernels(getattr(states[0], name))
        assert any(np.any(a != b) for a, b in zip(before, task_encoder_kernels(net), strict=True))


@pytest.mark.parametrize(("arch", "method"), SAC_CASES)
def test_sac_task_encoder_is_never_masked_and_the_mask_invariant_holds(arch, method):
    sac, states, metrics = trained_sac(arch, method)
    expert_kernels = {
        "actor": [f"params/mlp/expert_{j}/hidden_1/kernel" for j in range(EXPERTS)],
        "critic": [f"params/{q}/expert_0/hidden_0/kernel" for q in ("q1", "q2")],
    }
    assert_sparse_training_keeps_the_invariant(states, metrics, ("actor", "critic"),
                                               expert_kernels)
    for name in ("actor", "critic"):
        layers = sac.neuron_layers[name]
        check_neuron_layers(getattr(states[-1], name).params, layers)
        assert all(TASK_ENCODER not in layer.incoming + layer.outgoing for layer in layers)
    # Expert layers but the last, per critic; the probe still finds each critic's layers.
    assert [layer.incoming[1:] for layer in sac.neuron_layers["critic"]] == [
        (q, f"expert_{j}", "hidden_0") for q in ("q1", "q2") for j in range(EXPERTS)]


@pytest.mark.parametrize(("arch", "method"), PPO_CASES)
def test_ppo_task_encoder_is_never_masked_and_the_mask_invariant_holds(arch, method):
    ppo, states, metrics = trained_ppo(arch, method)
    kernels = [f"params/expert_{j}/conv_2/kernel" for j in range(EXPERTS)]
    assert_sparse_training_keeps_the_invariant(states, metrics, ("actor", "critic"),
                                               {"actor": kernels, "critic": kernels})
    layers = ppo.neuron_layers["actor"]
    assert all(TASK_ENCODER not in layer.incoming + layer.outgoing for layer in layers)
    # Every expert convolution but the last, then the head units.
    assert [layer.incoming[1:] for layer in layers] == [
        *((f"expert_{j}", f"conv_{i}") for j in range(EXPERTS) for i in range(2)),
        ("task_heads", "head_hidden")]


# ----------------------------------------------------------------------------- CLI


@pytest.mark.parametrize(("preset", "agent"), [("mt10-smoke", "sac"), ("minigrid-smoke", "ppo")])
def test_arch_and_num_experts_flags_are_shared_by_both_agents(preset, agent):
    config, _, _ = parse_train_args(["--preset", preset, "--arch", "moore", "--num-experts", "2"])
    agent_config = getattr(config, agent)
    assert (agent_config.arch, agent_config.num_experts) == ("moore", 2)
    defaults = getattr(get_preset(preset).config, agent)
    assert defaults.arch == "mh"
    assert defaults.num_experts == {"sac": 4, "ppo": 3}[agent]


# ----------------------------------------------------------------------------- runs


def finite_rows(run_dir) -> list[dict]:
    rows = read_metrics(run_dir)
    for row in rows:
        for key, value in row.items():
            if isinstance(value, float):
                assert np.isfinite(value), (key, row["step"])
    return rows


@pytest.mark.slow
@pytest.mark.parametrize("arch", ["moe", "moore"])
def test_sac_run_with_a_mixture_of_experts(arch, tmp_path):
    # 400 env steps: 20 updates after the 200-step warm-up and one evaluation; the plasticity
    # probe (srank of the mixed representation) every 10 updates of the moore run only, to save
    # its compilation (moe reads the same representation_out). Dense networks: the sparse
    # methods on these architectures are tested above.
    smoke = get_preset("mt10-smoke").config
    config = dataclasses.replace(
        smoke, run_dir=str(tmp_path / arch), total_env_steps=400, eval_every_env_steps=400,
        checkpoint_every_env_steps=400,
        sac=dataclasses.replace(smoke.sac, arch=arch, num_experts=2),
        plasticity=dataclasses.replace(smoke.plasticity,
                                       every_updates=10 if arch == "moore" else 0))
    result = train(config)
    rows = finite_rows(result.run_dir)
    learning = [r for r in rows if r.get("updates", 0) > 0 and "critic_loss" in r]
    assert learning and learning[-1]["updates"] == 20
    assert [r["step"] for r in rows if "eval/success_rate" in r] == [400]
    probes = [r for r in rows if "plasticity/critic_q2/srank" in r]
    if arch == "moore":
        assert len(probes) == 2
        for row in probes:
            assert 1 <= row["plasticity/actor/srank"] <= smoke.sac.hidden_sizes[-1]
            assert 0.0 <= row["plasticity/critic_q1/dormant_fraction"] <= 1.0


@pytest.mark.slow
@pytest.mark.parametrize("arch", ["moe", "moore"])
def test_ppo_run_with_a_mixture_of_experts(arch, tmp_path):
    # 2 rollouts of 200 env steps (8 actor and 2 critic updates each), one evaluation.
    smoke = get_preset("minigrid-smoke").config
    config = dataclasses.replace(
        smoke, run_dir=str(tmp_path / arch), total_env_steps=400, eval_every_env_steps=400,
        ppo=dataclasses.replace(smoke.ppo, arch=arch, num_experts=2))
    result = train(config)
    rows = finite_rows(result.run_dir)
    assert [r["updates"] for r in rows if "policy_loss" in r] == [8, 16]
    evals = [r for r in rows if "eval/normalized_return" in r]
    assert [r["step"] for r in evals] == [400]
    assert 0.0 <= evals[0]["eval/normalized_return"] <= 1.0 + 1e-6
