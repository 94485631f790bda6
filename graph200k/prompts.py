"""VisualCloze prompts: layout instruction + task instruction + content instruction.

- layout: how the grid is arranged (rows, columns, image count);
- task: what each column is, as `[IMAGEk] phrase`, and which one is produced;
- content: the query's description, only when the task's target is the `target` image.
The task part is kept with p 0.8, the content part with p 0.8, and the whole caption is
dropped with p 0.1 (VisualCloze, Sec. 4); all three are configurable.

The templates below are ours. ``prompt.templates`` in a task config names a YAML file with
any of the lists ``layout`` ({rows}, {cols}, {n}), ``task`` ({conds}, {target}) and
``content`` ({desc}) to train with another set (configs/prompts/diffusers.yaml: the
sentences diffusers' VisualClozePipeline writes at inference).
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from pathlib import Path

from graph200k.nodes import SLOTS

LAYOUT_TEMPLATES = (
    "A grid of {rows} rows and {cols} columns holding {n} images.",
    "{n} images arranged in {rows} rows of {cols}.",
    "The picture is a {rows}x{cols} grid: {rows} rows, each with {cols} images.",
    "Below are {rows} rows; every row contains {cols} images, {n} in all.",
    "An image grid, {rows} row(s) by {cols} column(s), {n} panels in total.",
    "This canvas tiles {n} images into {rows} rows and {cols} columns.",
    "{rows} horizontal strips of {cols} images each make up this grid.",
    "Layout: {rows} rows x {cols} columns ({n} images).",
    "A collage of {n} pictures in {rows} rows, {cols} per row.",
    "The grid has {rows} rows; each row shows {cols} related images.",
    "Read this {rows}-row, {cols}-column grid of {n} images row by row.",
)

TASK_TEMPLATES = (
    "In every row, {conds}; from these, {target}.",
    "Each row starts from {conds} and ends with {target}.",
    "Every row pairs {conds} with {target}.",
    "Given {conds}, each row produces {target}.",
    "Row by row: {conds}, then {target}.",
    "The rows follow one rule: {conds} lead to {target}.",
    "Within a row, {conds} come first and {target} is the result.",
    "Each row shows {conds}, and the image to make is {target}.",
    "Using {conds}, every row derives {target}.",
    "Every row turns {conds} into {target}.",
    "Across each row, {conds} are the inputs and {target} is the output.",
)

CONTENT_TEMPLATES = (
    "The last row shows: {desc}",
    "The image to create depicts {desc}",
    "Content of the query: {desc}",
    "In the final row, the subject is {desc}",
    "Description of the result: {desc}",
    "What the missing image shows: {desc}",
    "The query row is about {desc}",
    "Target content: {desc}",
    "The generated picture should show {desc}",
    "Scene of the last row: {desc}",
    "For the last row, picture {desc}",
)


# The placeholders each part's templates are formatted with.
PLACEHOLDERS = {"layout": {"rows": 2, "cols": 3, "n": 6}, "task": {"conds": "[IMAGE1] x", "target": "[IMAGE2] y"},
                "content": {"desc": "a cup"}}


@dataclass(frozen=True)
class PromptConfig:
    keep_task_prob: float = 0.8
    keep_content_prob: float = 0.8
    drop_caption_prob: float = 0.1
    templates: str | None = None  # YAML file of layout / task / content templates; None: ours
    layout_templates: tuple[str, ...] = field(default=LAYOUT_TEMPLATES, repr=False)
    task_templates: tuple[str, ...] = field(default=TASK_TEMPLATES, repr=False)
    content_templates: tuple[str, ...] = field(default=CONTENT_TEMPLATES, repr=False)

    @classmethod
    def from_dict(cls, d: dict | None) -> "PromptConfig":
        d = dict(d or {})
        known = {"keep_task_prob", "keep_content_prob", "drop_caption_prob", "templates"}
        unknown = set(d) - known
        if unknown:
            raise ValueError(f"unknown prompt option(s) {sorted(unknown)}; known: {sorted(known)}")
        if d.get("templates"):
            d.update({f"{part}_templates": t for part, t in load_templates(d["templates"]).items()})
        return cls(**d)


def load_templates(path: str | Path) -> dict[str, tuple[str, ...]]:
    """The template lists of a YAML file ({layout, task, content}: lists of format strings), each
    checked against its placeholders; a part the file leaves out keeps our templates."""
    import yaml

    path = Path(path)
    if not path.is_file():
        raise ValueError(f"prompt.templates: {path} is not a file (a YAML of layout / task / content lists)")
    raw = yaml.safe_load(path.read_text()) or {}
    unknown = set(raw) - set(PLACEHOLDERS) if isinstance(raw, dict) else {"<not a mapping>"}
    if unknown:
        raise ValueError(f"{path}: unknown key(s) {sorted(unknown)}; a templates file holds "
                         f"{sorted(PLACEHOLDERS)}")
    out = {}
    for part, items in raw.items():
        if not isinstance(items, list) or not items or not all(isinstance(t, str) for t in items):
            raise ValueError(f"{path}: {part} must be a non-empty list of strings")
        for t in items:
            try:
                t.format(**PLACEHOLDERS[part])
            except (KeyError, IndexError, ValueError) as e:
                raise ValueError(f"{path}: {part} template {t!r} does not format with the placeholders "
                                 f"{{{', '.join(PLACEHOLDERS[part])}}} ({type(e).__name__}: {e})") from None
        out[part] = tuple(items)
    return out


def image_tag(k: int) -> str:
    return f"[IMAGE{k}]"


def describe_columns(columns, rng: random.Random) -> tuple[list[str], str]:
    """`[IMAGEk] phrase` for the condition columns and for the last (target) column."""
    parts = [f"{image_tag(i + 1)} {rng.choice(SLOTS[c].phrases)}" for i, c in enumerate(columns)]
    return parts[:-1], parts[-1]


def _join(items: list[str]) -> str:
    if len(items) == 1:
        return items[0]
    return ", ".join(items[:-1]) + " and " + items[-1]


def build_prompt(columns, rows: int, description: str | None, rng: random.Random,
                 config: PromptConfig = PromptConfig()) -> dict:
    """The prompt parts of one grid and the final caption after the configured drops.

    `columns` are slot names in grid order, the task's target last. `description` is
    the query sample's description, used only when the target is `target`.
    """
    cols = len(columns)
    layout = rng.choice(config.layout_templates).format(rows=rows, cols=cols, n=rows * cols)
    conds, target = describe_columns(columns, rng)
    task = rng.choice(config.task_templates).format(conds=_join(conds), target=target)
    content = None
    if columns[-1] == "target" and description:
        template = rng.choice(config.content_templates)
        desc = description.strip()
        if not template.startswith("{") and ": {desc}" not in template:
            desc = desc[:1].lower() + desc[1:]  # it continues a sentence: "depicts a cat"
        content = template.format(desc=desc)
    keep_task = rng.random() < config.keep_task_prob
    keep_content = content is not None and rng.random() < config.keep_content_prob
    drop = rng.random() < config.drop_caption_prob
    text = "" if drop else " ".join(
        p for p, keep in ((layout, True), (task, keep_task), (content, keep_content)) if keep
    )
    return {"layout": layout, "task": task, "content": content, "keep_task": keep_task,
            "keep_content": keep_content, "dropped": drop, "text": text}
