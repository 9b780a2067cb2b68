"""Checkpoints with orbax in WORKDIR/checkpoints: the training state, the best parameters so far, and a JSON record.

orbax writes each checkpoint to a temporary directory and renames it when complete, so a run
killed mid-save leaves the previous checkpoints intact; only the last `keep` are kept.
"""

from __future__ import annotations

import os

import orbax.checkpoint as ocp


class Checkpoints:
    def __init__(self, directory: str, keep: int):
        self.directory = os.path.abspath(directory)
        options = ocp.CheckpointManagerOptions(max_to_keep=keep, create=True)
        self.manager = ocp.CheckpointManager(
            self.directory, options=options, item_names=("state", "best", "record")
        )

    def latest_step(self):
        return self.manager.latest_step()

    def save(self, step: int, state, best_params, record: dict) -> None:
        """Save and wait until it is on disk: a signal or a crash right after loses nothing."""
        if self.manager.latest_step() == step:
            return
        args = ocp.args.Composite(
            state=ocp.args.StandardSave(state),
            best=ocp.args.StandardSave(best_params),
            record=ocp.args.JsonSave(record),
        )
        self.manager.save(step, args=args)
        self.manager.wait_until_finished()

    def restore(self, state_like, best_like, step: int | None = None):
        """(state, best params, record) of `step` (default: the latest), shaped like the given templates."""
        step = self.manager.latest_step() if step is None else step
        args = ocp.args.Composite(
            state=ocp.args.StandardRestore(state_like),
            best=ocp.args.StandardRestore(best_like),
            record=ocp.args.JsonRestore(),
        )
        restored = self.manager.restore(step, args=args)
        return restored.state, restored.best, restored.record

    def close(self) -> None:
        self.manager.close()
