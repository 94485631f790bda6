"""`openpose`: OpenPose body keypoints of `target`, drawn in ControlNet's colours, batched."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import numpy as np

from annotators.base import NotApplicable, Prepared, Result, Sample
from annotators.controlnet_nets import body_net, checkpoint, quiet_import
from annotators.imaging import back_to, check_model_size, detect_image
from annotators.model_stage import (ImageInput, ModelStage, ModelStageOptions, finite_rows,
                                    require_finite)
from graph200k.shards import encode_image

# OpenPose's BODY_18 order (COCO keypoints plus the neck), the order of `keypoints` in meta
KEYPOINTS = ("nose", "neck", "right_shoulder", "right_elbow", "right_wrist", "left_shoulder",
             "left_elbow", "left_wrist", "right_hip", "right_knee", "right_ankle", "left_hip",
             "left_knee", "left_ankle", "right_eye", "left_eye", "right_ear", "left_ear")
_DIGITS = 4  # keypoint coordinates in meta: 1e-4 of the image side is well below a pixel


@dataclass
class OpenPoseOptions(ModelStageOptions):
    model: str = "lllyasviel/Annotators"
    filename: str = "body_pose_model.pth"
    # null: the image's own pixels, as Graph200K's `openpose_fullres_nohand` files; an int
    # is ControlNet's detect resolution (short side, sides multiples of 64), the drawing
    # then resized back. The net sees 184 px high either way (Body's 0.5 x 368 box): the
    # resolution sets the canvas the limbs are drawn on, so their width in the image.
    detect_resolution: int | None = None


class OpenPose(ModelStage):
    """`openpose.png`: body poses drawn as controlnet_aux's OpenposeDetector draws them
    (limbs and joints in ControlNet's 18 colours on black), plus the keypoints in meta.
    Body only: the hand and face models of the detector are not run. By default at the
    image's full resolution (Graph200K's `openpose_fullres_nohand`).

    OpenPose's decoding (heatmap peaks, part-affinity grouping) is written into
    controlnet_aux's `Body.__call__` together with its one-image forward pass. We run the
    forward batched (`prepare` does Body's resize to 0.5 x 368 px and padding, `forward`
    its scaling), and in `encode` hand each image's two output maps to that very
    `Body.__call__`, whose model is replaced by a module returning them: the decoding is
    controlnet_aux's own, byte for byte. An image with nobody in it is skipped.
    """

    name: ClassVar[str] = "openpose"
    produces: ClassVar[tuple[str, ...]] = ("openpose",)
    needs: ClassVar[tuple[str, ...]] = ("target",)
    requires: ClassVar[tuple[str, ...]] = ("torch", "controlnet_aux", "cv2", "scipy")
    Options = OpenPoseOptions

    def build_model(self):
        return body_net(checkpoint(self.name, self.options, self.options.filename))

    def _detect_bgr(self, rgb: np.ndarray) -> np.ndarray:
        # detect_poses flips to BGR: the body model was trained on OpenCV images
        if self.options.detect_resolution is None:
            check_model_size(rgb, self.name)
            return np.ascontiguousarray(rgb[:, :, ::-1])
        return detect_image(rgb, self.options.detect_resolution, self.name)[:, :, ::-1].copy()

    def prepare(self, sample: Sample) -> Prepared:
        util = quiet_import("controlnet_aux.open_pose.util")
        bgr = self._detect_bgr(sample.image("target"))
        scale = 0.5 * 368 / bgr.shape[0]  # Body's scale_search [0.5] x boxsize 368
        small = util.smart_resize_k(bgr, fx=scale, fy=scale)
        padded, _ = util.padRightDownCorner(small, 8, 128)
        return Prepared(ImageInput(np.ascontiguousarray(padded)), None)

    def forward(self, x, out_size):
        pafs, heatmaps = self.model(x / 256.0 - 0.5)
        pafs, heatmaps = pafs.float(), heatmaps.float()
        return [(p.cpu().numpy(), h.cpu().numpy(), pf and hf) for p, h, pf, hf in
                zip(pafs, heatmaps, finite_rows(pafs), finite_rows(heatmaps))]

    def encode(self, sample: Sample, context, output) -> Result:
        import torch

        body_mod = quiet_import("controlnet_aux.open_pose.body")
        openpose = quiet_import("controlnet_aux.open_pose")
        paf, heatmap, finite = output
        require_finite(finite, "OpenPose heatmaps / part-affinity fields")
        rgb = sample.image("target")
        bgr = self._detect_bgr(rgb)
        body = body_mod.Body.__new__(body_mod.Body)  # no weights: the replay is its model
        body.model = _Replay(torch.from_numpy(paf[None]), torch.from_numpy(heatmap[None]))
        candidate, subset = body(bgr)
        people = body.format_body_result(candidate, subset)
        if not people:
            raise NotApplicable("no person found")
        h, w = bgr.shape[:2]
        poses = [openpose.PoseResult(body_mod.BodyResult(
            keypoints=[None if k is None else body_mod.Keypoint(k.x / w, k.y / h)
                       for k in person.keypoints],
            total_score=person.total_score, total_parts=person.total_parts), None, None, None)
            for person in people]
        canvas = openpose.draw_poses(poses, h, w, draw_body=True, draw_hand=False,
                                     draw_face=False)
        meta = {"keypoint_order": "body18", "people": [_person(p, w, h) for p in people]}
        return Result({"openpose.png": encode_image(back_to(canvas, rgb.shape[:2]), "png")},
                      meta)


def _person(person, w: int, h: int) -> dict:
    """One person for meta: [x, y, score] per BODY_18 keypoint (x, y in [0, 1] of the image)
    or null where the part was not found."""
    return {"keypoints": [None if k is None else
                          [round(float(k.x) / w, _DIGITS), round(float(k.y) / h, _DIGITS),
                           round(float(k.score), _DIGITS)] for k in person.keypoints],
            "score": round(float(person.total_score), _DIGITS),
            "parts": int(person.total_parts)}


class _Replay:
    """Stands in for the body model inside `Body.__call__`: returns the maps our batched
    forward computed for this image (after checking it is asked about an input of the
    size they were computed for)."""

    def __init__(self, paf, heatmap):
        import torch

        self.outputs = (paf, heatmap)
        self._param = torch.nn.Parameter(torch.zeros(0))  # Body asks it for its device

    def parameters(self):
        return iter([self._param])

    def __call__(self, data):
        expected = tuple(s * 8 for s in self.outputs[0].shape[-2:])
        if tuple(data.shape[-2:]) != expected:
            raise RuntimeError(f"OpenPose maps were computed for a {expected} input, "
                               f"Body asks for {tuple(data.shape[-2:])}")
        return self.outputs
