"""The shape every sparsity or plasticity method has, and the registry entry that describes it.

Like an optax ``GradientTransformation``, a method is a ``NamedTuple`` of ``init`` and
``transform`` (see ``mtrl_sparse.agents.net_state.MaskMethod`` for their signatures). Each method
module exports its whole ``MethodEntry`` (name, kind, description, source, options and their
check, builder, what it asks of the agent builder, its run-level check);
``mtrl_sparse.methods.registry`` collects the entries, and the agents and training loops only ever
see the ``Method`` pair.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal, NamedTuple

import jax

from mtrl_sparse.agents.net_state import MethodContext, NetState
from mtrl_sparse.methods.topology import DISTRIBUTIONS, Distribution, LayerSlices

Kind = Literal["dense", "sparsity", "plasticity", "regularizer"]
KINDS: tuple[str, ...] = ("dense", "sparsity", "plasticity", "regularizer")

INTERVAL_SUFFIX = "every_updates"
"""Option fields whose name ends so are intervals in updates (scaled by ``interval_scale``)."""

SPARSITY_PARAMETER = ("--sparsity", "final fraction of maskable weights that are masked, in (0, 1)")
DISTRIBUTION_PARAMETER = ("--distribution",
                          f"per-layer sparsity distribution, one of {DISTRIBUTIONS}")


class Method(NamedTuple):
    """``init(params, maskable, key) -> (masks, method_state)``;
    ``transform(net_state, step, key, context) -> net_state``; a method that reads
    ``context.dense_grads`` says at which updates with ``dense_grads_due(net_state, step,
    context) -> bool array`` (sparse compute gives them only then; see ``MaskMethod``)."""

    init: Callable[[Any, Any, jax.Array], tuple[Any, Any]]
    transform: Callable[[NetState, jax.Array, jax.Array, MethodContext], NetState]
    dense_grads_due: Callable[[NetState, jax.Array, MethodContext], jax.Array] | None = None


class MethodError(ValueError):
    """A method name or method/sparsity combination that is not accepted (a usage error)."""


@dataclass(frozen=True)
class NetworkMethodSettings:
    """A network's resolved method configuration: what a builder receives.

    Attributes:
        name: the method name, possibly a composition ``a+b``.
        sparsity: the final target sparsity of the network.
        distribution: per-layer sparsity distribution.
        total_updates: updates of the network over the whole run (for schedules given as
            fractions of the run); None where no schedule needs it.
        interval_scale: multiplies every interval of the network's methods (the option fields
            named ``*every_updates``), for a network that makes far fewer updates than another
            (PPO's critic) or a run far shorter than the paper's; the scaled interval is rounded
            and at least 1.
        layer_slices: the network's leaves that stack several tasks' layers (its per-task heads
            computed as one kernel), which per-layer methods treat as those layers
            (``topology.LayerSlices``; set by the agent, which knows its network).
        phases: phases of the run's schedule: 1 for the multi-task schedule, the number of
            tasks for the sequential one (whose current phase reaches ``transform`` as
            ``MethodContext.phase``).
        compute_density: None to compute the masked layers densely; else the density at or
            below which a masked kernel computes with the sparse kernels at run time
            (``agents.sparse_linear``; 1.0: no run-time check).
        compute_crossover: sparse compute covers only the kernels whose target density (of
            ``sparsity`` and ``distribution``) is at most this; the others compute densely.
        task_leaves: the network's leaves whose entries belong to one task each (its per-task
            heads' kernels, biases and norms, a task encoder's rows), as ``LayerSlices``: task
            ``t`` owns slice ``t`` (set by the agent; ``topology.task_index``). Methods that
            treat a task's own parameters apart (sparse tuning, IBM) read it.
        batch_size: samples in one update of the network (PPO's actor minibatch, its critic's,
            SAC's batch), for methods whose windows are amounts of data; None where unknown.
    """

    name: str
    sparsity: float
    distribution: Distribution = "erk"
    total_updates: int | None = None
    interval_scale: float = 1.0
    layer_slices: LayerSlices = ()
    phases: int = 1
    compute_density: float | None = None
    compute_crossover: float = 1.0
    task_leaves: LayerSlices = ()
    batch_size: int | None = None

    def run_updates(self, method: str) -> int:
        """``total_updates``, or ``ValueError`` for a scheduled method built without it."""
        if self.total_updates is None or self.total_updates <= 0:
            raise ValueError(f"{method} schedules by fractions of the run and needs the run's "
                             f"total updates (> 0); got {self.total_updates}")
        return self.total_updates


def unchanged(
    net_state: NetState, step: jax.Array, key: jax.Array, context: MethodContext
) -> NetState:
    """The transform of methods without periodic events."""
    del step, key, context
    return net_state


def scale_intervals(options: Any, scale: float) -> Any:
    """``options`` (a method's options dataclass) with each ``*every_updates`` field multiplied by
    ``scale``, rounded, at least 1; unchanged for ``scale == 1``."""
    if scale == 1.0:
        return options
    return dataclasses.replace(options, **{
        f.name: max(1, round(getattr(options, f.name) * scale))
        for f in dataclasses.fields(options) if f.name.endswith(INTERVAL_SUFFIX)})


def _no_optimizer(options: Any) -> tuple[tuple, tuple]:
    return (), ()


def _no_check(options: Any) -> None:
    return None


def _no_run_check(settings: NetworkMethodSettings, options: Any, network: str) -> None:
    return None


@dataclass(frozen=True)
class MethodEntry:
    """One registered method: everything the framework knows about it.

    Attributes:
        name: what ``--method`` accepts (and the flag group ``--methods.NAME``).
        kind: ``sparsity`` methods draw masks and need a sparsity in (0, 1); the others need 0
            unless composed with a sparsity method.
        description: one line for ``mtrl-sparse methods``.
        source: the paper it comes from.
        build: (settings, options) -> Method; ``options`` are the network's options with its
            intervals already scaled, and already checked (builders do not check them again).
        options: the frozen dataclass of its hyperparameters (flags ``--methods.NAME.FIELD``;
            fields ending in ``INTERVAL_SUFFIX`` are intervals in updates), or None.
        check: options -> None; raises ``ValueError`` (one line) for options that cannot run.
        check_run: (settings, scaled options, network name) -> None; raises ``ValueError`` (one
            line) when the method would silently not do its job within the network's run (e.g.
            GMP not reaching its target before the last update).
        reparameterize: options -> ``(weights, maskable) -> (params, scales)``: the method trains
            the maskable weights as ``scales * params`` (``agents.net_state``), e.g. Sign-In;
            None: plain weights. At most one member of a composition reparameterises.
        noisy_scales: with ``reparameterize``, the scales are the method's stochastic gates: it
            trains them itself and draws the noise the training forward pass puts on them
            (``NetState.scale_noise``); the network's optimizer leaves them alone.
        task_weights: options -> ``(net_state, num_tasks) -> weights`` stacked over a leading
            task axis (task t's own sub-network at index t), for a method that isolates a
            sub-network per task; the function sees the member's own method state. The agent
            acts with those views under a sequential schedule (None: every task acts with the
            whole network).
        sequential_only: the method acts at task boundaries only, so it runs under a sequential
            schedule (``settings.phases`` > 1) and is refused elsewhere.
        layer_norm: the method asks the agent builder for LayerNorm in the network.
        optimizer: options -> (gradient transforms before Adam, update transforms after Adam).
        parameters: flags it reads besides its options, with their meaning.
        experimental: what is known to differ from the method as its paper and its authors'
            code define it (``mtrl-sparse methods`` labels the method experimental with it);
            empty when nothing is.
    """

    name: str
    kind: Kind
    description: str
    source: str
    build: Callable[[NetworkMethodSettings, Any], Method]
    options: type | None = None
    check: Callable[[Any], None] = _no_check
    check_run: Callable[[NetworkMethodSettings, Any, str], None] = _no_run_check
    reparameterize: Callable[[Any], Any] | None = None
    noisy_scales: bool = False
    task_weights: Callable[[Any], Callable[[NetState, int], Any]] | None = None
    sequential_only: bool = False
    layer_norm: bool = False
    optimizer: Callable[[Any], tuple[tuple, tuple]] = _no_optimizer
    parameters: tuple[tuple[str, str], ...] = ()
    experimental: str = ""

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"method {self.name!r}: kind {self.kind!r} is not one of {KINDS}")
        if not self.name.isidentifier() or "+" in self.name:
            raise ValueError(f"method name {self.name!r} must be a Python identifier (it names "
                             "a config field and a flag group)")
        if self.options is not None and not dataclasses.is_dataclass(self.options):
            raise ValueError(f"method {self.name!r}: options must be a dataclass")
