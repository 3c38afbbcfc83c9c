"""Small random parameter trees for the method tests: MLPs given by their kernel shapes."""

from __future__ import annotations

import jax


def random_mlp_params(key: jax.Array, shapes: dict[str, tuple[int, int]]) -> dict:
    """``{"params": {layer: {"kernel": (in, out), "bias": (out,)}}}`` of standard normals, one
    layer per entry of ``shapes``."""
    keys = iter(jax.random.split(key, 2 * len(shapes)))
    return {"params": {name: {"kernel": jax.random.normal(next(keys), shape),
                              "bias": jax.random.normal(next(keys), shape[1:])}
                       for name, shape in shapes.items()}}
