"""Multi-task multi-head Soft Actor-Critic with explicit masks in its train state.

The multi-task SAC of Yu et al. 2020 (Meta-World) in the multi-head form used by Todorov et al.
2025 ("Sparsity-Driven Plasticity in Multi-Task Reinforcement Learning", Table 3): a shared ReLU
trunk on [observation, one-hot task] with one head per task, twin critics, one learned temperature
per task, target-Q clipping and gradient-norm clipping. Haarnoja et al. 2018 for SAC itself.
``SACConfig.arch`` swaps the shared trunk for a mixture of experts (``moe``) or of orthogonal
experts (``moore``, Hendawy et al. 2024) in actor and critics alike (``agents/networks.py``).

Everything here is pure: ``init``, ``act`` and ``update`` are jit-compiled once by the caller.
The agent never names a sparsity method: it is handed one ``MaskMethod`` per network and calls its
``transform`` after each gradient step of that network.

Shapes: ``B`` batch, ``T`` tasks, ``D`` observation size, ``A`` action size.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax
from flax import struct

from mtrl_sparse.agents.net_state import (
    MethodContext,
    NetState,
    apply_gradients,
    averaged_copy_index,
    forward_weights,
    masked_params,
    network_sparsity,
)
from mtrl_sparse.agents.networks import (
    Architecture,
    GaussianActor,
    NeuronLayer,
    TwinCritic,
    check_experts,
    check_neuron_layers,
    multi_task_mlp_layers,
    sown_activations,
)
from mtrl_sparse.agents.optim import (
    NetworkSetup,
    acting_weights,
    apply_task_views,
    init_network_state,
    make_optimizer,
    masked_gradient_step,
)
from mtrl_sparse.agents.replay_buffer import Transition
from mtrl_sparse.agents.sparse_linear import with_index


@dataclass(frozen=True)
class SACConfig:
    """Hyperparameters of multi-task SAC (defaults: Table 3 of the reference paper)."""

    hidden_sizes: tuple[int, ...] = (400, 400, 400)
    """Widths of the hidden ReLU layers of actor and critics."""
    batch_size: int = 1280
    """Transitions per gradient step, summed over tasks (an equal share per task)."""
    gamma: float = 0.99
    """Discount factor."""
    tau: float = 0.005
    """Target critic smoothing: target <- tau * critic + (1 - tau) * target, every update."""
    actor_lr: float = 3e-4
    """Adam learning rate of the actor."""
    critic_lr: float = 3e-4
    """Adam learning rate of the critics."""
    alpha_lr: float = 3e-4
    """Adam learning rate of the per-task log temperatures (no gradient clipping)."""
    initial_alpha: float = 1.0
    """Initial temperature of every task."""
    max_grad_norm: float = 1.0
    """Global gradient-norm clip of actor and of critics (each network separately)."""
    target_q_clip: float = 5000.0
    """Bellman targets are clipped to [-target_q_clip, target_q_clip]."""
    log_std_min: float = -20.0
    """Lower bound of the policy's log standard deviation."""
    log_std_max: float = 2.0
    """Upper bound of the policy's log standard deviation."""
    target_entropy_scale: float = 1.0
    """Target entropy per task is -target_entropy_scale * action_dim."""
    arch: Architecture = "mh"
    """Architecture of actor and critics: mh (shared trunk on [input, one-hot task], a head per
    task), moe (num-experts task-agnostic MLPs of hidden-sizes, mixed per task by a linear task
    encoder, tanh), moore (moe with the experts orthonormalised per sample, Hendawy et al. 2024)."""
    num_experts: int = 4
    """Experts k of moe / moore (count, >= 1; at most the last hidden size for moore); unused by
    mh."""


class SACState(struct.PyTreeNode):
    """Train state of multi-task SAC.

    Attributes:
        actor: policy network state (params, masks, Adam state).
        critic: twin critic state; its params hold ``q1`` and ``q2``.
        target_critic_params: Polyak average of the masked critic params.
        log_alpha: per-task log temperature, (T,), with its own Adam state (never masked).
        step: number of updates done, () int32 (the ``updates`` unit of method schedules).
        phase: the phase of the run's schedule, () int32 (0 for multi-task; the task being
            trained under a sequential schedule), which reaches the methods as
            ``MethodContext.phase``.
        target_critic_index: under sparse compute, the sparse index the target critics compute
            with (``averaged_copy_index``: it covers the target's support, which outlives a
            critic weight's pruning until Polyak averaging has decayed it to zero); None for
            dense compute.
    """

    actor: NetState
    critic: NetState
    target_critic_params: dict
    log_alpha: NetState
    step: jax.Array
    phase: jax.Array
    target_critic_index: Any = None


class SAC(NamedTuple):
    """The agent's pure functions (see ``make_sac``), and views of its networks for probes.

    ``actor_distribution(weights, obs, task_ids) -> (mean, log_std)``;
    ``actor_activations(weights, obs, task_ids)`` and
    ``critic_activations(weights, obs, actions, task_ids)`` return the hidden activations, keyed
    like the ``activation`` paths of ``neuron_layers[network]`` (``weights`` are effective
    weights, i.e. ``masked_params`` of the network). ``representations[network]`` are the
    activation paths of the representation (B, d) each head reads, one per multi-task MLP of
    the network (actor: ``mlp``; critic: ``q1``, ``q2``): the last hidden layer for ``mh``, the
    mixed experts for ``moe`` / ``moore``.
    """

    init: Callable
    act: Callable
    update: Callable
    config: SACConfig
    actor_distribution: Callable
    actor_activations: Callable
    critic_activations: Callable
    neuron_layers: dict[str, tuple[NeuronLayer, ...]]
    representations: dict[str, tuple[tuple[str, ...], ...]]


def gaussian_tanh_sample(
    mean: jax.Array, log_std: jax.Array, key: jax.Array
) -> tuple[jax.Array, jax.Array]:
    """Reparameterised sample of tanh(N(mean, std)) and its log-probability.

    (B, A), (B, A) -> actions (B, A) in (-1, 1), log-prob (B,). Uses the stable identity
    log(1 - tanh(u)^2) = 2 * (log 2 - u - softplus(-2u)).
    """
    std = jnp.exp(log_std)
    u = mean + std * jax.random.normal(key, mean.shape)
    gauss_logp = -0.5 * ((u - mean) / std) ** 2 - log_std - 0.5 * jnp.log(2.0 * jnp.pi)
    squash = 2.0 * (jnp.log(2.0) - u - jax.nn.softplus(-2.0 * u))
    return jnp.tanh(u), jnp.sum(gauss_logp - squash, axis=-1)


def bellman_target(
    rewards: jax.Array, terminated: jax.Array, soft_next_value: jax.Array, gamma: float,
    clip: float,
) -> jax.Array:
    """r + gamma * (1 - terminated) * V(s'), clipped to [-clip, clip]; all (B,).

    Only termination stops the bootstrap: a transition cut by the time limit (truncation) keeps
    ``terminated = 0`` and bootstraps from its true next observation.
    """
    target = rewards + gamma * (1.0 - terminated) * soft_next_value
    return jnp.clip(target, -clip, clip)


def check_architecture(config: SACConfig) -> None:
    """ValueError (one line) unless ``config``'s architecture can be built.

    ``moe`` / ``moore`` need two or more hidden sizes (an expert's last layer is its linear
    output, so one layer would leave the experts without hidden neurons) and ``num_experts``
    >= 1; ``moore`` needs ``num_experts`` <= the representation size ``hidden_sizes[-1]`` (no
    more orthonormal vectors than dimensions).
    """
    check_experts(config.arch, config.num_experts, config.hidden_sizes[-1] if config.hidden_sizes
                  else 0, "the last hidden size")
    if config.arch != "mh" and len(config.hidden_sizes) < 2:
        raise ValueError(f"arch {config.arch} needs two or more hidden sizes (each expert's "
                         f"last layer is its linear output); got {config.hidden_sizes}")


def make_sac(
    config: SACConfig,
    num_tasks: int,
    obs_dim: int,
    action_dim: int,
    actor: NetworkSetup,
    critic: NetworkSetup,
) -> SAC:
    """Build the pure ``init``, ``act`` and ``update`` of multi-task SAC.

    After each network's gradient step, its method's ``transform`` receives a ``MethodContext``:
    ``grads`` (gradients w.r.t. the params, zero where masked), ``dense_grads`` (gradients w.r.t.
    the effective weights ``params * masks``, defined everywhere: what RigL grows by),
    ``optimizer`` (the network's optax transform), ``init_params(key)`` (a freshly initialised
    variable tree ``{"params": ...}`` of the network), ``activations(weights)`` (hidden activations
    of the network on this update's batch given its effective weights ``params * masks``, keyed
    like ``neuron_layers``' ``activation`` paths), ``neuron_layers`` and ``batch`` (the update's
    ``(transition, task_ids)``).
    """
    check_architecture(config)
    actor_net = GaussianActor(config.hidden_sizes, num_tasks, action_dim,
                              (config.log_std_min, config.log_std_max), actor.layer_norm,
                              config.arch, config.num_experts)
    critic_net = TwinCritic(config.hidden_sizes, num_tasks, critic.layer_norm, config.arch,
                            config.num_experts)
    actor_tx = make_optimizer(config.actor_lr, config.max_grad_norm, actor)
    critic_tx = make_optimizer(config.critic_lr, config.max_grad_norm, critic)
    alpha_tx = optax.adam(config.alpha_lr)
    target_entropy = -config.target_entropy_scale * action_dim
    layers = {prefix: multi_task_mlp_layers(config.arch, (prefix,), len(config.hidden_sizes),
                                            config.num_experts)
              for prefix in ("mlp", "q1", "q2")}
    actor_layers = layers["mlp"][0]
    critic_layers = layers["q1"][0] + layers["q2"][0]

    dummy_obs = jnp.zeros((1, obs_dim), jnp.float32)
    dummy_act = jnp.zeros((1, action_dim), jnp.float32)
    dummy_task = jnp.zeros((1,), jnp.int32)

    def init_actor_params(key):
        return actor_net.init(key, dummy_obs, dummy_task)

    def init_critic_params(key):
        return critic_net.init(key, dummy_obs, dummy_act, dummy_task)

    check_neuron_layers(jax.eval_shape(init_actor_params, jax.random.PRNGKey(0)), actor_layers)
    check_neuron_layers(jax.eval_shape(init_critic_params, jax.random.PRNGKey(0)), critic_layers)

    def init(key: jax.Array) -> SACState:
        k_actor, k_critic, k_actor_mask, k_critic_mask = jax.random.split(key, 4)
        actor_state = init_network_state(init_actor_params(k_actor), actor_tx, actor,
                                         k_actor_mask)
        critic_state = init_network_state(init_critic_params(k_critic), critic_tx, critic,
                                          k_critic_mask)
        log_alpha = jnp.full((num_tasks,), jnp.log(config.initial_alpha), jnp.float32)
        return SACState(
            actor=actor_state,
            critic=critic_state,
            target_critic_params=masked_params(critic_state),
            log_alpha=NetState(params=log_alpha, masks=None, opt_state=alpha_tx.init(log_alpha)),
            step=jnp.zeros((), jnp.int32),
            phase=jnp.zeros((), jnp.int32),
            target_critic_index=critic_state.sparse_index,  # the target starts as the critic
        )

    def act(
        state: SACState, obs: jax.Array, task_ids: jax.Array, key: jax.Array,
        deterministic: bool = False,
    ) -> jax.Array:
        """(B, D) obs, (B,) task ids -> (B, A) actions in [-1, 1]; deterministic = tanh(mean).
        An actor with per-task views acts with each sample's own task's view."""
        mean, log_std = apply_task_views(
            actor_net.apply, actor, acting_weights(state.actor, actor, num_tasks), task_ids, obs)
        if deterministic:
            return jnp.tanh(mean)
        return gaussian_tanh_sample(mean, log_std, key)[0]

    def critic_loss_fn(critic_weights, state, batch, task_ids, key):
        """Loss of the twin critics as a function of their effective weights (params * masks)."""
        alpha = jnp.exp(state.log_alpha.params)[task_ids]  # (B,)
        mean, log_std = actor_net.apply(forward_weights(state.actor), batch.next_obs, task_ids)
        next_actions, next_logp = gaussian_tanh_sample(mean, log_std, key)
        next_q = critic_net.apply(with_index(state.target_critic_params,
                                             state.target_critic_index),
                                  batch.next_obs, next_actions,
                                  task_ids).min(axis=0)
        target = jax.lax.stop_gradient(bellman_target(
            batch.rewards, batch.terminated, next_q - alpha * next_logp, config.gamma,
            config.target_q_clip,
        ))
        q = critic_net.apply(critic_weights, batch.obs, batch.actions, task_ids)  # (2, B)
        loss = 0.5 * jnp.sum(jnp.mean((q - target) ** 2, axis=1))
        return loss, {"critic_loss": loss, "q_mean": jnp.mean(q), "target_mean": jnp.mean(target)}

    def actor_loss_fn(actor_weights, state, batch, task_ids, key):
        """Loss of the policy as a function of its effective weights (params * masks)."""
        alpha = jnp.exp(state.log_alpha.params)[task_ids]
        mean, log_std = actor_net.apply(actor_weights, batch.obs, task_ids)
        actions, logp = gaussian_tanh_sample(mean, log_std, key)
        q = critic_net.apply(forward_weights(state.critic), batch.obs, actions,
                             task_ids).min(axis=0)
        loss = jnp.mean(jax.lax.stop_gradient(alpha) * logp - q)
        return loss, (logp, {"actor_loss": loss, "entropy": -jnp.mean(logp)})

    def alpha_loss_fn(log_alpha, logp, task_ids):
        # Per-task temperature loss, averaged over the batch (each task holds an equal share).
        return -jnp.mean(log_alpha[task_ids] * jax.lax.stop_gradient(logp + target_entropy))

    actor_activations = sown_activations(actor_net)
    critic_activations = sown_activations(critic_net)

    def update(state: SACState, batch: Transition, task_ids: jax.Array, key: jax.Array):
        """One gradient step of critics, actor and temperatures, then the target update.

        Each network's method transforms it right after its gradient step, with that network's
        update count (``state.step + 1``).
        """
        k_critic, k_actor, k_critic_method, k_actor_method = jax.random.split(key, 4)
        step = state.step + 1
        critic_masks_before = state.critic.masks

        critic_context = MethodContext(
            init_params=init_critic_params,
            activations=lambda w: critic_activations(w, batch.obs, batch.actions, task_ids),
            neuron_layers=tuple(critic_layers),
            batch=(batch, task_ids),
            phase=state.phase,
        )
        critic_state, critic_info, critic_grad_norm = masked_gradient_step(
            state.critic, critic_loss_fn, critic_tx, critic.method, step, k_critic_method,
            critic_context, state, batch, task_ids, k_critic)
        state = state.replace(critic=critic_state)

        actor_context = MethodContext(
            init_params=init_actor_params,
            activations=lambda w: actor_activations(w, batch.obs, task_ids),
            neuron_layers=tuple(actor_layers),
            batch=(batch, task_ids),
            phase=state.phase,
        )
        actor_state, (logp, actor_info), actor_grad_norm = masked_gradient_step(
            state.actor, actor_loss_fn, actor_tx, actor.method, step, k_actor_method,
            actor_context, state, batch, task_ids, k_actor)

        alpha_loss, alpha_grads = jax.value_and_grad(alpha_loss_fn)(
            state.log_alpha.params, logp, task_ids
        )
        log_alpha = apply_gradients(state.log_alpha, alpha_grads, alpha_tx)

        target = optax.incremental_update(
            masked_params(critic_state), state.target_critic_params, config.tau
        )
        target_index = averaged_copy_index(state.target_critic_index, critic_masks_before,
                                           critic_state.masks, target)
        state = state.replace(actor=actor_state, log_alpha=log_alpha,
                              target_critic_params=target, target_critic_index=target_index,
                              step=step)
        metrics = {
            **critic_info,
            **actor_info,
            "alpha_loss": alpha_loss,
            "alpha": jnp.exp(log_alpha.params),  # (T,)
            "actor_grad_norm": actor_grad_norm,
            "critic_grad_norm": critic_grad_norm,
            "actor_sparsity": network_sparsity(actor_state.masks),
            "critic_sparsity": network_sparsity(critic_state.masks),
        }
        return state, metrics

    return SAC(
        init=init, act=act, update=update, config=config,
        actor_distribution=actor_net.apply,
        actor_activations=actor_activations,
        critic_activations=critic_activations,
        neuron_layers={"actor": actor_layers, "critic": critic_layers},
        representations={"actor": (layers["mlp"][1],),
                         "critic": (layers["q1"][1], layers["q2"][1])},
    )
