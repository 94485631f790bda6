"""The evaluation metrics on tiny random metric networks of the real architectures:
identities, ordering under noise, agreement with a second implementation, batching,
loading rules (no download, tensors-only checkpoints)."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch

from train.evaluate.metrics import Scorer, ScoreInput, edge_f1, fid, normalised_depth

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def photos(size=64):
    from skimage import data

    return [cv2.resize(np.ascontiguousarray(getattr(data, n)()[..., :3]), (size, size), interpolation=cv2.INTER_AREA)
            for n in ("astronaut", "chelsea", "coffee", "rocket", "immunohistochemistry", "coins")]


def noised(image, sigma, seed):
    rng = np.random.default_rng(seed)
    return np.clip(image + rng.normal(0, sigma, image.shape), 0, 255).astype(np.uint8)


@pytest.fixture(scope="module")
def scorer(eval_models):
    # FID on the 64-d Inception layer: the same torchmetrics code, a 64^2 instead of a 2048^2
    # matrix square root per FID (seconds each on this CPU).
    return Scorer(eval_models, batch_size=4, fid_features=64)


def test_identities_ssim_f1_rmse(scorer):
    from annotators.canny import Canny

    images = photos()
    depth = scorer.depth_maps(images[:2])
    # 128 px: the canny annotator detects at 512, and a 64-px photo enlarged 8x has almost
    # no gradient left above its thresholds (chelsea: no edge at all)
    inputs = [ScoreInput(im, "conditional", truth=im, condition=Canny().edges(im), condition_node="canny")
              for im in photos(128)[:2]]
    inputs += [ScoreInput(im, "conditional", truth=im, condition=np.round(normalised_depth(d)).astype(np.uint8),
                          condition_node="depth") for im, d in zip(images[:2], depth)]
    out = scorer.score(inputs)
    assert all(abs(r["ssim"] - 1.0) < 1e-6 for r in out)
    assert [r["f1"] for r in out[:2]] == [1.0, 1.0]
    assert all(r["rmse"] < 0.5 for r in out[2:])  # the condition map is the rounded prediction
    assert "rmse" not in out[0] and "f1" not in out[2]  # controllability follows the condition


def test_fid_is_zero_on_the_same_set_and_grows_with_noise(scorer):
    images = photos()
    real = scorer.inception_features(images)
    assert abs(fid(list(real), list(real))) < 1e-3
    values = [fid(list(scorer.inception_features([noised(im, s, i) for i, im in enumerate(images)])), list(real))
              for s in (8, 32, 96)]
    assert values[0] > 1e-2 and values[0] < values[1] < values[2]
    assert fid(list(real[:1]), list(real)) is None  # one image a side has no covariance


def test_ssim_falls_with_noise_and_on_a_shuffled_set(scorer):
    images = photos()
    clean = scorer.ssim(images, images)
    means = [scorer.ssim([noised(im, s, 0) for im in images], images).mean() for s in (8, 32, 96)]
    assert clean.mean() > means[0] > means[1] > means[2]
    assert scorer.ssim(images[1:] + images[:1], images).mean() < means[0]


def test_ssim_agrees_with_skimage(scorer):
    from skimage.metrics import structural_similarity

    images = photos(96)
    others = [noised(im, 20, 1) for im in images[:3]]
    ours = scorer.ssim(others, images[:3])
    theirs = [structural_similarity(o, t, gaussian_weights=True, sigma=1.5, use_sample_covariance=False,
                                    data_range=255, channel_axis=2) for o, t in zip(others, images[:3])]
    assert np.allclose(ours, theirs, atol=1e-4), (ours, theirs)


def test_edge_f1_matches_a_hand_count():
    # A white square: its Canny edges are the square's outline. The "condition" keeps the top
    # and left sides and adds a stray vertical line: TP, FP, FN are counted by hand from masks.
    image = np.zeros((40, 40, 3), np.uint8)
    image[10:30, 10:30] = 255
    edges = cv2.Canny(image, 100, 200) > 0
    condition = np.zeros((40, 40), np.uint8)
    condition[:20, :] = edges[:20, :] * 255  # the top half of the outline
    condition[5:35, 36] = 255  # an edge the image does not have
    tp = int((edges & (condition > 0)).sum())
    fp = int((edges & (condition == 0)).sum())
    fn = int((~edges & (condition > 0)).sum())
    assert tp and fp and fn
    from annotators.canny import Canny

    at_own_size = Canny({"detect_resolution": None}).edges  # the counts above are at 40 px
    assert edge_f1(image, condition, at_own_size) == pytest.approx(2 * tp / (2 * tp + fp + fn))
    assert edge_f1(image, (edges * 255).astype(np.uint8), at_own_size) == 1.0


def test_restoration_rmse_is_the_pixel_rmse_against_the_original(scorer):
    """VisualCloze Table 1's Deblur rows: RMSE (0-255) between the original and the restored
    image, whatever the task's condition; no depth model involved."""
    images = photos()[:3]
    restored = [noised(im, s, i) for i, (im, s) in enumerate(zip(images, (0, 10, 40)))]
    restored[0] = images[0]
    small = cv2.resize(restored[2], (32, 32), interpolation=cv2.INTER_AREA)  # scored at the truth's size
    inputs = [ScoreInput(r, "restoration", truth=im) for r, im in zip(restored, images)]
    inputs.append(ScoreInput(small, "restoration", truth=images[2]))
    inputs.append(ScoreInput(images[0], "restoration", prompt="a photo"))  # no ground truth: no RMSE
    out = scorer.score(inputs)
    hand = [float(np.sqrt(np.mean((r.astype(float) - im.astype(float)) ** 2)))
            for r, im in zip(restored, images)]
    assert out[0]["rmse"] == 0.0
    assert [r["rmse"] for r in out[:3]] == pytest.approx(hand)
    assert hand[1] < hand[2]
    up = cv2.resize(small, (64, 64), interpolation=cv2.INTER_CUBIC).astype(float)
    assert out[3]["rmse"] == pytest.approx(float(np.sqrt(np.mean((up - images[2]) ** 2))))
    assert "rmse" not in out[4]
    from train.evaluate.metrics import KINDS

    assert KINDS["restoration"][1][0] == "rmse"  # the table's first column, as Table 1


def test_clip_scores_agree_with_a_direct_cosine_and_clips_own_logits(scorer):
    model, processor = scorer.nets["clip"]
    images = photos()[:4]
    texts = ["an astronaut", "a cat", "a cup of coffee", "a rocket"]
    out = scorer.score([ScoreInput(im, "subject", prompt=t, reference=images[0]) for im, t in zip(images, texts)]
                       + [ScoreInput(im, "restoration", prompt=t) for im, t in zip(images, texts)])
    with torch.no_grad():
        pixels = processor(images=images, return_tensors="pt")
        tokens = processor.tokenizer(texts, padding=True, return_tensors="pt")
        img = model.get_image_features(**pixels).pooler_output
        txt = model.get_text_features(**tokens).pooler_output
        # CLIP's own forward: logits_per_image = exp(logit_scale) x cosine, a second code path
        logits = model(**tokens, **pixels).logits_per_image.diagonal() / model.logit_scale.exp()
    img, txt = img / img.norm(dim=-1, keepdim=True), txt / txt.norm(dim=-1, keepdim=True)
    cos = (img * txt).sum(-1).numpy()
    assert np.allclose([r["clip_t"] for r in out[:4]], cos, atol=1e-5)
    assert np.allclose([r["clip_t"] for r in out[:4]], logits.numpy(), atol=1e-5)
    assert np.allclose([r["clip_i"] for r in out[:4]], (img @ img[0]).numpy(), atol=1e-5)
    assert out[0]["clip_i"] == pytest.approx(1.0, abs=1e-5)
    assert np.allclose([r["clip_score"] for r in out[4:]], np.maximum(100 * cos, 0), atol=1e-3)


def test_dino_is_a_cosine_to_the_reference(scorer):
    images = photos()[:3]
    out = scorer.score([ScoreInput(im, "subject", reference=images[0]) for im in images])
    assert out[0]["dino"] == pytest.approx(1.0, abs=1e-5)
    assert all(-1.0 <= r["dino"] < 1.0 - 1e-6 for r in out[1:])


def test_batched_equals_one_at_a_time(eval_models, scorer):
    images = photos()
    inputs = [ScoreInput(im, "conditional", truth=images[(i + 1) % 6], prompt="a photo")
              for i, im in enumerate(images)]
    single = Scorer(eval_models, metrics=("fid", "ssim", "maniqa", "musiq", "clip_score"), batch_size=1,
                    fid_features=64)
    a = scorer.score(inputs)
    b = single.score(inputs)
    for x, y in zip(a, b):
        for k in ("ssim", "maniqa", "musiq", "clip_score"):
            assert x[k] == pytest.approx(y[k], rel=1e-4, abs=1e-5), k
        assert np.allclose(x["fid_fake"], y["fid_fake"], rtol=1e-4, atol=1e-6)


def test_missing_weights_are_clear_errors(tmp_path, monkeypatch, eval_models):
    from dataclasses import replace

    from train.evaluate.models import MissingWeights, load_net

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(MissingWeights, match="'clip'.*huggingface-cli download nobody/no-such-clip"):
        load_net("clip", replace(eval_models, clip="nobody/no-such-clip"))
    with pytest.raises(MissingWeights, match="'inception'.*download the FID Inception weights once from https"):
        load_net("inception", replace(eval_models, inception=str(tmp_path / "none.pth")))
    with pytest.raises(MissingWeights, match="'musiq'.*does not exist"):
        load_net("musiq", replace(eval_models, iqa=str(tmp_path)))


class Payload:
    def __reduce__(self):
        return (print, ("unpickled!",))


def test_checkpoints_are_read_tensors_only(tmp_path, eval_models):
    from dataclasses import replace

    from train.evaluate.models import load_net

    evil = tmp_path / "weights-inception-2015-12-05-6726825d.pth"
    torch.save({"w": torch.zeros(1), "x": Payload()}, evil)
    with pytest.raises(Exception, match="[Ww]eights only|weights_only|Unsupported"):
        load_net("inception", replace(eval_models, inception=str(evil)))
    (tmp_path / "iqa").mkdir()
    torch.save({"w": Payload()}, tmp_path / "iqa" / eval_models.musiq_file)
    with pytest.raises(Exception, match="[Ww]eights only|weights_only|Unsupported"):
        load_net("musiq", replace(eval_models, iqa=str(tmp_path / "iqa")))
