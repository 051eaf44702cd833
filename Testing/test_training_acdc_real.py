"""A short ACTION++ run on real ACDC slices: the minority classes keep their share of the pseudo-labels
(issue 9).  As specified, the teacher's pseudo-labels held ~0 % RV and Myo after ~100 iterations and
every step taught that they are background; the class-aware pseudo-labels must keep them."""

from __future__ import annotations

from ACTIONPlusPlusLib.config import preset
from ACTIONPlusPlusLib.data import load_dataset
from ACTIONPlusPlusLib.training import train


def test_rv_and_myo_keep_a_share_of_the_pseudo_labels(acdc_root, tmp_path) -> None:
    cfg = preset("acdc", patch_size=[64, 64], budget_iterations=80, local_window=16, local_stride=8, local_pool=8,
                 anco_queries=32, anco_negatives=64, saacl_anchors_per_class=32, saacl_queue_size=1024,
                 device="cpu", log_every=10, checkpoint_every=10**6)
    data = load_dataset(acdc_root, cfg, labeled=3, splits=("train",))
    events: list[dict] = []
    train(cfg, data.labeled, data.unlabeled[::8], tmp_path, callback=events.append)
    reports = [e["pseudo_labels"] for e in events if e.get("event") == "progress" and "pseudo_labels" in e]
    assert len(reports) == 8
    labeled = reports[-1]["labeled_fraction"]
    assert labeled["RV"] > 0.005 and labeled["Myo"] > 0.005
    for report in reports[len(reports) // 2 :]:  # once the alignment has had a few steps
        for name in ("RV", "Myo", "LV"):
            assert report["pseudo_fraction"][name] > 0.1 * labeled[name], (name, report)
