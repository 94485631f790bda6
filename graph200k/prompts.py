"""VisualCloze prompts: layout instruction + task instruction + content instruction.

- layout: how the grid is arranged (rows, columns, image count);
- task: what each column is, as `[IMAGEk] phrase`, and which one is produced;
- content: the query's description, only when the task's target is the `target` image.
The task part is kept with p 0.8, the content part with p 0.8, and the whole caption is
dropped with p 0.1 (VisualCloze, Sec. 4); all three are configurable.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

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


@dataclass(frozen=True)
class PromptConfig:
    keep_task_prob: float = 0.8
    keep_content_prob: float = 0.8
    drop_caption_prob: float = 0.1

    @classmethod
    def from_dict(cls, d: dict | None) -> "PromptConfig":
        d = dict(d or {})
        unknown = set(d) - set(cls.__dataclass_fields__)
        if unknown:
            raise ValueError(f"unknown prompt option(s) {sorted(unknown)}; "
                             f"known: {sorted(cls.__dataclass_fields__)}")
        return cls(**d)


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
    layout = rng.choice(LAYOUT_TEMPLATES).format(rows=rows, cols=cols, n=rows * cols)
    conds, target = describe_columns(columns, rng)
    task = rng.choice(TASK_TEMPLATES).format(conds=_join(conds), target=target)
    content = None
    if columns[-1] == "target" and description:
        template = rng.choice(CONTENT_TEMPLATES)
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
