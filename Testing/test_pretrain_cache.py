"""Pre-training computed once and reused (training/pretrain_cache.py, ``pretrain_cache_iterations``).

The second run on the same images pre-trains nothing and starts fine-tuning from the stored student;
labelling one more of the same images keeps the entry; other images or other pre-training settings
make a new one; a pre-training run that was stopped resumes from its own checkpoint.
"""

from __future__ import annotations

import pytest
import torch

from ACTIONPlusPlusLib.config import preset
from ACTIONPlusPlusLib.data.phantoms import cardiac_phantom_dataset
from ACTIONPlusPlusLib.data.types import Case
from ACTIONPlusPlusLib.training import pretrain_cache
from ACTIONPlusPlusLib.training.checkpoint import load_checkpoint
from ACTIONPlusPlusLib.training.loop import train


@pytest.fixture(scope="module")
def cardiac():
    return cardiac_phantom_dataset(num_labeled=2, num_unlabeled=2, num_test=1, seed=3, num_slices=2, size=(32, 32))


def _cfg(tmp_path, **kw):
    settings = dict(patch_size=[32, 32], base_channels=4, local_window=16, local_stride=8, local_pool=4,
                    anco_queries=8, anco_negatives=16, saacl_anchors_per_class=8, saacl_queue_size=64,
                    budget_iterations=4, pretrain_cache_iterations=6, pretrain_cache_dir=str(tmp_path / "cache"),
                    device="cpu", log_every=2, export_bn_batches=1)
    return preset("acdc", **{**settings, **kw})


def _run(cfg, cardiac, out, labeled=None, unlabeled=None):
    events: list[dict] = []
    result = train(cfg, labeled if labeled is not None else cardiac.labeled,
                   unlabeled if unlabeled is not None else cardiac.unlabeled, out, callback=events.append)
    return result, events


def _phases(events):
    return [e["phase"] for e in events if e["event"] == "stage"]


def test_second_run_reuses_the_pretraining_and_fine_tunes_from_it(cardiac, tmp_path) -> None:
    cfg = _cfg(tmp_path)
    first, events = _run(cfg, cardiac, tmp_path / "a")
    assert _phases(events) == ["joint", "finetune"]  # the default: the joint phase throughout
    entries = list((tmp_path / "cache").glob("*.pt"))
    assert len(entries) == 1 and not list((tmp_path / "cache").glob("*.work"))
    assert load_checkpoint(entries[0])["student"]  # a readable entry with the student

    second, events = _run(cfg, cardiac, tmp_path / "b")
    assert _phases(events) == ["finetune"]  # no pre-training iteration ran
    assert [e["cached"] for e in events if e["event"] == "pretraining"] == [True]
    # the fine-tuning of both runs started from the same student: same seed, same weights at the end
    a = load_checkpoint(first.checkpoint_path)["student"]
    b = load_checkpoint(second.checkpoint_path)["student"]
    assert all(torch.equal(a[k], b[k]) for k in a)
    # that the student fine-tuning starts from is the cached one is checked weight by weight in the
    # encoder-transfer test below (a comparison of end points cannot tell: the phantom's few cached
    # iterations barely move the weights)


def test_encoder_transfer_takes_the_encoder_from_the_cache_and_a_fresh_decoder(cardiac, tmp_path) -> None:
    """``pretrain_transfer``: the default (encoder) takes only the contracting path from the cache entry,
    ``network`` the same entry whole."""
    _run(_cfg(tmp_path), cardiac, tmp_path / "made")  # makes the entry
    stored = load_checkpoint(next((tmp_path / "cache").glob("*.pt")))["student"]

    def start(out, **kw):  # the student fine-tuning starts from: stopped before its first step
        result = train(_cfg(tmp_path, **kw), cardiac.labeled, cardiac.unlabeled, tmp_path / out, should_stop=lambda: True)
        assert result.stopped
        return load_checkpoint(result.checkpoint_path)["student"]

    network, encoder, fresh = start("a", pretrain_transfer="network"), start("e"), start("c", pretrain_cache_iterations=0)
    assert len(list((tmp_path / "cache").glob("*.pt"))) == 1  # one entry serves both transfers
    enc = {k for k in stored if k.startswith(("inc.", "down."))}
    dec = {k for k in stored if k.startswith(("up.", "out."))}
    assert enc and dec and enc | dec == set(stored)
    assert all(torch.equal(network[k], stored[k]) for k in stored)  # every weight
    assert all(torch.equal(encoder[k], stored[k]) for k in enc)
    assert all(torch.equal(encoder[k], fresh[k]) for k in dec)
    assert not torch.equal(fresh["inc.block.0.weight"], stored["inc.block.0.weight"])  # pre-training moved it


@pytest.mark.parametrize("dim", [2, 3])
def test_every_network_names_its_encoder(dim) -> None:
    from ACTIONPlusPlusLib.models import build_network, encoder_state

    net = build_network(preset("acdc" if dim == 2 else "la", base_channels=2))
    state = net.state_dict()
    encoder = encoder_state(net, state)
    tops = {k.split(".", 1)[0] for k in state}
    assert set(net.ENCODER) <= tops  # no name that matches nothing
    assert encoder and "out.weight" not in encoder and len(encoder) < len(state)
    with pytest.raises(ValueError, match="pretrain_transfer"):
        preset("acdc", pretrain_transfer="decoder")


def test_the_key_follows_the_images_and_pretraining_settings_not_the_labels(cardiac, tmp_path) -> None:
    cfg = _cfg(tmp_path)
    key = pretrain_cache.cache_key(cfg, cardiac.labeled, cardiac.unlabeled)
    # one more of the same images labeled (annotate-train-predict): the same entry
    newly = Case(cardiac.unlabeled[0].id, cardiac.unlabeled[0].image, cardiac.labeled[0].label, cardiac.unlabeled[0].spacing)
    assert pretrain_cache.cache_key(cfg, [*cardiac.labeled, newly], cardiac.unlabeled[1:]) == key
    assert pretrain_cache.cache_key(cfg, cardiac.labeled, list(reversed(cardiac.unlabeled))) == key
    # fine-tuning settings do not shape pre-training
    assert pretrain_cache.cache_key(cfg.replace(weight_anco=0.5, budget_iterations=9), cardiac.labeled, cardiac.unlabeled) == key
    # pre-training settings, the seed and other images do
    for other in (cfg.replace(weight_local=0.5), cfg.replace(seed=2), cfg.replace(pretrain_cache_iterations=8),
                  cfg.replace(patch_size=[16, 16])):
        assert pretrain_cache.cache_key(other, cardiac.labeled, cardiac.unlabeled) != key
    assert pretrain_cache.cache_key(cfg, cardiac.labeled, cardiac.unlabeled[:1]) != key


def test_a_stopped_pretraining_resumes_from_its_own_checkpoint(cardiac, tmp_path) -> None:
    cfg = _cfg(tmp_path)
    calls = {"n": 0}

    def stop_after_four() -> bool:
        calls["n"] += 1
        return calls["n"] > 4

    result = train(cfg, cardiac.labeled, cardiac.unlabeled, tmp_path / "a", should_stop=stop_after_four)
    assert result.stopped and result.model_path is None
    work = list((tmp_path / "cache").glob("*.work"))
    assert len(work) == 1 and (work[0] / "checkpoint.pt").is_file()
    assert not list((tmp_path / "cache").glob("*.pt"))

    events: list[dict] = []
    train(cfg, cardiac.labeled, cardiac.unlabeled, tmp_path / "b", callback=events.append)
    started = [e for e in events if e["event"] == "pretraining"]
    assert started and started[0]["resumed"] is True
    progress = [e for e in events if e["event"] == "progress" and e["stage"] == "pretrain"]
    assert progress and progress[0]["overall_iteration"] > 4  # continued, not restarted
    assert len(list((tmp_path / "cache").glob("*.pt"))) == 1


def test_a_damaged_entry_is_replaced_not_used(cardiac, tmp_path) -> None:
    cfg = _cfg(tmp_path)
    _run(cfg, cardiac, tmp_path / "a")
    entry = next((tmp_path / "cache").glob("*.pt"))
    entry.write_bytes(entry.read_bytes()[:200])  # truncated
    _, events = _run(cfg, cardiac, tmp_path / "b")
    assert any(e["event"] == "warning" and "unusable" in e["message"] for e in events)
    assert _phases(events) == ["joint", "finetune"]
    load_checkpoint(entry)  # rewritten whole


def test_the_panel_says_whether_pretraining_is_reused_or_made() -> None:
    from ACTIONPlusPlusLib.slicer_bridge.panel.run_progress import ProgressTracker

    tracker = ProgressTracker()
    line = tracker.handle({"event": "pretraining", "cached": True, "path": "/c/acdc-1.pt", "iterations": 300})
    assert "cached pre-training (300 iterations)" in line and "/c/acdc-1.pt" in line
    line = tracker.handle({"event": "pretraining", "cached": False, "path": "/c/acdc-1.pt", "iterations": 300,
                           "resumed": True})
    assert "resuming" in tracker.status and "later runs" in line


def test_automatic_length_is_the_papers_ratio_of_pretraining_to_fine_tuning() -> None:
    from ACTIONPlusPlusLib.budget import cached_pretraining_iterations

    acdc = preset("acdc", pretrain_cache_iterations=-1)
    assert cached_pretraining_iterations(acdc.replace(budget_iterations=600)) == 300  # 10K : 20K
    lengths = acdc.replace(budget_iterations=600).phase_lengths()
    assert (lengths.warmup, lengths.joint, lengths.finetune) == (0, 0, 600)  # the whole budget fine-tunes
    assert cached_pretraining_iterations(acdc) == 10000  # the paper's explicit counts, pre-trained once
    la = preset("la", pretrain_cache_iterations=-1, budget_iterations=400)
    assert cached_pretraining_iterations(la) == 133  # 5K : 15K
    assert cached_pretraining_iterations(acdc.replace(budget_iterations=600, budget_warmup_fraction=0.0,
                                                      budget_joint_fraction=0.0)) == 0
    assert cached_pretraining_iterations(acdc.replace(pretrain_cache_iterations=0, budget_iterations=600)) == 0
    # the entry's key holds the resolved length: automatic and explicit 300 are the same pre-training
    images = cardiac_phantom_dataset(num_labeled=1, num_unlabeled=1, seed=1, num_slices=1, size=(32, 32))
    auto = acdc.replace(budget_iterations=600)
    assert pretrain_cache.cache_key(auto, images.labeled, images.unlabeled) == \
        pretrain_cache.cache_key(auto.replace(pretrain_cache_iterations=300, budget_iterations=50),
                                 images.labeled, images.unlabeled)
    with pytest.raises(ValueError):
        preset("acdc", pretrain_cache_iterations=-2)


def test_joint_share_lays_out_the_cached_pretraining_and_keys_its_entry(cardiac, tmp_path) -> None:
    """``pretrain_cache_joint_share`` splits the cached iterations between the warm-up (no labels) and
    the joint phase; 0 pre-trains without labels, and each split is its own entry."""
    for share, expected in ((0.5, (3, 3)), (0.0, (6, 0)), (1.0, (0, 6)), (0.25, (4, 2))):
        run = pretrain_cache.pretraining_config(_cfg(tmp_path, pretrain_cache_joint_share=share))
        assert (run.pretrain_warmup_iterations, run.pretrain_joint_iterations) == expected
    run = pretrain_cache.pretraining_config(_cfg(tmp_path, pretrain_cache_iterations=10, pretrain_cache_joint_share=0.9))
    assert (run.pretrain_warmup_iterations, run.pretrain_joint_iterations) == (1, 9)  # not 0.999... -> 0
    self_supervised = _cfg(tmp_path, pretrain_cache_joint_share=0.0)
    _, events = _run(self_supervised, cardiac, tmp_path / "a")
    assert _phases(events) == ["warmup", "finetune"]  # the cached run had no joint phase
    assert [e["cached"] for e in events if e["event"] == "pretraining"] == [False]
    assert len(list((tmp_path / "cache").glob("*.pt"))) == 1
    _, events = _run(_cfg(tmp_path, pretrain_cache_joint_share=0.5), cardiac, tmp_path / "b")  # another entry
    assert _phases(events) == ["warmup", "joint", "finetune"]
    assert len(list((tmp_path / "cache").glob("*.pt"))) == 2
    _, events = _run(_cfg(tmp_path), cardiac, tmp_path / "c")  # the default, the joint phase throughout: a third
    assert _phases(events) == ["joint", "finetune"]
    assert len(list((tmp_path / "cache").glob("*.pt"))) == 3
    with pytest.raises(ValueError, match="pretrain_cache_joint_share"):
        preset("acdc", pretrain_cache_joint_share=1.5)
