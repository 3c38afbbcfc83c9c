"""``sparse_tune``: sparse tuning at task boundaries, MIST-style (Zhang et al. 2025,
arXiv 2505.19943).

When a new task arrives (a phase of a sequential schedule), every parameter ``i`` is scored by a
sensitivity estimate on the new task's data, ``F_i = mean_j (dL/dtheta_i)^2`` over the gradients of
the task's first ``score_updates`` updates (the RL loss of the network: an empirical Fisher
diagonal). The ``trainable_fraction`` highest-scoring entries of each parameter tensor (weights,
biases, norms alike) stay trainable for the rest of the task; every other entry is frozen by
masking the final optax update (the network itself stays dense: nothing is masked in the
forward pass). On top, each step keeps each trainable entry's update with probability
``update_probability`` only, so that well under 1% of the parameters change per step
(5% x 0.1 = 0.5% by default).

While a task is scored the whole network is frozen (its weights do not move until the subset is
chosen); the first update of a task, taken before the method sees the boundary (methods run after
their update), still trains the previous task's subset. The first task trains the dense network
with every update kept (``first_task_dense``), as sparse tuning adapts a trained network.

The freezing lives in the optimizer: ``sparse_tune_optimizer`` adds an update transform
(``freeze_updates``) whose state holds the trainable set as a parameter-shaped 0/1 tree, a PRNG key
for the per-step draws and the fraction of parameters the last step changed; the method's
``transform`` writes the trainable set into that state at boundaries and copies the fraction into
its own state, where it is logged (``<network>/sparse_tune/updated_fraction``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from mtrl_sparse.agents.net_state import MethodContext, NetState
from mtrl_sparse.methods.base import Method, MethodEntry, NetworkMethodSettings
from mtrl_sparse.methods.topology import keep_top_scores, no_masks, num_to_keep


@dataclass(frozen=True)
class SparseTuneOptions:
    """Sparse tuning of the networks that run ``sparse_tune``."""

    trainable_fraction: float = 0.05
    """Entries of each parameter tensor kept trainable during a task (top sensitivity)."""
    update_probability: float = 0.1
    """Each step keeps a trainable entry's update with this probability (p)."""
    score_updates: int = 8
    """Updates at the start of a task whose squared gradients average into the scores."""
    first_task_dense: bool = True
    """Train the whole network, every update kept, during the first task."""


class FreezeState(NamedTuple):
    """State of ``freeze_updates``: ``sparse_tune_scale`` parameter-shaped float32 (1: the entry
    may be updated, 0: frozen); ``sparse_tune_tuning`` () bool, whether sparse tuning has begun
    (updates are then drawn with probability p); ``sparse_tune_key`` the key of the next step's
    draws (the method's key of the previous update, so runs draw apart);
    ``sparse_tune_updated`` the fraction of parameter entries the last step changed, ()."""

    sparse_tune_scale: Any
    sparse_tune_tuning: jax.Array
    sparse_tune_key: jax.Array
    sparse_tune_updated: jax.Array


def freeze_updates(update_probability: float, first_task_dense: bool
                   ) -> optax.GradientTransformation:
    """An optax update transform that zeroes the updates of frozen entries and, once sparse
    tuning has begun, keeps each remaining update with probability ``update_probability``.
    Without ``first_task_dense`` everything starts frozen (until the method's first choice)."""

    def init(params: Any) -> FreezeState:
        fill = 1.0 if first_task_dense else 0.0
        return FreezeState(jax.tree.map(lambda p: jnp.full(p.shape, fill, jnp.float32), params),
                           jnp.zeros((), bool), jax.random.PRNGKey(0),
                           jnp.zeros((), jnp.float32))

    def update(updates: Any, state: FreezeState, params: Any = None) -> tuple[Any, FreezeState]:
        del params
        draw_key = state.sparse_tune_key
        leaves, treedef = jax.tree.flatten(updates)
        scales = treedef.flatten_up_to(state.sparse_tune_scale)
        def draws() -> list[jax.Array]:
            return [jax.random.bernoulli(jax.random.fold_in(draw_key, k), update_probability,
                                         u.shape) for k, u in enumerate(leaves)]

        # Draws only once tuning has begun (a real branch: the first task pays nothing).
        drawn = jax.lax.cond(state.sparse_tune_tuning, draws,
                             lambda: [jnp.ones(u.shape, bool) for u in leaves])
        kept = [jnp.where((s > 0.0) & d, u, jnp.zeros((), u.dtype))
                for u, s, d in zip(leaves, scales, drawn, strict=True)]
        changed = sum(jnp.sum(u != 0) for u in kept)
        total = sum(u.size for u in kept)
        return jax.tree.unflatten(treedef, kept), state._replace(
            sparse_tune_updated=(changed / max(total, 1)).astype(jnp.float32))

    return optax.GradientTransformation(init, update)


def sparse_tune_optimizer(options: SparseTuneOptions) -> tuple[tuple, tuple]:
    """(nothing before Adam, the freeze after Adam)."""
    return (), (freeze_updates(options.update_probability, options.first_task_dense),)


def check_sparse_tune_options(options: SparseTuneOptions) -> None:
    """ValueError (one line) for fractions or probabilities outside (0, 1]."""
    if not 0.0 < options.trainable_fraction <= 1.0:
        raise ValueError("sparse_tune trainable_fraction must be in (0, 1]; got "
                         f"{options.trainable_fraction}")
    if not 0.0 < options.update_probability <= 1.0:
        raise ValueError("sparse_tune update_probability must be in (0, 1]; got "
                         f"{options.update_probability}")
    if options.score_updates < 1:
        raise ValueError(f"sparse_tune score_updates must be >= 1; got {options.score_updates}")


def check_sparse_tune_run(settings: NetworkMethodSettings, options: SparseTuneOptions,
                          network: str) -> None:
    """Tasks long enough to be scored (``sequential_only`` in the entry refuses multi-task
    runs), and no reparameterised weights (the freeze masks the parameters' updates, not the
    scales')."""
    if "sign_in" in settings.name.split("+"):
        raise ValueError(f"sparse_tune on the {network} freezes parameters but not sign_in's "
                         "scales, so frozen weights would still change; use one of the two")
    total = settings.total_updates
    if total is not None and total // settings.phases <= options.score_updates:
        raise ValueError(
            f"sparse_tune on the {network}: a task has {total // settings.phases} updates, not "
            f"more than --methods.sparse-tune.score-updates {options.score_updates}")


def top_per_tensor(scores: Any, fraction: float) -> Any:
    """1.0 at the round(fraction x size) highest scores of every leaf (at least one), else
    0.0."""
    def keep(score: jax.Array) -> jax.Array:
        count = jnp.maximum(num_to_keep(jnp.float32(fraction), score.size), 1)
        return keep_top_scores(score, count).astype(jnp.float32)
    return jax.tree.map(keep, scores)


def sparse_tune(settings: NetworkMethodSettings, options: SparseTuneOptions) -> Method:
    """The scoring and selection of the module docstring (the freezing is the optimizer's)."""
    del settings

    def init(params: Any, maskable: Any, key: jax.Array) -> tuple[Any, dict]:
        del maskable, key
        return no_masks(params), {
            # Without first_task_dense the first update is a boundary too (into phase 0).
            "phase": jnp.full((), 0 if options.first_task_dense else -1, jnp.int32),
            "scoring": jnp.zeros((), bool),
            "scored_updates": jnp.zeros((), jnp.int32),
            "fisher": jax.tree.map(lambda p: jnp.zeros(p.shape, jnp.float32), params),
            "updated_fraction": jnp.zeros((), jnp.float32),
            "tunings": jnp.zeros((), jnp.int32),
        }

    def transform(net_state: NetState, step: jax.Array, key: jax.Array,
                  context: MethodContext) -> NetState:
        del step
        ms = net_state.method_state
        phase = jnp.asarray(0 if context.phase is None else context.phase, jnp.int32)
        boundary = phase != ms["phase"]
        scoring = ms["scoring"] | boundary
        fisher = jax.lax.cond(  # a real branch: no work outside the scoring updates
            scoring,
            lambda f: jax.tree.map(lambda f, g: jnp.where(boundary, 0.0, f) + g * g, f,
                                   context.grads),
            lambda f: f, ms["fisher"])
        scored = jnp.where(boundary, 0, ms["scored_updates"]) + scoring.astype(jnp.int32)
        chosen = scoring & (scored >= options.score_updates)
        # Unchanged, frozen to score (a boundary) or the chosen subset: a real branch, so an
        # ordinary update rewrites nothing parameter-sized.
        scale = jax.lax.switch(
            jnp.where(chosen, 2, jnp.where(boundary, 1, 0)),
            (lambda s: s, lambda s: jax.tree.map(jnp.zeros_like, s),
             lambda s: top_per_tensor(fisher, options.trainable_fraction)),
            optax.tree_utils.tree_get(net_state.opt_state, "sparse_tune_scale"))
        tuning = optax.tree_utils.tree_get(net_state.opt_state, "sparse_tune_tuning") | chosen
        opt_state = optax.tree_utils.tree_set(net_state.opt_state, sparse_tune_scale=scale,
                                              sparse_tune_tuning=tuning, sparse_tune_key=key)
        updated = optax.tree_utils.tree_get(net_state.opt_state, "sparse_tune_updated")
        return net_state.replace(opt_state=opt_state, method_state={
            "phase": phase,
            "scoring": scoring & ~chosen,
            "scored_updates": scored,
            "fisher": fisher,
            "updated_fraction": updated,
            "tunings": ms["tunings"] + chosen.astype(jnp.int32),
        })

    return Method(init=init, transform=transform)


ENTRY = MethodEntry(
    name="sparse_tune",
    kind="plasticity",
    description="sparse tuning at task boundaries: the top-sensitivity entries of each tensor "
                "trainable, each update kept with probability p (sequential schedules)",
    source="Zhang et al. 2025, MIST (arXiv 2505.19943)",
    build=sparse_tune,
    options=SparseTuneOptions,
    check=check_sparse_tune_options,
    check_run=check_sparse_tune_run,
    sequential_only=True,
    optimizer=sparse_tune_optimizer,
    experimental="the score window is counted in the actor's updates and not scaled for PPO's "
                 "critic (about 8 of a task's 25 rollouts frozen); the random gradient dropping "
                 "acts after Adam, so dropped entries still move; MIST's 0.9^k scaling of "
                 "earlier tasks' entries, its exemptions (classifier, biases, norms) and its "
                 "100x lower backbone learning rate are not checked against the authors' code",
)
