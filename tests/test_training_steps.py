"""Randomness inside one optimiser step: generators the task shares per step (the MAE's mask)
restart for every micro-batch; the others (detection's rotation/scale draws) run on, so
micro-batches of one step never repeat each other's augmentation."""

from __future__ import annotations

import torch

from model.training.steps import accumulate_task_gradients


def _draws(shared_names: tuple[str, ...]) -> tuple[list[float], list[float]]:
    weight = torch.nn.Parameter(torch.ones(()))
    mask, rot = torch.Generator().manual_seed(1), torch.Generator().manual_seed(2)
    seen = {"mask": [], "rot": []}

    def losses(model, batch):
        seen["mask"].append(float(torch.rand((), generator=mask)))
        seen["rot"].append(float(torch.rand((), generator=rot)))
        return {"loss": weight * batch["x"]}

    generators = {"mask": mask, "rot": rot}
    shared = {name: generators[name] for name in shared_names}
    accumulate_task_gradients(torch.nn.Module(), [{"x": 1.0}] * 3, losses, ("loss",),
                              torch.device("cpu"), shared=shared)  # fmt: skip
    return seen["mask"], seen["rot"]


def test_shared_generators_repeat_per_micro_batch_and_the_others_run_on():
    mask, rot = _draws(("mask",))
    assert mask[0] == mask[1] == mask[2]  # one mask for the whole step
    assert len(set(rot)) == 3  # a fresh rotation/scale draw for every micro-batch
    again, _ = _draws(("mask",))
    assert again == mask
    unshared, _ = _draws(())
    assert len(set(unshared)) == 3
