"""The masks' statistics (``mtrl_sparse.mask_stats``), the report's Masks section and the
``mtrl-sparse masks`` pictures, on masks whose numbers are known, and on real runs the behaviour
the methods are known for: GMP's masks only shrink, SET's move at a constant density."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import jax
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from mtrl_sparse.checkpointing import Checkpointer
from mtrl_sparse.cli import main
from mtrl_sparse.mask_images import mask_picture, scale_for
from mtrl_sparse.mask_stats import masks_row, pack_masks, state_masks, unpack_masks
from mtrl_sparse.report import write_report
from mtrl_sparse.run_dir import METRICS_FILE, read_metrics, read_run_id
from mtrl_sparse.run_loop import restored_checkpoint
from support.cli import assert_usage_error, run_cli
from support.run_checks import MINIGRID_CHECKPOINTED, deterministic_rows

SLICES = (("heads/kernel", -1, 3),)


def known_masks() -> tuple[dict, dict]:
    """(before, now) masks of one network with a trunk kernel and 3 tasks' stacked heads."""
    trunk = np.zeros((4, 6), bool)
    trunk[:2] = True  # density 0.5
    heads = np.zeros((5, 3 * 2), bool)  # 5 trunk features into 3 tasks x 2 outputs
    heads[0, 0] = heads[1, 1] = True  # task 0 reads features {0, 1}
    heads[1, 2] = heads[2, 3] = True  # task 1 reads {1, 2}; task 2 reads none
    before = heads.copy()
    before[0, 0], before[4, 5] = False, True  # heads[0, 0] grew since, heads[4, 5] was dropped
    return ({"actor": {"trunk/kernel": trunk, "heads/kernel": before}},
            {"actor": {"trunk/kernel": trunk, "heads/kernel": heads}})


def test_known_masks_give_known_statistics():
    before, now = known_masks()
    row = masks_row(now, before, SLICES)
    assert row["masks/actor/trunk/kernel/density"] == 0.5
    assert row["masks/actor/trunk/kernel/changed"] == 0.0
    assert row["masks/actor/heads/kernel/density"] == pytest.approx(4 / 30)
    assert row["masks/actor/heads/kernel/density_per_task"] == pytest.approx([0.2, 0.2, 0.0])
    assert row["masks/actor/heads/kernel/changed"] == 0.25  # 1 of its 4 active weights is new
    assert row["masks/actor/heads/kernel/features_per_task"] == [2, 2, 0]
    # pairs (0, 1): {1} of {0, 1, 2}; (0, 2) and (1, 2): nothing shared
    assert row["masks/actor/heads/kernel/features_jaccard_pairs"] == pytest.approx([1 / 3, 0, 0])
    assert row["masks/actor/heads/kernel/features_jaccard"] == pytest.approx(1 / 9)
    assert row["masks/actor/density"] == pytest.approx(16 / 54)
    assert row["masks/actor/changed"] == pytest.approx(1 / 16)
    first = masks_row(now, None, SLICES)
    assert not any(key.endswith("/changed") for key in first), "changed without a previous"


def test_stacked_layers_read_along_their_inputs_only_when_outputs_are_stacked():
    # a per-task output layer stacked along its inputs (the CNN heads' (T x H, A) kernel): its
    # inputs are each task's own hidden units, different parameters: no feature overlap
    mask = np.ones((3 * 4, 7), bool)
    row = masks_row({"critic": {"task_heads/heads/kernel": mask}}, None,
                    (("task_heads/heads/kernel", 0, 3),))
    assert row["masks/critic/task_heads/heads/kernel/density_per_task"] == [1.0, 1.0, 1.0]
    assert not any("features" in key for key in row)


@given(arrays(bool, st.tuples(st.integers(1, 5), st.integers(1, 9), st.integers(1, 3))))
def test_packed_masks_read_back_exactly(mask):
    back = unpack_masks(json.loads(json.dumps(pack_masks({"actor": {"k": mask}}))))
    np.testing.assert_array_equal(back["actor"]["k"], mask)


def test_pictures_lay_out_convolution_taps_and_task_slices_as_blocks():
    rng = np.random.default_rng(0)
    conv = rng.random((2, 2, 3, 4)) < 0.5
    picture = mask_picture("trunk/conv_0/kernel", conv, ())
    assert picture.shape == (2 * 3 + 1, 2 * 4 + 1)
    for i in range(2):
        for j in range(2):
            block = picture[i * 4:i * 4 + 3, j * 5:j * 5 + 4]
            np.testing.assert_array_equal(block == 0, conv[i, j])
    heads = rng.random((5, 3 * 2)) < 0.5
    picture = mask_picture("heads/kernel", heads, SLICES)
    assert picture.shape == (5, 3 * 2 + 2)
    for t in range(3):
        np.testing.assert_array_equal(picture[:, t * 3:t * 3 + 2] == 0, heads[:, 2 * t:2 * t + 2])


# ----------------------------------------------------------------------------- real runs


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, Path]:
    """minigrid-smoke runs of GMP and SET at 90% and a dense one, a checkpoint per rollout."""
    root = tmp_path_factory.mktemp("masks")
    made = {}
    for name, method in (("gmp", ["--method", "gmp", "--sparsity", "0.9"]),
                         ("set", ["--method", "set", "--sparsity", "0.9"]),
                         ("dense", [])):
        made[name] = root / name
        assert main(["train", *MINIGRID_CHECKPOINTED, *method, "--run-dir",
                     str(made[name])]) == 0
    return made


def mask_fields(run: Path, suffix: str) -> list[tuple[int, str, float]]:
    """(step, name, value) of the run's ``masks/...`` scalars ending in ``suffix``."""
    return [(r["step"], k, v) for r in read_metrics(run) for k, v in r.items()
            if k.startswith("masks/") and k.endswith(suffix) and not isinstance(v, list)]


@pytest.mark.slow
def test_gmp_masks_start_dense_and_only_shrink_and_set_moves_at_constant_density(runs):
    gmp_density = mask_fields(runs["gmp"], "/density")
    assert {step for step, _, _ in gmp_density} == {0, 400, 600}
    assert all(value == 1.0 for step, _, value in gmp_density if step == 0)
    assert [v for s, k, v in gmp_density if k == "masks/actor/density" and s == 600][0] == \
        pytest.approx(0.1, abs=0.01)
    assert all(value == 0.0 for _, _, value in mask_fields(runs["gmp"], "/changed"))

    set_density = {(s, k): v for s, k, v in mask_fields(runs["set"], "/density")}
    for (step, key), value in set_density.items():
        assert value == pytest.approx(set_density[(0, key)], abs=1e-9), (step, key)
    moved = [v for s, k, v in mask_fields(runs["set"], "/changed") if k.count("/") == 2]
    assert len(moved) == 4 and all(0.05 < v < 0.6 for v in moved), moved
    assert not mask_fields(runs["dense"], "/density"), "a dense run has no masks"


@pytest.mark.slow
def test_a_resumed_run_measures_the_masks_as_an_uninterrupted_one(runs, tmp_path):
    copy = tmp_path / "set"
    shutil.copytree(runs["set"], copy)
    for step in (400, 600):  # back to the checkpoint at 200, before any evaluation
        shutil.rmtree(copy / "checkpoints" / str(step))
    assert main(["train", "--resume", "--run-dir", str(copy)]) == 0
    assert deterministic_rows(copy) == deterministic_rows(runs["set"])
    assert mask_fields(copy, "/changed"), "the resumed run measured no movement"


@pytest.mark.slow
def test_report_gives_the_known_masks_numbers(runs, tmp_path, capsys):
    before, now = known_masks()
    run = tmp_path / "runs" / "set"
    shutil.copytree(runs["set"], run)
    shutil.copytree(runs["dense"], tmp_path / "runs" / "dense")
    rows = [{k: v for k, v in r.items() if not k.startswith("masks/")}
            for r in read_metrics(run)]
    rows = [r for r in rows if set(r) != {"step"}]
    rows.insert(0, {"step": 0, **masks_row(before, None, SLICES)})
    last_eval = max(i for i, r in enumerate(rows) if "eval/normalized_return" in r)
    rows[last_eval].update(masks_row(now, before, SLICES))
    (run / METRICS_FILE).write_text("".join(json.dumps(r) + "\n" for r in rows))

    markdown = write_report([tmp_path / "runs"], tmp_path / "report", reps=200)
    line = next(line for line in markdown.splitlines() if line.startswith("| set 0.9 | actor"))
    cells = [cell.strip() for cell in line.strip("|").split("|")]
    assert cells[2:] == [f"{16 / 54:.4f}", f"{1 / 16:.4f}", "heads/kernel", f"{4 / 3:.1f}",
                         f"{1 / 9:.3f}"]
    for stem in ("mask_density_actor", "mask_changed", "head_features", "head_features_final"):
        assert (tmp_path / "report" / f"{stem}.png").is_file(), stem


@pytest.mark.slow
def test_masks_command_draws_a_hand_built_checkpoint(runs, tmp_path, capsys):
    run = tmp_path / "set"
    shutil.copytree(runs["set"], run)
    with restored_checkpoint(run, None) as (step, state, _):
        rng = np.random.default_rng(3)
        known = jax.tree.map(lambda m: rng.random(m.shape) < 0.3, state.actor.masks)
        state = state.replace(actor=state.actor.replace(masks=known))
    checkpointer = Checkpointer(run / "checkpoints", 3, read_run_id(run), writer=True)
    checkpointer.save(1000, state, {"env_steps": 1000})
    checkpointer.close()

    code, out, err = run_cli(capsys, ["masks", "--run-dir", str(run), "--step", "1000",
                                      "--out", str(tmp_path / "pictures")])
    assert code == 0, err
    from PIL import Image

    expected = state_masks(state)["actor"]
    conv = expected["trunk/conv_1/kernel"]
    image = np.asarray(Image.open(tmp_path / "pictures" / "actor__trunk.conv_1.kernel.png"))
    picture = mask_picture("trunk/conv_1/kernel", conv, ())
    scale = scale_for(picture)
    np.testing.assert_array_equal(image[::scale, ::scale], picture)
    kh, kw, cin, cout = conv.shape
    np.testing.assert_array_equal(image[::scale, ::scale][:cin, :cout] == 0, conv[0, 0])
    assert f"density {conv.mean():.4f}" in out
    pictures = sorted(p.name for p in (tmp_path / "pictures").iterdir())
    assert len(pictures) == sum(len(layers) for layers in state_masks(state).values())


@pytest.mark.slow
def test_masks_command_refuses_bad_input_in_one_line_writing_nothing(runs, tmp_path, capsys):
    empty = tmp_path / "empty"
    shutil.copytree(runs["gmp"], empty)
    shutil.rmtree(empty / "checkpoints")
    cases = [(["--run-dir", str(tmp_path / "nowhere")], "holds no run"),
             (["--run-dir", str(empty)], "holds no checkpoint"),
             (["--run-dir", str(runs["gmp"]), "--step", "7"], "no checkpoint at step 7"),
             (["--run-dir", str(runs["dense"])], "dense"),
             (["--run-dir", str(runs["gmp"]), "--colour", "red"], "--colour")]
    for args, needle in cases:
        out = tmp_path / "out"
        assert_usage_error(capsys, ["masks", *args, "--out", str(out)], needle)
        assert not out.exists(), args
    taken = tmp_path / "taken"
    assert run_cli(capsys, ["masks", "--run-dir", str(runs["gmp"]), "--out", str(taken)])[0] == 0
    before = {p.name: p.read_bytes() for p in taken.iterdir()}
    assert_usage_error(capsys, ["masks", "--run-dir", str(runs["gmp"]), "--out", str(taken)],
                       "holds mask pictures already")
    assert {p.name: p.read_bytes() for p in taken.iterdir()} == before
