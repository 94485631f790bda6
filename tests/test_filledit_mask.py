"""FillEdit's subject mask closed over the subject's own box: a smaller grounded object
painted over the subject in `mask.png` (a logo on a bottle) is given back to the subject,
so the inpaint replaces the whole old subject. No model runs here."""

from __future__ import annotations

import numpy as np

from annotators.base import ANNOTATIONS, Sample
from annotators.filledit import FillEdit, closed_subject, subject_mask
from graph200k.shards import encode_image

RED, GREEN, BLUE, YELLOW = [200, 30, 30], [30, 200, 30], [30, 30, 200], [220, 220, 0]


def painted(size: int = 64):
    """A bottle (subject, red) with a logo (green, nested in its box) painted over it and a
    black hole (the background seen through it); a cup (blue) beside it; a hand (yellow)
    overlapping the bottle's edge from outside its box. Painted largest first, as the mask
    stage does."""
    m = np.zeros((size, size, 3), np.uint8)
    m[8:56, 16:40] = RED          # bottle, box [16, 8, 40, 56]
    m[40:52, 44:60] = BLUE        # cup, box [44, 40, 60, 52]
    m[20:30, 30:50] = YELLOW      # hand, box [30, 20, 50, 30]: reaches past the bottle
    m[14:22, 20:28] = GREEN       # logo, box [20, 14, 28, 22]: inside the bottle
    m[30:36, 22:30] = 0           # a real hole: unpainted
    objects = [{"name": "bottle", "box": [16, 8, 40, 56], "colour": RED},
               {"name": "cup", "box": [44, 40, 60, 52], "colour": BLUE},
               {"name": "hand", "box": [30, 20, 50, 30], "colour": YELLOW},
               {"name": "logo", "box": [20, 14, 28, 22], "colour": GREEN}]
    return m, objects


def test_a_nested_object_painted_over_the_subject_is_given_back_to_it():
    m, objects = painted()
    closed = closed_subject(m, objects, 0)
    red = np.all(m == RED, axis=2)
    logo = np.all(m == GREEN, axis=2)
    assert logo.sum() == 64 and not (red & logo).any()   # the hole the logo left
    assert closed[logo].all()                             # the logo's pixels are the subject's
    assert not closed[np.all(m == BLUE, axis=2)].any()    # an object beside it is not
    assert not closed[30:36, 22:30].any()                 # an unpainted hole stays a hole
    hand = np.all(m == YELLOW, axis=2)
    assert not closed[hand & ~_box(16, 8, 40, 56)].any()  # never beyond the subject's box
    # the hand is not nested (its box leaves the bottle's) and not enclosed (it reaches the
    # bottle's edge): it stays out too
    assert not closed[hand].any()
    assert closed.sum() == red.sum() + logo.sum()


def test_an_enclosed_hole_painted_by_a_larger_object_is_filled_too():
    m, objects = painted()
    objects[3]["box"] = [10, 4, 30, 30]  # the logo's box (grounding) pokes out of the bottle's
    closed = closed_subject(m, objects, 0)
    assert closed[np.all(m == GREEN, axis=2)].all()  # enclosed by the bottle: filled anyway


def test_filledit_inpaints_the_closed_mask():
    m, objects = painted()
    target = np.full((64, 64, 3), 128, np.uint8)
    sample = Sample("0000001", {"target.jpg": encode_image(target, "png"),
                                "mask.png": encode_image(m, "png")},
                    meta={f"{ANNOTATIONS}.mask": {"objects": objects, "subject": 0},
                          "item": "bottle", "description": "a bottle", "category": "Drinks"})
    options = FillEdit.parse_options({"rewrite": "same_category", "matte_fallback": False})
    mask, source, area = subject_mask(sample, options)
    assert source == "grounded"
    red, logo = np.all(m == RED, axis=2), np.all(m == GREEN, axis=2)
    assert (mask == (red | logo)).all() and area == (red | logo).mean()
    # without a box (an older meta entry) the colour alone is the mask, as before
    del objects[0]["box"]
    assert (subject_mask(sample, options)[0] == red).all()


def _box(x1, y1, x2, y2, size=64):
    b = np.zeros((size, size), bool)
    b[y1:y2, x1:x2] = True
    return b
