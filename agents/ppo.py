"""Multi-task PPO for MiniGrid with explicit masks in its train state.

Proximal Policy Optimization (Schulman et al. 2017, arXiv 1707.06347) with generalised advantage
estimation (GAE, Schulman et al. 2016, arXiv 1506.02438), in the multi-task form of Todorov et
al. 2025 ("Sparsity-Driven Plasticity in Multi-Task Reinforcement Learning", Table 2): a CNN trunk
on the 7x7x3 image and two-layer heads per task (``mtrl_sparse.agents.cnn``). Actor and critic
have separate trunks, separate optimizers and their own epochs and minibatch sizes.
``PPOConfig.arch`` swaps each trunk for a mixture of CNN experts (``moe``) or of orthogonal
experts (``moore``, Hendawy et al. 2024).

One ``update`` consumes one rollout, all inside one jit:
1. GAE over the rollout (a reverse ``lax.scan`` over time), advantages and returns;
2. the T x E samples are flattened; each network runs its epochs of shuffled minibatches as one
   ``lax.scan`` over (epoch, minibatch) index rows. Per epoch a fresh permutation is cut into
   ``N // batch_size`` minibatches and the remaining ``N % batch_size`` samples are left out of
   that epoch (a different remainder each epoch);
3. the critic regresses the returns (MSE), the actor maximises the clipped surrogate plus an
   entropy bonus, with advantages normalised per minibatch (as common PPO implementations do).

Each minibatch gradient step is ``masked_gradient_step``: gradient w.r.t. the effective weights
``params * masks``, optimizer step, re-masking, then the network's method ``transform`` with that
network's update count (``actor_step`` / ``critic_step``, one per minibatch step: the ``updates``
unit of method schedules). With Table 2's values and 2,000-sample rollouts, one ``update`` is 56
actor updates (8 epochs x 7 minibatches of 256) and 1 critic update (1 epoch x 1 minibatch).

Shapes: ``T`` rollout steps, ``E`` envs, ``N = T * E`` samples, ``B`` minibatch, ``A`` actions.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal, NamedTuple

import jax
import jax.numpy as jnp
import optax
from flax import struct

from mtrl_sparse.agents.cnn import CNNTaskNetwork, cnn_feature_size, cnn_neuron_layers
from mtrl_sparse.agents.net_state import (
    MaskMethod,
    MethodContext,
    NetState,
    forward_weights,
    network_sparsity,
)
from mtrl_sparse.agents.networks import (
    Architecture,
    NeuronLayer,
    check_experts,
    check_neuron_layers,
    sown_activations,
)
from mtrl_sparse.agents.optim import (
    NetworkSetup,
    apply_task_views,
    init_network_state,
    make_optimizer,
    masked_gradient_step,
)
from mtrl_sparse.agents.optim import acting_weights as optim_acting_weights

# ----------------------------------------------------------------------------- configuration


@dataclass(frozen=True)
class PPOConfig:
    """Hyperparameters of multi-task PPO (defaults: Table 2 of the reference paper)."""

    actor_lr: float = 1e-3
    """Adam learning rate of the actor (step size per actor update)."""
    critic_lr: float = 1e-3
    """Adam learning rate of the critic (step size per critic update)."""
    gamma: float = 0.99
    """Discount factor per env step."""
    gae_lambda: float = 0.95
    """GAE trace decay per env step (Schulman et al. 2016)."""
    entropy_coef: float = 0.01
    """Weight of the policy entropy (nats, mean over the minibatch) in the actor loss."""
    clip_eps: float = 0.2
    """The probability ratio is clipped to [1 - clip_eps, 1 + clip_eps] (dimensionless)."""
    policy_epochs: int = 8
    """Passes of the actor over each rollout (epochs per update call)."""
    critic_epochs: int = 1
    """Passes of the critic over each rollout (epochs per update call)."""
    policy_batch_size: int = 256
    """Samples (transitions) per actor minibatch; one actor update each."""
    critic_batch_size: int = 2000
    """Samples (transitions) per critic minibatch; one critic update each."""
    rollout_env_steps: int = 2000
    """Env steps per rollout, summed over envs (T x E samples per update call)."""
    keep_partial_minibatch: bool = False
    """Keep the last, partial minibatch of each epoch (the paper's lineage, MOORE's PPO: 2,000
    samples in minibatches of 256 give 7 full ones and one of 208); False: leave its samples out
    of that epoch (each epoch's permutation differs, so every sample is used across epochs)."""
    max_grad_norm: float | None = 0.5
    """Global gradient-norm clip of each network; None: no clipping (the paper's lineage, MOORE's
    MiniGrid PPO). Not stated in the paper; 0.5 is the usual PPO value (the PPO2 baselines and
    most PPO implementations)."""
    normalize_advantages: bool = True
    """Standardise the advantages (mean 0, std 1) over ``advantage_normalization``'s groups."""
    advantage_normalization: Literal["minibatch", "task"] = "minibatch"
    """minibatch: standardise each actor minibatch (common PPO implementations); task: each
    task's advantages over the whole rollout, before the minibatches are cut (the lineage)."""
    cnn_pooling: bool = True
    """2x2 max-pool after the first convolution (7x7 image -> 64-d embedding)."""
    conv_channels: tuple[int, ...] = (16, 32, 64)
    """Channels of the three 2x2 convolutions (activations ReLU, ReLU, Tanh)."""
    head_hidden_dim: int = 128
    """Hidden units of each task's head, actor and critic alike (activation Tanh)."""
    arch: Architecture = "mh"
    """Architecture of actor and critic: mh (one CNN trunk, a head per task), moe (num-experts
    task-agnostic CNNs, flattened and mixed per task by a linear task encoder, tanh), moore (moe
    with the experts orthonormalised per sample, Hendawy et al. 2024)."""
    num_experts: int = 3
    """Experts k of moe / moore (count, >= 1; at most the flattened CNN feature size for moore);
    unused by mh."""


def check_architecture(config: PPOConfig, obs_shape: tuple[int, ...]) -> None:
    """ValueError (one line) unless ``config``'s architecture can be built on ``obs_shape``:
    a known ``arch``, ``num_experts`` >= 1 and, for ``moore``, ``num_experts`` <= the flattened
    CNN feature size d (no more orthonormal vectors than dimensions)."""
    check_experts(config.arch, config.num_experts,
                  cnn_feature_size(obs_shape, config.conv_channels, config.cnn_pooling),
                  "the flattened CNN features")


def minibatches_per_epoch(num_samples: int, batch_size: int, keep_partial: bool = False) -> int:
    """Minibatches in one epoch over ``num_samples``: the full ones, and with ``keep_partial``
    the last, partial one too (else its samples are left out)."""
    if batch_size <= 0 or num_samples < batch_size:
        raise ValueError(f"a minibatch of {batch_size} samples does not fit in a rollout of "
                         f"{num_samples} samples")
    return -(-num_samples // batch_size) if keep_partial else num_samples // batch_size


def updates_per_rollout(config: PPOConfig) -> dict[str, int]:
    """Gradient steps of each network (its ``updates``) per ``update`` call; a run's
    ``total_updates`` of a network is this times the number of rollouts."""
    n, keep = config.rollout_env_steps, config.keep_partial_minibatch
    return {
        "actor": config.policy_epochs * minibatches_per_epoch(n, config.policy_batch_size, keep),
        "critic": config.critic_epochs * minibatches_per_epoch(n, config.critic_batch_size,
                                                               keep),
    }


# ----------------------------------------------------------------------------- state and rollout


class PPOState(struct.PyTreeNode):
    """Train state of multi-task PPO.

    Attributes:
        actor: policy network state (params, masks, Adam state, method state).
        critic: value network state.
        actor_step: actor updates done (one per actor minibatch gradient step), () int32.
        critic_step: critic updates done (one per critic minibatch gradient step), () int32.
        phase: the phase of the run's schedule, () int32 (0 for multi-task; the task being
            trained in a sequential schedule, set by the run at task boundaries); methods read
            it as ``MethodContext.phase``.
    """

    actor: NetState
    critic: NetState
    actor_step: jax.Array
    critic_step: jax.Array
    phase: jax.Array


class Rollout(struct.PyTreeNode):
    """T consecutive vector steps of E envs, collected with the policy being updated.

    Row ``t`` of every (T, E) field is one transition: on observation ``obs[t]`` the policy took
    ``actions[t]`` and received ``rewards[t]``. With the explicit-reset convention of the env
    interface, an env whose episode ended at row ``t`` is reset before row ``t + 1``, so
    ``obs[t + 1]`` is then the first observation of its next episode.

    Attributes:
        obs: (T, E, H, W, C) image the action was chosen on (raw integer values, any dtype).
        task_ids: (T, E) int32 task of each env.
        actions: (T, E) int32.
        log_probs: (T, E) float32, log pi(actions | obs) when collected.
        values: (T, E) float32, V(obs) when collected.
        rewards: (T, E) float32.
        terminated: (T, E) bool, the transition ended its episode in a terminal state (no
            bootstrap).
        truncated: (T, E) bool, the time limit ended the episode at this transition (bootstrap
            from its true final observation). Where both flags hold, termination wins.
        truncation_values: (T, E) float32, V(final observation) where ``truncated`` (the true next
            observation ``step`` returned, before the reset); 0 elsewhere (read only where
            truncated).
        last_values: (E,) float32, V(observation after the last row): the bootstrap at the end of
            the rollout of an episode still running (read only where row T - 1 did not end it).
    """

    obs: jax.Array
    task_ids: jax.Array
    actions: jax.Array
    log_probs: jax.Array
    values: jax.Array
    rewards: jax.Array
    terminated: jax.Array
    truncated: jax.Array
    truncation_values: jax.Array
    last_values: jax.Array


# ----------------------------------------------------------------------------- GAE


def gae(
    rewards: jax.Array, values: jax.Array, terminated: jax.Array, truncated: jax.Array,
    truncation_values: jax.Array, last_values: jax.Array, gamma: float, lam: float,
) -> tuple[jax.Array, jax.Array]:
    """Generalised advantage estimates and returns (Schulman et al. 2016), each (T, E).

    ``delta_t = r_t + gamma * (1 - terminated_t) * V_next_t - V(s_t)`` with ``V_next_t`` the
    truncation value where truncated, else ``V(s_{t+1})`` (``last_values`` after the last row);
    ``A_t = delta_t + gamma * lam * (1 - done_t) * A_{t+1}`` with ``done = terminated or
    truncated``: the trace never crosses an episode boundary. Returns are ``A_t + V(s_t)``.
    Inputs: (T, E) rows as in ``Rollout``, ``last_values`` (E,).
    """
    terminated = terminated.astype(jnp.float32)
    truncated = truncated.astype(jnp.float32)
    next_values = jnp.concatenate([values[1:], last_values[None]], axis=0)
    next_values = jnp.where(truncated > 0, truncation_values, next_values)
    deltas = rewards + gamma * (1.0 - terminated) * next_values - values
    continues = (1.0 - terminated) * (1.0 - truncated)

    def backward(next_advantage, step):
        delta, cont = step
        advantage = delta + gamma * lam * cont * next_advantage
        return advantage, advantage

    _, advantages = jax.lax.scan(backward, jnp.zeros_like(last_values), (deltas, continues),
                                 reverse=True)
    return advantages, advantages + values


# ----------------------------------------------------------------------------- losses


def categorical_log_prob(logits: jax.Array, actions: jax.Array) -> jax.Array:
    """(B, A) logits, (B,) int actions -> (B,) log pi(action)."""
    log_pi = jax.nn.log_softmax(logits)
    return jnp.take_along_axis(log_pi, actions[:, None].astype(jnp.int32), axis=1)[:, 0]


def categorical_entropy(logits: jax.Array) -> jax.Array:
    """(B, A) logits -> (B,) entropy in nats."""
    log_pi = jax.nn.log_softmax(logits)
    return -jnp.sum(jnp.exp(log_pi) * log_pi, axis=-1)


def weighted_mean(x: jax.Array, weight: jax.Array | None) -> jax.Array:
    """Mean of (B,) ``x``; with (B,) 0/1 ``weight``, the mean over the samples of weight 1 (a
    padded partial minibatch)."""
    return jnp.mean(x) if weight is None else jnp.sum(weight * x) / jnp.sum(weight)


def standardize(x: jax.Array, eps: float = 1e-8, weight: jax.Array | None = None) -> jax.Array:
    """(B,) -> (B,) with mean 0 and standard deviation 1 (``eps`` guards a constant batch); with
    ``weight``, the mean and std are those of the samples of weight 1."""
    if weight is None:
        return (x - jnp.mean(x)) / (jnp.std(x) + eps)
    mean = weighted_mean(x, weight)
    return (x - mean) / (jnp.sqrt(weighted_mean(jnp.square(x - mean), weight)) + eps)


def standardize_per_task(x: jax.Array, task_ids: jax.Array, num_tasks: int,
                         eps: float = 1e-8) -> jax.Array:
    """(N,) values, (N,) task ids -> (N,): each task's values standardised among themselves
    (mean 0, std 1; a task absent from the batch changes nothing)."""
    one_hot = jax.nn.one_hot(task_ids, num_tasks, dtype=x.dtype)  # (N, T)
    counts = jnp.maximum(one_hot.sum(0), 1.0)

    def task_means(values):  # (N,) -> (T,)
        return (one_hot * values[:, None]).sum(0) / counts

    # Corrected two-pass: the first mean's rounding error, divided by a small std, would leave
    # the result off-centre; the residuals x - mean are exact for values near their mean
    # (Sterbenz), so their mean removes it.
    residuals = x - task_means(x)[task_ids]
    centred = residuals - task_means(residuals)[task_ids]
    var = task_means(jnp.square(centred))
    return centred / (jnp.sqrt(var)[task_ids] + eps)


def clipped_surrogate(
    log_probs: jax.Array, old_log_probs: jax.Array, advantages: jax.Array, clip_eps: float
) -> jax.Array:
    """PPO's clipped objective per sample, (B,) each -> (B,) (to be maximised).

    ``min(r A, clip(r, 1 - eps, 1 + eps) A)`` with ``r = pi / pi_old`` (Schulman et al. 2017).
    """
    ratio = jnp.exp(log_probs - old_log_probs)
    clipped = jnp.clip(ratio, 1.0 - clip_eps, 1.0 + clip_eps)
    return jnp.minimum(ratio * advantages, clipped * advantages)


def policy_loss(
    logits: jax.Array, actions: jax.Array, old_log_probs: jax.Array, advantages: jax.Array,
    clip_eps: float, entropy_coef: float, normalize: bool, weight: jax.Array | None = None,
) -> tuple[jax.Array, dict]:
    """Actor loss on one minibatch: ``-mean(clipped surrogate) - entropy_coef * mean(entropy)``.

    (B, A) logits; (B,) actions, old log-probs and advantages (standardised here if
    ``normalize``); (B,) 0/1 ``weight`` for a padded partial minibatch (means, the
    standardisation and the diagnostics over the samples of weight 1 only). Also returns the
    surrogate's ``policy_loss``, ``entropy``, ``approx_kl`` (the estimator ``E[(r - 1) - log r]``
    of KL(pi_old || pi), non-negative per sample) and ``clip_fraction`` (share of samples with
    ``|r - 1| > clip_eps``).
    """
    if normalize:
        advantages = standardize(advantages, weight=weight)
    log_probs = categorical_log_prob(logits, actions)
    entropy = weighted_mean(categorical_entropy(logits), weight)
    surrogate = weighted_mean(clipped_surrogate(log_probs, old_log_probs, advantages, clip_eps),
                              weight)
    log_ratio = log_probs - old_log_probs
    ratio = jnp.exp(log_ratio)
    info = {
        "policy_loss": -surrogate,
        "entropy": entropy,
        "approx_kl": jax.lax.stop_gradient(weighted_mean((ratio - 1.0) - log_ratio, weight)),
        "clip_fraction": jax.lax.stop_gradient(weighted_mean(
            (jnp.abs(ratio - 1.0) > clip_eps).astype(jnp.float32), weight)),
    }
    return -surrogate - entropy_coef * entropy, info


def value_loss(values: jax.Array, returns: jax.Array, weight: jax.Array | None = None
               ) -> jax.Array:
    """Critic loss: mean squared error of (B,) values against (B,) returns (no value clipping),
    over the samples of weight 1 if a (B,) 0/1 ``weight`` is given."""
    return weighted_mean(jnp.square(values - returns), weight)


# ----------------------------------------------------------------------------- minibatches


def minibatch_indices(
    key: jax.Array, num_samples: int, batch_size: int, epochs: int
) -> jax.Array:
    """Sample indices of every minibatch of ``epochs`` shuffled epochs, (epochs * M, batch_size).

    Per epoch, a fresh permutation of the ``num_samples`` samples is cut into ``M = num_samples
    // batch_size`` minibatches; its last ``num_samples % batch_size`` entries are left out.
    """
    per_epoch = minibatches_per_epoch(num_samples, batch_size)
    perms = epoch_permutations(key, num_samples, epochs)
    return perms[:, : per_epoch * batch_size].reshape(epochs * per_epoch, batch_size)


def epoch_permutations(key: jax.Array, num_samples: int, epochs: int) -> jax.Array:
    """(epochs, num_samples): a fresh permutation of the samples for every epoch."""
    keys = jax.random.split(key, epochs)
    return jax.vmap(lambda k: jax.random.permutation(k, num_samples))(keys)


def padded_minibatch_indices(
    key: jax.Array, num_samples: int, batch_size: int, epochs: int
) -> tuple[jax.Array, jax.Array]:
    """As ``minibatch_indices``, the last partial minibatch of each epoch kept: (indices,
    weights), each (epochs * M, batch_size) with ``M = ceil(num_samples / batch_size)``. The
    partial minibatch is padded to ``batch_size`` with the epoch's first samples at weight 0;
    every other entry has weight 1 (each sample once per epoch)."""
    per_epoch = minibatches_per_epoch(num_samples, batch_size, keep_partial=True)
    padding = per_epoch * batch_size - num_samples
    perms = epoch_permutations(key, num_samples, epochs)
    padded = jnp.concatenate([perms, perms[:, :padding]], axis=1)
    weights = jnp.concatenate([jnp.ones(num_samples), jnp.zeros(padding)]).astype(jnp.float32)
    shape = (epochs * per_epoch, batch_size)
    return padded.reshape(shape), jnp.broadcast_to(weights, (epochs, weights.size)).reshape(shape)


def train_on_minibatches(
    net_state: NetState,
    step: jax.Array,
    loss_fn: Callable,
    tx: optax.GradientTransformation,
    method: MaskMethod,
    context_of: Callable[[dict], MethodContext],
    samples: dict,
    indices: jax.Array,
    key: jax.Array,
    weights: jax.Array | None = None,
) -> tuple[NetState, jax.Array, dict]:
    """One ``masked_gradient_step`` per row of ``indices`` (a ``lax.scan``).

    ``samples`` is a dict of (N, ...) arrays; ``loss_fn(weights, minibatch) -> (loss, info)``;
    with ``weights`` (rows of 0/1 sample weights, ``padded_minibatch_indices``) each minibatch
    holds its row as ``weight``;
    ``context_of(minibatch)`` is the method context of a step. The update count ``step`` goes up
    by one per minibatch and each transform sees the new count. Returns the network state, the
    count and the mean over minibatches of ``info`` and of the gradient norm (``grad_norm``).
    """

    def minibatch_step(carry, row):
        net_state, step = carry
        idx, k, weight = row
        minibatch = jax.tree.map(lambda x: x[idx], samples)
        if weight is not None:
            minibatch["weight"] = weight
        step = step + 1
        net_state, info, grad_norm = masked_gradient_step(
            net_state, loss_fn, tx, method, step, k, context_of(minibatch), minibatch)
        return (net_state, step), {**info, "grad_norm": grad_norm}

    keys = jax.random.split(key, indices.shape[0])
    (net_state, step), infos = jax.lax.scan(minibatch_step, (net_state, step),
                                            (indices, keys, weights))
    return net_state, step, jax.tree.map(jnp.mean, infos)


# ----------------------------------------------------------------------------- the agent


class PPO(NamedTuple):
    """The agent's pure functions (see ``make_ppo``), and views of its networks for probes.

    ``act(state, obs, task_ids, key, deterministic=False) -> (actions, log_probs, values)``;
    ``value(state, obs, task_ids) -> (B,)`` (truncation and rollout-end bootstraps);
    ``update(state, rollout, key) -> (state, metrics)``.
    ``acting_weights(state) -> weights`` (the networks' effective weights), ``act_with(weights,
    obs, task_ids, key, deterministic=False)`` and ``value_with(weights, obs, task_ids)``: the same
    acting with the weights computed once (a host loop's per-step calls carry only them).
    ``actor_logits(weights, obs, task_ids) -> (B, A)``, ``critic_values(weights, obs, task_ids)
    -> (B,)`` and ``actor_activations`` / ``critic_activations(weights, obs, task_ids)`` (the
    sown hidden activations, keyed like the ``activation`` paths of ``neuron_layers[network]``)
    take effective weights (``masked_params`` of the network). ``init_params[network](key)`` is a
    fresh variable tree ``{"params": ...}`` of that network.
    """

    init: Callable
    act: Callable
    value: Callable
    update: Callable
    config: PPOConfig
    acting_weights: Callable
    act_with: Callable
    value_with: Callable
    actor_logits: Callable
    critic_values: Callable
    actor_activations: Callable
    critic_activations: Callable
    init_params: dict[str, Callable]
    neuron_layers: dict[str, tuple[NeuronLayer, ...]]


def make_ppo(
    config: PPOConfig,
    num_tasks: int,
    obs_shape: tuple[int, ...],
    num_actions: int,
    actor_setup: NetworkSetup,
    critic_setup: NetworkSetup,
) -> PPO:
    """Build the pure ``init``, ``act``, ``value`` and ``update`` of multi-task PPO.

    After each minibatch gradient step of a network, its method's ``transform`` receives a
    ``MethodContext`` with: ``grads``, ``dense_grads`` and ``optimizer`` (see
    ``masked_gradient_step``), ``init_params(key)`` (a fresh variable tree of the network),
    ``activations(weights)`` (hidden activations of the network on this minibatch given its
    effective weights, keyed like ``neuron_layers``' ``activation`` paths), ``neuron_layers`` and
    ``batch`` (the minibatch dict).
    """
    check_architecture(config, obs_shape)
    def network(out_dim: int, setup: NetworkSetup) -> CNNTaskNetwork:
        return CNNTaskNetwork(num_tasks, out_dim, config.head_hidden_dim, config.conv_channels,
                              config.cnn_pooling, setup.layer_norm, config.arch,
                              config.num_experts)

    actor_net, critic_net = network(num_actions, actor_setup), network(1, critic_setup)

    def critic_values(weights: Any, obs: jax.Array, task_ids: jax.Array) -> jax.Array:
        """Effective critic weights, (B, H, W, C) obs, (B,) task ids -> (B,) state values."""
        return critic_net.apply(weights, obs, task_ids)[:, 0]
    actor_tx = make_optimizer(config.actor_lr, config.max_grad_norm, actor_setup)
    critic_tx = make_optimizer(config.critic_lr, config.max_grad_norm, critic_setup)
    layers = cnn_neuron_layers(config.arch, config.num_experts, len(config.conv_channels))

    dummy_obs = jnp.zeros((1, *obs_shape), jnp.float32)
    dummy_task = jnp.zeros((1,), jnp.int32)

    def init_actor_params(key):
        return actor_net.init(key, dummy_obs, dummy_task)

    def init_critic_params(key):
        return critic_net.init(key, dummy_obs, dummy_task)

    for init_params in (init_actor_params, init_critic_params):
        check_neuron_layers(jax.eval_shape(init_params, jax.random.PRNGKey(0)), layers)

    actor_activations = sown_activations(actor_net)
    critic_activations = sown_activations(critic_net)

    def init(key: jax.Array) -> PPOState:
        k_actor, k_critic, k_actor_mask, k_critic_mask = jax.random.split(key, 4)
        return PPOState(
            actor=init_network_state(init_actor_params(k_actor), actor_tx, actor_setup,
                                     k_actor_mask),
            critic=init_network_state(init_critic_params(k_critic), critic_tx, critic_setup,
                                      k_critic_mask),
            actor_step=jnp.zeros((), jnp.int32),
            critic_step=jnp.zeros((), jnp.int32),
            phase=jnp.zeros((), jnp.int32),
        )

    def acting_weights(state: PPOState) -> dict:
        """The effective weights ``{"actor": ..., "critic": ...}`` (params * masks) acting reads:
        computed once per rollout, so that each vector step's call carries only these. An actor
        whose method isolates a sub-network per task acts with each task's own view
        (``optim.acting_weights``); the critic only serves the task being trained, which reads
        the whole network."""
        return {"actor": optim_acting_weights(state.actor, actor_setup, num_tasks),
                "critic": forward_weights(state.critic)}

    def value_with(weights: dict, obs: jax.Array, task_ids: jax.Array) -> jax.Array:
        """``acting_weights``, (B, H, W, C) obs, (B,) task ids -> (B,) state values."""
        return critic_values(weights["critic"], obs, task_ids)

    def act_with(
        weights: dict, obs: jax.Array, task_ids: jax.Array, key: jax.Array,
        deterministic: bool = False,
    ) -> tuple[jax.Array, jax.Array, jax.Array]:
        """``acting_weights``, (B, H, W, C) obs, (B,) task ids -> actions (B,) int32, their
        log-probs (B,), values (B,). Actions are sampled from the policy, or its most likely
        action if ``deterministic`` (a Python bool: jit with ``static_argnames``)."""
        logits = apply_task_views(actor_net.apply, actor_setup, weights["actor"], task_ids, obs)
        if deterministic:
            actions = jnp.argmax(logits, axis=-1).astype(jnp.int32)
        else:
            actions = jax.random.categorical(key, logits).astype(jnp.int32)
        return actions, categorical_log_prob(logits, actions), value_with(weights, obs, task_ids)

    def value(state: PPOState, obs: jax.Array, task_ids: jax.Array) -> jax.Array:
        """(B, H, W, C) obs, (B,) task ids -> (B,) state values."""
        return value_with(acting_weights(state), obs, task_ids)

    def act(
        state: PPOState, obs: jax.Array, task_ids: jax.Array, key: jax.Array,
        deterministic: bool = False,
    ) -> tuple[jax.Array, jax.Array, jax.Array]:
        """``act_with`` on the state's effective weights."""
        return act_with(acting_weights(state), obs, task_ids, key, deterministic)

    def actor_loss_fn(weights, minibatch):
        logits = actor_net.apply(weights, minibatch["obs"], minibatch["task_ids"])
        return policy_loss(logits, minibatch["actions"], minibatch["log_probs"],
                           minibatch["advantages"], config.clip_eps, config.entropy_coef,
                           config.normalize_advantages
                           and config.advantage_normalization == "minibatch",
                           minibatch.get("weight"))

    def critic_loss_fn(weights, minibatch):
        values = critic_values(weights, minibatch["obs"], minibatch["task_ids"])
        loss = value_loss(values, minibatch["returns"], minibatch.get("weight"))
        return loss, {"value_loss": loss}

    def context_of(init_params, activations, phase):
        def context(minibatch):
            return MethodContext(
                init_params=init_params,
                activations=lambda w: activations(w, minibatch["obs"], minibatch["task_ids"]),
                neuron_layers=tuple(layers),
                batch=minibatch,
                phase=phase,
            )
        return context

    def update(state: PPOState, rollout: Rollout, key: jax.Array) -> tuple[PPOState, dict]:
        """The critic's then the actor's epochs on one rollout (see the module docstring).

        Metrics are means over the network's minibatch steps, except the sparsities (after the
        update).
        """
        horizon, num_envs = rollout.rewards.shape
        num_samples = horizon * num_envs
        if num_samples != config.rollout_env_steps:
            raise ValueError(f"the rollout holds {num_samples} env steps ({horizon} x "
                             f"{num_envs}); the config says {config.rollout_env_steps}")
        advantages, returns = gae(
            rollout.rewards, rollout.values, rollout.terminated, rollout.truncated,
            rollout.truncation_values, rollout.last_values, config.gamma, config.gae_lambda)

        def flat(x):
            return x.reshape(num_samples, *x.shape[2:])

        actor_advantages = flat(advantages)
        if config.normalize_advantages and config.advantage_normalization == "task":
            actor_advantages = standardize_per_task(actor_advantages, flat(rollout.task_ids),
                                                    num_tasks)
        samples = {
            "obs": flat(rollout.obs), "task_ids": flat(rollout.task_ids),
            "actions": flat(rollout.actions), "log_probs": flat(rollout.log_probs),
            "advantages": actor_advantages, "returns": flat(returns),
        }
        k_critic_idx, k_critic, k_actor_idx, k_actor = jax.random.split(key, 4)
        def rows(key: jax.Array, batch_size: int, epochs: int):
            """(indices, weights or None) of the network's minibatches."""
            if config.keep_partial_minibatch and num_samples % batch_size:
                return padded_minibatch_indices(key, num_samples, batch_size, epochs)
            return minibatch_indices(key, num_samples, batch_size, epochs), None

        critic_indices, critic_weights = rows(k_critic_idx, config.critic_batch_size,
                                              config.critic_epochs)
        critic_state, critic_step, critic_info = train_on_minibatches(
            state.critic, state.critic_step, critic_loss_fn, critic_tx, critic_setup.method,
            context_of(init_critic_params, critic_activations, state.phase), samples,
            critic_indices, k_critic, critic_weights)
        actor_indices, actor_weights = rows(k_actor_idx, config.policy_batch_size,
                                            config.policy_epochs)
        actor_state, actor_step, actor_info = train_on_minibatches(
            state.actor, state.actor_step, actor_loss_fn, actor_tx, actor_setup.method,
            context_of(init_actor_params, actor_activations, state.phase), samples,
            actor_indices, k_actor, actor_weights)
        state = PPOState(actor=actor_state, critic=critic_state, actor_step=actor_step,
                         critic_step=critic_step, phase=state.phase)
        metrics = {
            "policy_loss": actor_info["policy_loss"],
            "entropy": actor_info["entropy"],
            "approx_kl": actor_info["approx_kl"],
            "clip_fraction": actor_info["clip_fraction"],
            "value_loss": critic_info["value_loss"],
            "actor_grad_norm": actor_info["grad_norm"],
            "critic_grad_norm": critic_info["grad_norm"],
            "actor_sparsity": network_sparsity(actor_state.masks),
            "critic_sparsity": network_sparsity(critic_state.masks),
            "advantage_mean": jnp.mean(advantages),
            "return_mean": jnp.mean(returns),
        }
        return state, metrics

    return PPO(
        init=init, act=act, value=value, update=update, config=config,
        acting_weights=acting_weights, act_with=act_with, value_with=value_with,
        actor_logits=actor_net.apply, critic_values=critic_values,
        actor_activations=actor_activations, critic_activations=critic_activations,
        init_params={"actor": init_actor_params, "critic": init_critic_params},
        neuron_layers={"actor": layers, "critic": layers},
    )
