"""The checkpoint store on its own: integrity records, and who removes a killed save's
temporary folder."""

from __future__ import annotations

import jax.numpy as jnp
import pytest

from mtrl_sparse.checkpointing import Checkpointer, CheckpointMismatch, state_crc32

STATE = {"w": jnp.arange(6.0).reshape(2, 3), "key": jnp.array([1, 2], jnp.uint32)}


def test_a_saved_state_reads_back_with_its_metadata_and_the_integrity_record_stays_inside(
        tmp_path):
    store = Checkpointer(tmp_path / "ck", keep=2, run_id="abc", writer=True)
    store.save(10, STATE, {"env_steps": 10, "last_eval": {"eval/x": float("nan")}})
    state, meta = store.restore(10, STATE)
    assert state_crc32(state) == state_crc32(STATE)
    assert meta["env_steps"] == 10 and "integrity" not in meta
    store.close()


def test_a_checkpoint_of_another_run_is_refused(tmp_path):
    Checkpointer(tmp_path / "ck", keep=2, run_id="abc", writer=True).save(10, STATE, {})
    with pytest.raises(CheckpointMismatch, match="belongs to another run"):
        Checkpointer(tmp_path / "ck", keep=2, run_id="xyz").restore(10, STATE)
    Checkpointer(tmp_path / "ck", keep=2).restore(10, STATE)  # a run without an id: unchecked


def test_only_the_writer_removes_the_temporary_folder_of_a_killed_save(tmp_path):
    """A reader (eval beside a live run) must not remove what may be a save in progress."""
    partial = tmp_path / "ck" / "20.orbax-checkpoint-tmp-7"
    partial.mkdir(parents=True)
    Checkpointer(tmp_path / "ck", keep=2).close()
    assert partial.is_dir()
    Checkpointer(tmp_path / "ck", keep=2, writer=True).close()
    assert not partial.exists()


def test_the_state_crc_sees_one_flipped_bit():
    flipped = {**STATE, "w": STATE["w"].at[1, 2].set(jnp.nextafter(5.0, 6.0))}
    assert state_crc32(flipped) != state_crc32(STATE)
