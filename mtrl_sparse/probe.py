"""Plasticity probes of the agents: the metrics of ``mtrl_sparse.plasticity`` (and the neuron
measures of ``mtrl_sparse.agents.neurons``) on recent data.

Per network (the actor, each critic): dormant-neuron fraction over alive neurons of the hidden
layers at ``dormant_tau`` (a per-task head's units scored against their own task's mean, as ReDo
scores them), effective rank (srank) of the representation the heads read (the last
hidden layer of ``mh``, the mixed experts of ``moe`` / ``moore``), weight norm and
per-layer sparsity; for the actor, the Fisher trace of the policy with actions sampled from it and
held fixed. Measured outside the update: SAC on the most recent transitions of the replay buffer,
PPO on the latest rollout.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp

from mtrl_sparse.agents.net_state import apply_masks, effective_weights, masked_params
from mtrl_sparse.agents.networks import NeuronLayer
from mtrl_sparse.agents.neurons import pooled_fraction
from mtrl_sparse.agents.ppo import PPO, PPOState, categorical_log_prob
from mtrl_sparse.agents.sac import SAC, SACState, gaussian_tanh_sample
from mtrl_sparse.agents.tree_paths import get_path
from mtrl_sparse.agents.trees import global_norm
from mtrl_sparse.methods.redo import dormant_neurons
from mtrl_sparse.methods.topology import LayerSlices
from mtrl_sparse.plasticity import actor_log_prob_fn, effective_rank, fisher_trace, layer_sparsity


def network_metrics(
    name: str, activations: Any, layers: tuple[NeuronLayer, ...], representation: tuple[str, ...],
    masks: Any, tau: float, delta: float, layer_slices: LayerSlices = (),
) -> dict[str, jax.Array]:
    """Dormant fraction (alive units pooled over the layers; per-task head units scored task by
    task, as ReDo scores them) and srank of ``representation``."""
    dormant, alive = dormant_neurons(activations, masks, layers, tau, layer_slices)
    return {f"plasticity/{name}/dormant_fraction": pooled_fraction(dormant, alive),
            f"plasticity/{name}/srank": effective_rank(get_path(activations, representation),
                                                       delta)}


def _norms_and_sparsity(networks: dict[str, Any]) -> dict[str, jax.Array]:
    """Per network state: ``plasticity/<net>/weight_norm`` and ``.../sparsity/<layer path>``."""
    metrics = {}
    for name, net in networks.items():
        metrics[f"plasticity/{name}/weight_norm"] = global_norm(effective_weights(net))
        for path, value in layer_sparsity(net.masks).items():
            metrics[f"plasticity/{name}/sparsity/{path}"] = value
    return metrics


def make_sac_probe(
    sac: SAC, dormant_tau: float, srank_delta: float, fisher_chunk: int = 64,
    layer_slices: LayerSlices = (),
) -> Callable[[SACState, Any, jax.Array, jax.Array], dict[str, jax.Array]]:
    """``probe(agent, batch, task_ids, key) -> {metric name: scalar}`` (jit it);
    ``layer_slices``: the networks' stacked per-task layers (``methods.topology``)."""
    critic_layers = {
        q: tuple(layer for layer in sac.neuron_layers["critic"] if layer.incoming[1] == q)
        for q in ("q1", "q2")
    }
    (actor_representation,) = sac.representations["actor"]
    critic_representations = {q: next(path for path in sac.representations["critic"]
                                      if path[0] == q)
                              for q in ("q1", "q2")}

    def probe(agent: SACState, batch: Any, task_ids: jax.Array, key: jax.Array):
        actor_w, critic_w = masked_params(agent.actor), masked_params(agent.critic)
        metrics = network_metrics(
            "actor", sac.actor_activations(actor_w, batch.obs, task_ids),
            sac.neuron_layers["actor"], actor_representation, agent.actor.masks, dormant_tau,
            srank_delta, layer_slices)
        critic_acts = sac.critic_activations(critic_w, batch.obs, batch.actions, task_ids)
        for q, layers in critic_layers.items():
            metrics.update(network_metrics(f"critic_{q}", critic_acts, layers,
                                            critic_representations[q], agent.critic.masks,
                                            dormant_tau, srank_delta, layer_slices))

        mean, log_std = sac.actor_distribution(actor_w, batch.obs, task_ids)
        actions, _ = gaussian_tanh_sample(mean, log_std, key)
        log_prob = actor_log_prob_fn(
            lambda p, o, t: sac.actor_distribution(apply_masks(p, agent.actor.masks), o, t))
        metrics["plasticity/actor/fisher_trace"] = fisher_trace(
            log_prob, effective_weights(agent.actor), batch.obs, task_ids, actions, fisher_chunk)

        return {**metrics, **_norms_and_sparsity({"actor": agent.actor, "critic": agent.critic})}

    return probe


def make_ppo_probe(
    ppo: PPO, dormant_tau: float, srank_delta: float, fisher_chunk: int = 64,
    layer_slices: LayerSlices = (),
) -> Callable[[PPOState, jax.Array, jax.Array, jax.Array], dict[str, jax.Array]]:
    """``probe(agent, obs, task_ids, key) -> {metric name: scalar}`` for multi-task PPO (jit it).

    On (B, H, W, C) observations and (B,) task ids of the latest rollout: per network, the
    dormant fraction over its hidden layers (convolution channels and head units) and the srank
    of its last hidden layer (the head units), weight norm and per-layer sparsity; for the actor,
    the Fisher trace of the categorical policy with actions sampled from it and held fixed
    (w.r.t. the effective weights). ``layer_slices``: the stacked per-task layers, whose units
    are scored task by task.
    """

    def probe(agent: PPOState, obs: jax.Array, task_ids: jax.Array, key: jax.Array):
        actor_w, critic_w = masked_params(agent.actor), masked_params(agent.critic)
        metrics = {}
        for name, activations, net in (
                ("actor", ppo.actor_activations(actor_w, obs, task_ids), agent.actor),
                ("critic", ppo.critic_activations(critic_w, obs, task_ids), agent.critic)):
            layers = ppo.neuron_layers[name]
            metrics.update(network_metrics(name, activations, layers, layers[-1].activation,
                                            net.masks, dormant_tau, srank_delta, layer_slices))

        actions = jax.random.categorical(key, ppo.actor_logits(actor_w, obs, task_ids))

        def log_prob(params: Any, one_obs: jax.Array, task_id: jax.Array, action: jax.Array):
            logits = ppo.actor_logits(apply_masks(params, agent.actor.masks), one_obs[None],
                                      jnp.asarray(task_id)[None])
            return categorical_log_prob(logits, action[None])[0]

        metrics["plasticity/actor/fisher_trace"] = fisher_trace(
            log_prob, effective_weights(agent.actor), obs, task_ids, actions, fisher_chunk)
        return {**metrics, **_norms_and_sparsity({"actor": agent.actor, "critic": agent.critic})}

    return probe
