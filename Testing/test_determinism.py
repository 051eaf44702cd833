"""Training on the CPU is reproducible at more than one thread: the same seed gives the same weights.

The representation head reads the features of a few thousand sampled pixels (and the 2^dim corners
around each) with an index whose plain backward, ``index_put_(accumulate=True)``, adds with atomics
when torch uses more than one thread: repeated pixels were summed in a different order on every run,
and two runs of the demo with the same seed ended 0.3 Dice apart.  ``heads._GatherColumns`` accumulates
in index order instead.
"""

from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path

import pytest
import torch

from ACTIONPlusPlusLib.config import preset
from ACTIONPlusPlusLib.data.phantoms import cardiac_phantom_dataset
from ACTIONPlusPlusLib.models.heads import _read_taps, pixel_taps
from ACTIONPlusPlusLib.training.loop import Trainer


@contextmanager
def threads(n: int):
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


# (N, C, *spatial) of a coarse feature map, the full-resolution size its taps come from, the layout
MAPS = [((8, 64, 16, 16), (64, 64), torch.contiguous_format),
        ((8, 64, 16, 16), (64, 64), torch.channels_last),
        ((2, 32, 12, 12, 8), (48, 48, 32), torch.contiguous_format)]


@pytest.mark.parametrize("shape,full,layout", MAPS, ids=["2d", "2d-channels-last", "3d"])
def test_tap_gradient_is_bitwise_the_same_at_one_and_two_threads(shape, full, layout) -> None:
    g = torch.Generator().manual_seed(0)
    base = torch.randn(shape, generator=g).contiguous(memory_format=layout)
    # 2,048 pixels drawn with replacement: many share a corner, so the gradient sums repeated taps
    # (131,072 gathered values: above the size where torch's index_put_ goes parallel)
    idx = torch.randint(0, shape[0] * int(torch.tensor(full).prod()), (2048,), generator=g)
    tap = pixel_taps([tuple(shape[2:]), full], idx)[0]
    weights = torch.randn(2048, shape[1], generator=g)

    def gradient(index=None) -> torch.Tensor:
        f = base.clone().requires_grad_()
        if index is None:
            rows = _read_taps(f, tap)
        else:  # the plain index, as the code read the taps before
            values = f.flatten(2)[tap.image, :, tap.position] * tap.weight.unsqueeze(1)
            rows = values.view(tap.corners, -1, shape[1]).sum(dim=0)
        (rows * weights).sum().backward()
        return f.grad

    with threads(1):
        reference = gradient()
        plain = gradient(index=True)
    assert torch.equal(reference, plain)  # one thread: the plain index sums in the same order
    with threads(2):
        for _ in range(3):
            got = gradient()
            assert torch.equal(got, reference)
    assert got.is_contiguous(memory_format=layout)  # the gradient keeps the map's layout
    assert reference.abs().sum() > 0


def test_fine_tuning_steps_at_two_threads_give_the_same_weights(tmp_path: Path) -> None:
    """Two trainers with the same seed, three real fine-tuning steps each at two threads (the demo's
    sizes, where the taps' backward is large enough for torch to split it), end bitwise equal."""
    data = cardiac_phantom_dataset(num_labeled=2, num_unlabeled=4, num_test=1, seed=3, num_slices=4, size=(64, 64))
    cfg = preset("acdc", patch_size=[64, 64], budget_iterations=48, anco_queries=64, anco_negatives=128,
                 saacl_anchors_per_class=64, saacl_queue_size=2048, device="cpu", checkpoint_every=1000)

    def weights(out: Path) -> list[torch.Tensor]:
        trainer = Trainer(cfg, data.labeled, data.unlabeled, out)
        trainer.prepare()
        phase = next(p for p in trainer.phases if p.iterations)
        assert phase.name == "finetune"
        trainer._begin_phase(phase)
        for _ in range(3):
            trainer.step_once(phase)
            trainer.iteration += 1
        return [t.detach().clone() for t in (*trainer.student.state_dict().values(), *trainer.ft.state_dict().values())]

    with threads(2):
        first, second = weights(tmp_path / "a"), weights(tmp_path / "b")
    assert len(first) == len(second) > 0
    assert all(torch.equal(a, b) for a, b in zip(first, second))
