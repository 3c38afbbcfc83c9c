"""``sparse_tune``: sparse tuning at task boundaries as MIST does it (Zhang et al. 2025,
"MIST: Mutual Information Sparse Tuning", arXiv 2505.19943; the authors' code, zhwhu/MIST,
``models/simplecil_mist.py``).

MIST, step by step (the paper's defaults; the authors' configs differ where noted):

1. A new task arrives. One epoch over its data scores every parameter entry, with no
   optimizer step: ``score_i = mean (dL/dtheta_i)^2`` (the authors accumulate squared gradients
   of a supervised-contrastive mutual-information loss; entries frozen for good score 0).
2. Per tensor, the entries with the top ``trainable_fraction`` scores are selected (5%; the
   configs 10%). Exempt from selection, and so wholly trainable: the classifier, every bias,
   every normalisation parameter and the projection head.
3. The task is tuned (epochs 2..20) with a new SGD optimizer (momentum 0.9, weight decay 5e-4)
   whose backbone learning rate is 100x below the head's. Before each step the gradient is
   masked: unselected entries 0; each selected (or exempt) entry kept with probability
   ``update_probability`` (so about 5% x 0.1 = 0.5% of the parameters get a gradient per step);
   the gradient of an entry that ``k`` earlier tasks selected scaled by ``0.9^k``; entries
   frozen for good 0. Momentum and weight decay still move an entry whose gradient was dropped.
4. At the task's end the entry with the highest score of each tensor is frozen for good (their
   RanPAC variant: the top 0.05%), and each selected entry's count ``k`` grows by one.

Here, with the RL loss of each network (PPO's or SAC's actor and critic) in place of the
contrastive one, the adaptations and why:

- Score (step 1): the squared gradients of the network's own RL loss over its first
  ``score_samples`` samples of the task (2,000: one PPO rollout, one epoch over it; the
  window is ``ceil(score_samples / batch_size)`` of the network's own updates, so PPO's critic,
  one 2,000-sample update per rollout, scores on one update and its actor on 8 minibatches).
  RL has no labels, so MIST's mutual information between features and classes has no
  counterpart; the Fisher diagonal of the RL objective is what "sensitivity to the new task"
  means for a policy or a value function. The network does not move while it is scored: the
  task's first update, taken before the method sees the boundary (methods run after their
  update), is undone (``MethodContext.params_before``).
- Exemptions (step 2): the network's biases and norms are exempt, as in the authors' code; the
  classifier's counterpart is the new task's own parameters (its per-task heads and its row
  of a task encoder, ``NetworkMethodSettings.task_leaves``), wholly trainable; the other tasks'
  own parameters are frozen (each task's head belongs to it, as a class-incremental classifier's
  old classes keep their prototypes).
- Optimizer (step 3): the network's Adam, its moments and step count reset when the subset is
  chosen (a new optimizer per task). Gradients are dropped before Adam (``drop_gradients``):
  a dropped entry's moments decay and Adam still moves it, as SGD's momentum does in the
  authors' code. The 0.9^k scaling and the backbone's lower learning rate act on Adam's update
  instead (``scale_updates``): Adam divides each entry's gradient by its own running scale, so
  a constant factor on the gradient would cancel. The "backbone" is every entry no task owns
  (the trunk, with its biases and norms, as the authors' ``convnet`` group);
  ``trunk_learning_rate_scale`` (0.01) multiplies its updates. No weight decay (the agents'
  Adam has none).
- Unselected entries are frozen exactly (their updates are zero after Adam), so their values
  stay bit-identical through the task.
- The first task trains the whole network densely (``first_task_dense``): MIST starts from a
  pre-trained backbone, RL from scratch; the first task plays the pre-training.
- Permanent freezing (step 4): ``frozen_fraction`` of each trunk tensor (0: the maximum only,
  as in the authors' SimpleCIL code) by the task's score, from the next task on.

The state the optimizer needs lives in the optimizer: ``sparse_tune_optimizer`` adds
``drop_gradients`` before Adam (whether tuning has begun, the key of the next step's draws) and
``scale_updates`` after it (the per-entry factor: 0 frozen, else ``0.9^k x`` the learning-rate
scale; the fraction of entries the last step moved). The method's ``transform`` writes them at
the boundaries and logs ``<network>/sparse_tune/updated_fraction`` (entries moved by the last
step; momentum moves every selected entry, so this is about the selected share, while the
gradient reaches ``update_probability`` of them) and ``trainable_share`` (entries the task may
move: selected, exempt or its own).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from mtrl_sparse.agents.net_state import MethodContext, NetState, apply_masks, fresh_adam
from mtrl_sparse.methods.base import Method, MethodEntry, NetworkMethodSettings
from mtrl_sparse.methods.topology import FREE, keep_top_scores, no_masks, num_to_keep, task_index

OVERLAP_DECAY = 0.9
"""MIST's factor per earlier selection: an entry selected by k earlier tasks moves 0.9^k as
far."""


@dataclass(frozen=True)
class SparseTuneOptions:
    """Sparse tuning of the networks that run ``sparse_tune`` (MIST's defaults)."""

    trainable_fraction: float = 0.05
    """Entries of each trunk kernel selected for a task, by score (the paper's 5%)."""
    update_probability: float = 0.1
    """Each step keeps a trainable entry's gradient with this probability (the paper's ~0.5%
    of the parameters per step, with 5% selected)."""
    score_samples: int = 2000
    """Samples the score averages over at the start of a task (one PPO rollout)."""
    trunk_learning_rate_scale: float = 0.01
    """Multiplies the trunk's updates while tuning (MIST's backbone learning rate, 100x below
    the head's); the task's own parameters train at the network's learning rate."""
    frozen_fraction: float = 0.0
    """Entries of each trunk kernel frozen for good after a task, by score; at least one (0:
    the maximum only, the authors' SimpleCIL code)."""
    first_task_dense: bool = True
    """Train the whole network, every update kept, during the first task."""


# ----------------------------------------------------------------------------- optimizer parts


class DropState(NamedTuple):
    """State of ``drop_gradients``: ``sparse_tune_tuning`` () bool, whether tuning has begun;
    ``sparse_tune_key`` the key of the next step's draws (the method's key of the previous
    update, so runs draw apart)."""

    sparse_tune_tuning: jax.Array
    sparse_tune_key: jax.Array


class ScaleState(NamedTuple):
    """State of ``scale_updates``: ``sparse_tune_scale`` parameter-shaped float32 factors of the
    updates (0: frozen); ``sparse_tune_updated`` the fraction of entries the last step moved."""

    sparse_tune_scale: Any
    sparse_tune_updated: jax.Array


FreezeState = ScaleState
"""The optimizer state that holds which entries may move (``sparse_tune_scale``)."""


def drop_gradients(update_probability: float) -> optax.GradientTransformation:
    """Before Adam: once tuning has begun, keep each gradient entry with probability
    ``update_probability`` (a dropped entry gets gradient 0 this step; Adam's moments decay
    and still move it)."""

    def init(params: Any) -> DropState:
        del params
        return DropState(jnp.zeros((), bool), jax.random.PRNGKey(0))

    def update(grads: Any, state: DropState, params: Any = None) -> tuple[Any, DropState]:
        del params
        leaves, treedef = jax.tree.flatten(grads)

        def dropped() -> list[jax.Array]:
            return [jnp.where(jax.random.bernoulli(jax.random.fold_in(state.sparse_tune_key, k),
                                                   update_probability, g.shape),
                              g, jnp.zeros((), g.dtype)) for k, g in enumerate(leaves)]

        # A real branch: the first task draws nothing.
        kept = jax.lax.cond(state.sparse_tune_tuning, dropped, lambda: leaves)
        return jax.tree.unflatten(treedef, kept), state

    return optax.GradientTransformation(init, update)


def scale_updates(first_task_dense: bool) -> optax.GradientTransformation:
    """After Adam: multiply each entry's update by its factor (0 freezes it). Without
    ``first_task_dense`` everything starts frozen (until the method's first choice)."""

    def init(params: Any) -> ScaleState:
        fill = 1.0 if first_task_dense else 0.0
        return ScaleState(jax.tree.map(lambda p: jnp.full(p.shape, fill, jnp.float32), params),
                          jnp.zeros((), jnp.float32))

    def update(updates: Any, state: ScaleState, params: Any = None) -> tuple[Any, ScaleState]:
        del params
        scaled = jax.tree.map(lambda u, s: u * s.astype(u.dtype), updates,
                              state.sparse_tune_scale)
        leaves = jax.tree.leaves(scaled)
        moved = sum(jnp.sum(u != 0) for u in leaves) / max(sum(u.size for u in leaves), 1)
        return scaled, state._replace(sparse_tune_updated=moved.astype(jnp.float32))

    return optax.GradientTransformation(init, update)


def sparse_tune_optimizer(options: SparseTuneOptions) -> tuple[tuple, tuple]:
    """(the gradient dropping before Adam, the update factors after it)."""
    return (drop_gradients(options.update_probability),), (scale_updates(options.first_task_dense),)


# ----------------------------------------------------------------------------- checks


def check_sparse_tune_options(options: SparseTuneOptions) -> None:
    """ValueError (one line) for fractions, probabilities or scales outside their ranges."""
    if not 0.0 < options.trainable_fraction <= 1.0:
        raise ValueError("sparse_tune trainable_fraction must be in (0, 1]; got "
                         f"{options.trainable_fraction}")
    if not 0.0 < options.update_probability <= 1.0:
        raise ValueError("sparse_tune update_probability must be in (0, 1]; got "
                         f"{options.update_probability}")
    if options.score_samples < 1:
        raise ValueError(f"sparse_tune score_samples must be >= 1; got {options.score_samples}")
    if not 0.0 < options.trunk_learning_rate_scale <= 1.0:
        raise ValueError("sparse_tune trunk_learning_rate_scale must be in (0, 1]; got "
                         f"{options.trunk_learning_rate_scale}")
    if not 0.0 <= options.frozen_fraction < 1.0:
        raise ValueError("sparse_tune frozen_fraction must be in [0, 1); got "
                         f"{options.frozen_fraction}")


def score_window(settings: NetworkMethodSettings, options: SparseTuneOptions) -> int:
    """Updates of the network the score averages over: its first ``score_samples`` samples of
    a task, in whole updates (at least 1)."""
    if settings.batch_size is None or settings.batch_size < 1:
        raise ValueError("sparse_tune needs the network's batch size (samples per update); got "
                         f"{settings.batch_size}")
    return max(1, math.ceil(options.score_samples / settings.batch_size))


def check_sparse_tune_run(settings: NetworkMethodSettings, options: SparseTuneOptions,
                          network: str) -> None:
    """Tasks long enough to be scored (``sequential_only`` in the entry refuses multi-task
    runs), and no reparameterised weights (the freeze masks the parameters' updates, not the
    scales')."""
    if "sign_in" in settings.name.split("+"):
        raise ValueError(f"sparse_tune on the {network} freezes parameters but not sign_in's "
                         "scales, so frozen weights would still change; use one of the two")
    window, total = score_window(settings, options), settings.total_updates
    if total is not None and total // settings.phases <= window:
        raise ValueError(
            f"sparse_tune on the {network}: a task has {total // settings.phases} updates, not "
            f"more than the {window} that score --methods.sparse-tune.score-samples "
            f"{options.score_samples} (at {settings.batch_size} samples per update)")


# ----------------------------------------------------------------------------- selection


def top_per_tensor(scores: Any, fraction: float) -> Any:
    """1.0 at the round(fraction x size) highest scores of every leaf (at least one), else
    0.0."""
    def keep(score: jax.Array) -> jax.Array:
        count = jnp.maximum(num_to_keep(jnp.float32(fraction), score.size), 1)
        return keep_top_scores(score, count).astype(jnp.float32)
    return jax.tree.map(keep, scores)


def selectable(maskable: Any, tasks: Any) -> Any:
    """Per entry, whether MIST's selection decides it: the trunk's kernels (maskable leaves,
    entries no task owns); biases, norms and the tasks' own parameters are exempt."""
    return jax.tree.map(lambda f, t: jnp.logical_and(bool(f), t == FREE), maskable, tasks)


def update_factors(selected: Any, selectable_entries: Any, tasks: Any, frozen: Any,
                   overlap: Any, task: jax.Array, trunk_scale: float) -> Any:
    """The factor of each entry's update for ``task``: trunk kernels selected and not frozen
    ``0.9^k x trunk_scale`` (k earlier selections), other trunk kernels 0; trunk biases and norms
    ``trunk_scale``; the task's own entries 1, other tasks' 0."""
    def factor(s, sel, t, fz, k):
        trunk = jnp.where(sel, jnp.where(s & ~fz, OVERLAP_DECAY ** k.astype(jnp.float32), 0.0),
                          1.0) * trunk_scale
        return jnp.where(t == FREE, trunk, jnp.where(t == task, 1.0, 0.0)).astype(jnp.float32)
    return jax.tree.map(factor, selected, selectable_entries, tasks, frozen, overlap)


# ----------------------------------------------------------------------------- the method


def sparse_tune(settings: NetworkMethodSettings, options: SparseTuneOptions) -> Method:
    """Scoring, selection, permanent freezing and the optimizer's state at the boundaries (the
    module docstring); the per-step dropping and freezing are the optimizer's."""
    window = score_window(settings, options)

    def init(params: Any, maskable: Any, key: jax.Array) -> tuple[Any, dict]:
        del key
        tasks = task_index(params, settings.task_leaves)
        return no_masks(params), {
            # Without first_task_dense the first update is a boundary too (into phase 0).
            "phase": jnp.full((), 0 if options.first_task_dense else -1, jnp.int32),
            "scoring": jnp.zeros((), bool),
            "scored_updates": jnp.zeros((), jnp.int32),
            "score": jax.tree.map(lambda p: jnp.zeros(p.shape, jnp.float32), params),
            "selectable": selectable(maskable, tasks),
            "selected": jax.tree.map(lambda p: jnp.zeros(p.shape, bool), params),
            "overlap": jax.tree.map(lambda p: jnp.zeros(p.shape, jnp.int32), params),
            "frozen": jax.tree.map(lambda p: jnp.zeros(p.shape, bool), params),
            "updated_fraction": jnp.zeros((), jnp.float32),
            "trainable_share": jnp.ones((), jnp.float32),
            "tunings": jnp.zeros((), jnp.int32),
        }

    def choose(ms: dict, score: Any, phase: jax.Array, params: Any) -> tuple[Any, dict]:
        """Select the task's subset, its update factors, and what freezes after it."""
        eligible = jax.tree.map(lambda s, fz: s & ~fz, ms["selectable"], ms["frozen"])
        ranked = jax.tree.map(lambda sc, e: jnp.where(e, sc, -1.0), score, eligible)
        selected = jax.tree.map(lambda top, e: (top > 0) & e,
                                top_per_tensor(ranked, options.trainable_fraction), eligible)
        tasks = task_index(params, settings.task_leaves)
        factors = update_factors(selected, ms["selectable"], tasks, ms["frozen"], ms["overlap"],
                                 phase, options.trunk_learning_rate_scale)
        newly_frozen = jax.tree.map(lambda top, e: (top > 0) & e,
                                    top_per_tensor(ranked, options.frozen_fraction), eligible)
        sizes = [x.size for x in jax.tree.leaves(selected)]
        share = sum(jnp.sum(f > 0) for f in jax.tree.leaves(factors)) / max(sum(sizes), 1)
        return factors, {
            **ms, "selected": selected,
            "overlap": jax.tree.map(lambda k, s: k + s.astype(jnp.int32), ms["overlap"],
                                    selected),
            "frozen": jax.tree.map(jnp.logical_or, ms["frozen"], newly_frozen),
            "trainable_share": share.astype(jnp.float32),
        }

    def transform(net_state: NetState, step: jax.Array, key: jax.Array,
                  context: MethodContext) -> NetState:
        del step
        ms = net_state.method_state
        phase = jnp.asarray(0 if context.phase is None else context.phase, jnp.int32)
        boundary = phase != ms["phase"]
        scoring = ms["scoring"] | boundary
        score = jax.lax.cond(  # a real branch: no work outside the scoring updates
            scoring,
            lambda s: jax.tree.map(lambda s, g: jnp.where(boundary, 0.0, s) + g * g, s,
                                   context.grads),
            lambda s: s, ms["score"])
        scored = jnp.where(boundary, 0, ms["scored_updates"]) + scoring.astype(jnp.int32)
        chosen = scoring & (scored >= window)
        # The task's first update is undone: the network waits, unmoved, for its subset.
        params = jax.lax.cond(boundary, lambda: apply_masks(context.params_before,
                                                            net_state.masks),
                              lambda: net_state.params)
        opt_state = jax.lax.cond(boundary | chosen, fresh_adam, lambda s: s,
                                 net_state.opt_state)
        # Unchanged, frozen to score (a boundary) or the chosen subset's factors: a real branch,
        # so an ordinary update rewrites nothing parameter-sized.
        old_factors = optax.tree_utils.tree_get(opt_state, "sparse_tune_scale")
        factors, ms = jax.lax.switch(
            jnp.where(chosen, 2, jnp.where(boundary, 1, 0)),
            (lambda m: (old_factors, m),
             lambda m: (jax.tree.map(jnp.zeros_like, old_factors), m),
             lambda m: choose(m, score, phase, params)), ms)
        tuning = optax.tree_utils.tree_get(opt_state, "sparse_tune_tuning") | chosen
        opt_state = optax.tree_utils.tree_set(opt_state, sparse_tune_scale=factors,
                                              sparse_tune_tuning=tuning, sparse_tune_key=key)
        updated = optax.tree_utils.tree_get(net_state.opt_state, "sparse_tune_updated")
        return net_state.replace(params=params, opt_state=opt_state, method_state={
            **ms,
            "phase": phase,
            "scoring": scoring & ~chosen,
            "scored_updates": scored,
            "score": score,
            "updated_fraction": jnp.where(boundary, 0.0, updated),
            "tunings": ms["tunings"] + chosen.astype(jnp.int32),
        })

    return Method(init=init, transform=transform)


ENTRY = MethodEntry(
    name="sparse_tune",
    kind="plasticity",
    description="MIST's sparse tuning at task boundaries: the top-sensitivity 5% of each trunk "
                "kernel trainable (0.9^k after k selections, trunk learning rate x0.01), the "
                "task's own parameters, biases and norms exempt, gradients kept with "
                "probability p (sequential schedules)",
    source="Zhang et al. 2025, MIST (arXiv 2505.19943; authors' code zhwhu/MIST)",
    build=sparse_tune,
    options=SparseTuneOptions,
    check=check_sparse_tune_options,
    check_run=check_sparse_tune_run,
    sequential_only=True,
    optimizer=sparse_tune_optimizer,
    experimental="scored by the RL loss's squared gradients in place of MIST's contrastive "
                 "mutual-information loss (RL has no labels); not yet in the 5-seed "
                 "minigrid-seq table",
)
