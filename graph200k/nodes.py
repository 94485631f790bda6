"""The 50 Graph200K node types: what each is, where it lives in a shard, how to describe it.

VisualCloze (Sec. 3.2) counts 49 types: the image itself, 12 conditions, 2 styles, 2 edits
and 32 degradations. The registry adds `reference` (the second Subjects200K photo of the
same subject, which the subject-driven tasks need as a node of its own): 50. Each image
has 12 conditions here too; `bbox` (the grounded boxes) is the twelfth.

A node type contributes one image (most) or two (the style nodes: the style reference
and the stylized image). Each image a node contributes is a *slot*; a slot names the
shard member it is read from and the phrases a prompt uses to describe it.

Style and edit nodes are generated, several times per sample: variant i of a slot is the
member `{slot}.{i}.jpg` (`instantstyle_ref.2.jpg` + `instantstyle.2.jpg` are one pair).
A node is available when its variant 0 is stored; `variant_count` says how many are.

Degradations are not stored: they are computed online from `target.jpg`
(`graph200k.degradations`). `foreground` / `background` are derived online from the
RMBG matte (`rmbg.png`).
"""

from __future__ import annotations

from dataclasses import dataclass

IMAGE, CONDITION, STYLE, EDIT, DEGRADATION = "image", "condition", "style", "edit", "degradation"
KINDS = (IMAGE, CONDITION, STYLE, EDIT, DEGRADATION)


@dataclass(frozen=True)
class Slot:
    """One image of a node type: its cell name in a task row and its shard member."""

    name: str
    member: str
    phrases: tuple[str, ...]


@dataclass(frozen=True)
class NodeType:
    name: str
    kind: str
    slots: tuple[Slot, ...]
    # Members a shard must hold for this node to be available. Online nodes list the
    # members they are computed from.
    members: tuple[str, ...]
    online: bool = False

    @property
    def num_images(self) -> int:
        return len(self.slots)

    @property
    def phrases(self) -> tuple[str, ...]:
        return self.slots[-1].phrases


def _node(name, kind, member, phrases, online=False, source=None):
    slot = Slot(name, member, tuple(phrases))
    return NodeType(name, kind, (slot,), (source or member,), online)


def _style(name, phrases, ref_phrases):
    ref = Slot(f"{name}_ref", f"{name}_ref.0.jpg", tuple(ref_phrases))
    out = Slot(name, f"{name}.0.jpg", tuple(phrases))
    return NodeType(name, STYLE, (ref, out), (ref.member, out.member))


_IMAGES = [
    _node("target", IMAGE, "target.jpg", [
        "a photograph of the subject",
        "the clean, high-quality photo",
        "the original image of the object",
        "a natural photo showing the item in its scene",
        "the reference-quality picture of the subject",
    ]),
    _node("reference", IMAGE, "reference.jpg", [
        "another photo of the same subject",
        "a second view of the identical object",
        "the subject as it appears in a different scene",
        "a reference image showing the same item",
        "a picture of the same product from elsewhere",
    ]),
]

_CONDITIONS = [
    _node("canny", CONDITION, "canny.png", [
        "a canny edge map",
        "thin white edges from the Canny detector on black",
        "an edge drawing of the scene's contours",
        "the image reduced to its Canny edges",
        "a binary outline sketch made by edge detection",
    ]),
    _node("hed", CONDITION, "hed.png", [
        "a soft HED boundary map",
        "holistically-nested edges with smooth strokes",
        "a soft-edge sketch of the scene",
        "the main boundaries drawn as blurry grey lines",
        "a HED edge image",
    ]),
    _node("mlsd", CONDITION, "mlsd.png", [
        "straight line segments found by M-LSD",
        "a map of the straight lines in the scene",
        "a wireframe of the image's straight edges",
        "line segments outlining the geometry",
        "an MLSD straight-line drawing",
    ]),
    _node("depth", CONDITION, "depth.png", [
        "a depth map, near parts bright and far parts dark",
        "a grayscale estimate of scene depth",
        "how near every pixel is to the camera, nearer brighter",
        "a monocular depth prediction",
        "a relative depth image of the scene",
    ]),
    _node("normal", CONDITION, "normal.png", [
        "a surface normal map in RGB",
        "the orientation of every surface, colour-coded",
        "a normal-map rendering of the scene's geometry",
        "estimated surface normals",
        "a colour-coded normal image of the shapes",
    ]),
    _node("openpose", CONDITION, "openpose.png", [
        "an OpenPose skeleton of the people",
        "coloured keypoints and limbs of the body pose",
        "a human pose stick figure",
        "body keypoints drawn on black",
        "the detected pose as a skeleton diagram",
    ]),
    _node("uniformer", CONDITION, "uniformer.png", [
        "a semantic segmentation map",
        "regions coloured by their semantic class",
        "a per-pixel ADE20K class map",
        "flat colour patches labelling each region",
        "the scene parsed into semantic segments",
    ]),
    _node("sam2_mask", CONDITION, "sam2_mask.png", [
        "SAM2 masks of every object, each in its own colour",
        "an instance mask map from Segment Anything 2",
        "automatic segmentation masks of the scene",
        "coloured object masks covering the image",
        "a panoptic-style mask image from SAM2",
    ]),
    _node("mask", CONDITION, "mask.png", [
        "grounded masks of the named objects, one colour each",
        "the segmentation mask of every grounded object on black",
        "object silhouettes from the detected boxes, each in its own colour",
        "a grounded segmentation mask of the subject and its surroundings",
        "colour-coded masks of the objects found in the image",
    ]),
    _node("foreground", CONDITION, "foreground.png", [
        "the subject cut out on a black background",
        "the foreground object alone, background removed",
        "an isolated cut-out of the subject",
        "the matted foreground of the photo",
        "only the subject, with everything else blanked",
    ], online=True, source="rmbg.png"),
    _node("background", CONDITION, "background.png", [
        "the scene with the subject removed",
        "only the background, the subject blanked out",
        "the surroundings without the main object",
        "the empty backdrop of the photo",
        "the background layer with a hole where the subject was",
    ], online=True, source="rmbg.png"),
]

_STYLE_REF_WORDS = [
    "a style reference image",
    "an artwork whose style is to be borrowed",
    "the picture that sets the artistic style",
    "an example of the desired painting style",
    "the style source image",
]
_STYLES = [
    _style("instantstyle", [
        "the subject restyled while its content is kept (InstantStyle)",
        "a stylized version that keeps the same layout and object",
        "the photo repainted in the reference style, same content",
        "a style transfer that preserves the subject's structure",
        "an InstantStyle rendering of the same scene",
    ], _STYLE_REF_WORDS),
    _style("reduxstyle", [
        "a new image in the reference style with different content (Redux)",
        "a Redux-style variation whose semantics change",
        "a freely reimagined picture in the borrowed style",
        "a stylized image that reinterprets the scene",
        "a FLUX Redux style variation",
    ], _STYLE_REF_WORDS),
]

_EDITS = [
    _node("filledit", EDIT, "filledit.0.jpg", [
        "the subject edited in place with the background kept",
        "an inpainted edit of the object, same surroundings",
        "a FLUX-Fill edit that changes only the subject",
        "the photo with its subject altered and scene unchanged",
        "a local edit of the main object",
    ]),
    _node("depthedit", EDIT, "depthedit.0.jpg", [
        "an edit that keeps the layout but changes the background",
        "the same structure regenerated from depth in a new scene",
        "a depth-guided edit with a different backdrop",
        "the subject re-rendered in new surroundings",
        "a scene change that preserves the depth layout",
    ]),
]

# One noun phrase per degradation; each gets the same five framings below. Rotations are
# clockwise: rotate90 turns the picture a quarter turn to the right (`np.rot90(k=-1)`).
_DEGRADATION_WORDS = {
    "blur": "blur (motion, lens, zoom or glass)",
    "compression": "heavy compression artifacts",
    "pixelate": "coarse pixelation",
    "oversharpen": "excessive sharpening halos",
    "contrast_strengthen": "exaggerated contrast",
    "contrast_weaken": "washed-out, low contrast",
    "quantization": "colour quantization banding",
    "brighten": "overexposed brightness",
    "darken": "underexposed darkness",
    "saturate_strengthen": "oversaturated colours",
    "saturate_weaken": "faded, desaturated colours",
    "SRx2": "2x downscaling and upscaling softness",
    "SRx4": "4x downscaling and upscaling softness",
    "GaussianBlur": "strong Gaussian blur",
    "GaussianNoise": "Gaussian noise",
    "PoissonNoise": "Poisson shot noise",
    "SPNoise": "salt-and-pepper noise",
    "mosaic": "Bayer mosaic colour artifacts",
    "JPEG": "blocky JPEG artifacts",
    "LowLight": "low-light dimness",
    "gray": "loss of all colour (grayscale)",
    "ColorDistortion": "shuffled or missing colour channels",
    "Inpainting": "thick lines painted over it",
    "Rain": "rain streaks",
    "Defocus": "defocus blur",
    "Barrel": "barrel lens distortion",
    "Pincushion": "pincushion lens distortion",
    "Elastic": "elastic warping",
    "Frost": "a frosted-glass overlay",
    "rotate90": "a rotation of 90 degrees clockwise",
    "rotate180": "a rotation of 180 degrees (upside down)",
    "rotate270": "a rotation of 270 degrees clockwise (90 counter-clockwise)",
}
_DEGRADATION_FRAMES = (
    "the photo degraded by {}",
    "a version of the image with {}",
    "the picture suffering from {}",
    "a corrupted copy showing {}",
    "the same scene marred by {}",
)
DEGRADATIONS = tuple(_DEGRADATION_WORDS)
_DEGRADATION_NODES = [
    _node(name, DEGRADATION, f"{name}.png", [f.format(words) for f in _DEGRADATION_FRAMES],
          online=True, source="target.jpg")
    for name, words in _DEGRADATION_WORDS.items()
]

# The grounded boxes (the same objects as `mask`, from the same Qwen2-VL answer).
_BBOX = _node("bbox", CONDITION, "bbox.png", [
    "bounding boxes of the objects drawn on black",
    "coloured rectangles marking where each object is",
    "an open-world detection map: one box per object",
    "the grounded boxes of the subject and its surroundings",
    "box outlines locating every named object in the scene",
])
_CONDITIONS.append(_BBOX)

# Registry order is bit order (a sample's availability mask): `bbox` came last, after the
# degradations, so manifests written before it keep their meaning (bits 0-48 unchanged).
NODE_TYPES: dict[str, NodeType] = {
    n.name: n for n in _IMAGES + [c for c in _CONDITIONS if c is not _BBOX] + _STYLES
    + _EDITS + _DEGRADATION_NODES + [_BBOX]
}
NODE_NAMES: tuple[str, ...] = tuple(NODE_TYPES)
CONDITIONS: tuple[str, ...] = tuple(n.name for n in _CONDITIONS)
STYLES: tuple[str, ...] = tuple(n.name for n in _STYLES)
EDITS: tuple[str, ...] = tuple(n.name for n in _EDITS)
# The generated nodes, stored as numbered variants (see the module docstring).
VARIANT_NODES: tuple[str, ...] = STYLES + EDITS
# Bit i of a sample's availability mask is NODE_NAMES[i]; 50 bits fit a uint64.
NODE_BIT: dict[str, int] = {name: i for i, name in enumerate(NODE_NAMES)}
SLOTS: dict[str, Slot] = {s.name: s for n in NODE_TYPES.values() for s in n.slots}
SLOT_NODE: dict[str, str] = {s.name: n.name for n in NODE_TYPES.values() for s in n.slots}

META_MEMBER = "meta.json"


def node_type(name: str) -> NodeType:
    try:
        return NODE_TYPES[name]
    except KeyError:
        raise KeyError(
            f"unknown node type {name!r}; known node types: {', '.join(NODE_NAMES)}"
        ) from None


def mask_of(names) -> int:
    """The availability bitmask that requires every node in `names`."""
    m = 0
    for name in names:
        node_type(name)
        m |= 1 << NODE_BIT[name]
    return m


def names_of(mask: int) -> list[str]:
    return [n for n, b in NODE_BIT.items() if mask >> b & 1]


_MEMBER_NODE: dict[str, str] = {}
for _n in NODE_TYPES.values():
    for _m in _n.members:
        _MEMBER_NODE.setdefault(_m, _n.name)  # rmbg.png -> foreground (first of the two)
    for _s in _n.slots:
        _MEMBER_NODE.setdefault(_s.member, _n.name)


def member_node(member: str) -> str | None:
    """The node type a stored member belongs to (`hed.png` -> hed, `instantstyle_ref.3.jpg`
    -> instantstyle, `filledit.2.jpg` -> filledit); None for meta and unknown members."""
    if member in _MEMBER_NODE:
        return _MEMBER_NODE[member]
    slot, dot, rest = member.partition(".")
    index, dot2, ext = rest.partition(".")
    if dot and dot2 and index.isdigit() and slot in SLOT_NODE:
        node = SLOT_NODE[slot]
        if NODE_TYPES[node].kind in (STYLE, EDIT):  # the nodes stored as numbered variants
            return node
    return None


def variant_member(slot: str, variant: int = 0) -> str:
    """The member holding variant `variant` of an image slot: (`instantstyle_ref`, 3) ->
    `instantstyle_ref.3.jpg`. Slots of other nodes have one member (variant 0 only)."""
    if slot not in SLOTS:
        raise KeyError(f"unknown slot {slot!r}; slots are node types plus '<style>_ref'")
    variant = int(variant)
    if SLOT_NODE[slot] in VARIANT_NODES and variant >= 0:
        return f"{slot}.{variant}.jpg"
    if variant != 0:
        raise ValueError(f"slot {slot!r} has one stored image, not variants (asked for {variant})")
    return SLOTS[slot].member


def variant_members(node: str, variant: int) -> tuple[str, ...]:
    """Every member of variant `variant` of a node (a style node: reference + stylized)."""
    return tuple(variant_member(s.name, variant) for s in node_type(node).slots)


def variant_count(node: str, members) -> int:
    """How many variants 0, 1, ... of `node` are complete in `members` (the first gap ends
    the count: a task draws among 0..count-1)."""
    members = set(members)
    if node not in VARIANT_NODES:
        return int(all(m in members for m in node_type(node).members))
    count = 0
    while all(m in members for m in variant_members(node, count)):
        count += 1
    return count


def available_nodes(members) -> list[str]:
    """Node types a sample has, given the member names (e.g. `{"target.jpg", ...}`) it holds."""
    members = set(members)
    return [n.name for n in NODE_TYPES.values() if all(m in members for m in n.members)]
