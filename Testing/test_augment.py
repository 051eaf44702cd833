"""On-device augmentations: labels stay aligned with images, mixing masks have the spec's sizes."""

from __future__ import annotations

import pytest
import torch

from ACTIONPlusPlusLib.config import preset
from ACTIONPlusPlusLib.training import augment


def _disc_batch(n: int = 16, size: int = 32):
    yy, xx = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    label = ((yy - 10) ** 2 + (xx - 20) ** 2 < 36).long() + 2 * ((yy - 22) ** 2 + (xx - 9) ** 2 < 25).long()
    label = label.expand(n, size, size).clone()
    image = (0.2 + 0.3 * label.float() + 0.01 * torch.randn(n, size, size, generator=torch.Generator().manual_seed(0)))[:, None]
    return image, label


def test_geometric_2d_keeps_labels_on_their_pixels():
    image, label = _disc_batch()
    out_img, out_lab = augment.geometric_2d(image, label, torch.Generator().manual_seed(1))
    assert not torch.equal(out_lab, label)  # something moved
    for c, expected in ((1, 0.5), (2, 0.8)):
        inside = out_img[:, 0][out_lab == c]
        assert abs(inside.mean().item() - expected) < 0.05  # class c still sits on class-c intensities


def test_geometric_3d_rot90_flip_keeps_alignment():
    image = torch.randn(2, 1, 8, 8, 4)
    label = (image[:, 0] > 0).long()
    out_img, out_lab = augment.geometric_3d(image, label, torch.Generator().manual_seed(0))
    assert torch.equal(out_lab, (out_img[:, 0] > 0).long())
    assert out_img.shape == image.shape


def test_cutmix_masks_cover_about_half():
    masks = augment.cutmix_masks(64, (64, 64), torch.Generator().manual_seed(0), torch.device("cpu"))
    kept = 1 - masks.flatten(1).mean(dim=1)  # box fraction
    assert ((kept > 0.45) & (kept < 0.55)).all()


def test_3d_boxes_span_the_configured_share_of_the_depth():
    """3D boxes are one contiguous run of slices whose length is ``depth_fraction`` of the depth (the
    code's 20 of 80 by default), each slice of it holding the same in-plane box."""
    for depth, fraction, expected in ((80, 0.25, 20), (48, 0.25, 12), (6, 0.25, 1), (48, 1.0, 48), (48, 0.5, 24)):
        boxes = 1 - augment.cutmix_masks(8, (16, 16, depth), torch.Generator().manual_seed(1), torch.device("cpu"),
                                         depth_fraction=fraction)
        for box in boxes.bool():
            slices = box.flatten(0, 1).any(dim=0).nonzero().flatten()
            assert len(slices) == expected
            assert int(slices[-1] - slices[0]) == expected - 1  # contiguous
            assert all(torch.equal(box[..., k], box[..., slices[0]]) for k in slices)


@pytest.mark.parametrize("fraction", [0, -0.5, 1.5])
def test_a_box_depth_outside_zero_to_one_is_refused_by_name(fraction):
    with pytest.raises(ValueError, match="cutmix_depth_fraction"):
        preset("la", cutmix_depth_fraction=fraction)


def test_classmix_keeps_half_of_the_present_classes():
    pseudo = torch.zeros(3, 8, 8, dtype=torch.long)
    pseudo[:, :4, :4], pseudo[:, 4:, 4:], pseudo[:, :4, 4:] = 1, 2, 3  # 4 classes present
    masks = augment.classmix_masks(pseudo, 4, torch.Generator().manual_seed(0))
    for i in range(3):
        kept = torch.unique(pseudo[i][masks[i].bool()])
        assert len(kept) == 2  # floor(4 / 2)
        assert torch.equal(masks[i].bool(), torch.isin(pseudo[i], kept))


def test_classmix_with_one_foreground_class_pastes_along_the_pseudo_label():
    """Why LA mixes with a box (docs/DESIGN.md): with two classes ClassMix keeps exactly one of them, so the mask is
    the pseudo-label or its complement and every edge of the pasted region is a pseudo-label boundary;
    the box (cutmix) does not depend on the pseudo-labels at all."""
    gen = torch.Generator().manual_seed(0)
    pseudo = (torch.rand(16, 12, 12, 8, generator=gen) > 0.7).long()
    masks = augment.classmix_masks(pseudo, 2, gen).bool()
    for m, p in zip(masks, pseudo.bool()):
        assert torch.equal(m, p) or torch.equal(m, ~p)
    boxes = augment.cutmix_masks(16, (12, 12, 8), gen, torch.device("cpu")).bool()
    assert not any(torch.equal(m, p) or torch.equal(m, ~p) for m, p in zip(boxes, pseudo.bool()))


def test_mix_takes_the_partner_outside_the_mask():
    image = torch.arange(3.0).view(3, 1, 1, 1).expand(3, 1, 2, 2).clone()
    pseudo = torch.arange(3).view(3, 1, 1).expand(3, 2, 2).clone()
    conf = torch.full((3, 2, 2), 0.5)
    masks = torch.zeros(3, 2, 2)
    masks[:, 0] = 1
    img, lab, _ = augment.mix(image, pseudo, conf, masks)
    assert torch.equal(img[:, 0, 0, 0], torch.tensor([0.0, 1.0, 2.0]))
    assert torch.equal(img[:, 0, 1, 0], torch.tensor([1.0, 2.0, 0.0]))  # partner (i + 1) mod N
    assert torch.equal(lab[:, 1, 0], torch.tensor([1, 2, 0]))


def test_blur_and_jitter_are_identity_with_probability_zero_and_change_otherwise():
    image, _ = _disc_batch(4)
    gen = torch.Generator().manual_seed(0)
    assert torch.equal(augment.gaussian_blur(image, gen, p=0.0), image)
    blurred = augment.gaussian_blur(image, gen, p=1.0)
    assert blurred.std() < image.std()
    assert torch.allclose(blurred.mean(dim=(2, 3)), image.mean(dim=(2, 3)), atol=0.02)  # replicate padding, normalised kernel
    assert torch.allclose(augment.jitter(image, 0.2, gen, p=0.0), image, atol=1e-6)
    jittered = augment.jitter(image, 0.2, gen, p=1.0)
    assert not torch.allclose(jittered, image, atol=1e-3)


@pytest.mark.parametrize("spatial", [(16, 16), (16, 16, 8)])
def test_mix_share_leaves_the_tail_of_the_batch_unmixed(spatial):
    gen = torch.Generator().manual_seed(0)
    masks = augment.cutmix_masks(4, spatial, gen, torch.device("cpu"))
    assert (masks == 0).any(dim=tuple(range(1, masks.dim()))).all()  # every sample has a box
    half = augment.unmixed_tail(masks, 0.5)
    assert torch.equal(half[:2], masks[:2])  # the first round(0.5 * 4) keep their boxes
    assert bool((half[2:] == 1).all())  # the others are kept whole: nothing pasted
    assert augment.unmixed_tail(masks, 1.0) is masks  # the default changes nothing
    assert bool((augment.unmixed_tail(masks, 0.0) == 1).all())
    # with a labeled partner, the unmixed samples take no labeled pixel
    image, labels = torch.rand(4, 1, *spatial), torch.zeros(4, *spatial, dtype=torch.long)
    conf = torch.full((4, *spatial), 0.5)
    partner, partner_labels = torch.rand(4, 1, *spatial), torch.ones(4, *spatial, dtype=torch.long)
    mixed, _, _, from_partner = augment.mix_pair(image, labels, conf, partner, partner_labels, half)
    assert from_partner[:2].any() and not from_partner[2:].any()
    assert torch.equal(mixed[2:], image[2:])


@pytest.mark.parametrize("spatial", [(16, 16), (16, 16, 8)])
def test_bidirectional_masks_give_every_other_image_the_box_and_the_labeled_image_around_it(spatial):
    """BCP's two directions (``mix_bidirectional``): even images take the labeled image inside the box,
    odd ones keep their own box and take the labeled image around it (teacher labels inside)."""
    gen = torch.Generator().manual_seed(2)
    boxes = augment.cutmix_masks(4, spatial, gen, torch.device("cpu"))
    masks = augment.alternate_masks(boxes)
    assert torch.equal(masks[0::2], boxes[0::2]) and torch.equal(masks[1::2], 1 - boxes[1::2])
    image, labels = torch.zeros(4, 1, *spatial), torch.zeros(4, *spatial, dtype=torch.long)
    conf = torch.full((4, *spatial), 0.5)
    partner, partner_labels = torch.ones(4, 1, *spatial), torch.ones(4, *spatial, dtype=torch.long)
    mixed, mixed_labels, mixed_conf, from_partner = augment.mix_pair(image, labels, conf, partner, partner_labels, masks)
    box = boxes == 0
    assert torch.equal(from_partner[0::2], box[0::2]) and torch.equal(from_partner[1::2], ~box[1::2])
    assert torch.equal(mixed[:, 0].bool(), from_partner) and torch.equal(mixed_labels.bool(), from_partner)
    assert bool((mixed_conf[from_partner] == 1).all()) and bool((mixed_conf[~from_partner] == 0.5).all())


@pytest.mark.parametrize("share", [-0.1, 1.5])
def test_a_mix_share_outside_zero_to_one_is_refused_by_name(share):
    with pytest.raises(ValueError, match="mix_share"):
        preset("acdc", mix_share=share)
