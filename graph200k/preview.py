"""Look at the data: a composed grid with its prompt, or one sample's node contact sheet.

    python -m graph200k.preview --tasks tasks.jsonl --task 0 --shards DIR --out grid.png
    python -m graph200k.preview --task '{"task_id": ...}' --shards DIR --out grid.png
    python -m graph200k.preview --key 0000042 --shards DIR --out sheet.png

The grid is built by the same code path as training (graph200k.reader -> graph200k.grid):
cells are labelled `[IMAGEk] slot` as in the prompt, the masked cell is outlined in red,
and the prompt is drawn under the grid. The contact sheet shows every node image a sample
has (online nodes derived, degradations with seed 0) and its type graph.

Exit codes: 0 written; 1 the PNG could not be written; 2 bad input (a --task that is not a
task, a missing --tasks file or line, shards that cannot be read, an unknown key, an --out
that cannot be written).
"""

from __future__ import annotations

import argparse
import io
import json
import sys
import textwrap

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from graph200k import storage
from graph200k.grid import INFER, TRAIN, Grid
from graph200k.nodes import NODE_TYPES, names_of
from graph200k.prompts import image_tag
from graph200k.reader import FetchError, SampleReader
from graph200k.shards import ShardError
from graph200k.tasks import Task

MASK_COLOUR = (230, 30, 30)
KIND_COLOURS = {"image": "#f2b134", "condition": "#4f9dde", "style": "#b76fd1",
                "edit": "#5dbb63", "degradation": "#bbbbbb"}
PAD = 8
GRAPH_HEIGHT = 640  # px of the type-graph figure under the contact sheet


def font(size: int = 14):
    return ImageFont.load_default(size=size)


def _wrap(draw: ImageDraw.ImageDraw, text: str, fnt, width: int) -> list[str]:
    """Greedy word wrap measured in pixels."""
    lines: list[str] = []
    for paragraph in text.split("\n"):
        line = ""
        for word in paragraph.split():
            trial = f"{line} {word}".strip()
            if line and draw.textlength(trial, font=fnt) > width:
                lines.append(line)
                line = word
            else:
                line = trial
        lines.append(line)
    return lines


def _label(draw: ImageDraw.ImageDraw, xy, text: str, fnt, fill=(255, 255, 255),
           back=(0, 0, 0)) -> None:
    x, y = xy
    box = draw.textbbox((x + 3, y + 2), text, font=fnt)
    draw.rectangle((box[0] - 3, box[1] - 2, box[2] + 3, box[3] + 2), fill=back)
    draw.text((x + 3, y + 2), text, font=fnt, fill=fill)


def text_band(lines: list[tuple[str, tuple]], width: int, size: int = 14) -> Image.Image:
    """White band of wrapped text lines; each entry is (text, colour)."""
    fnt = font(size)
    probe = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    wrapped = [(w, colour) for text, colour in lines
               for w in _wrap(probe, text, fnt, max(50, width - 2 * PAD))]
    line_h = int(size * 1.35)
    band = Image.new("RGB", (width, 2 * PAD + line_h * len(wrapped)), "white")
    draw = ImageDraw.Draw(band)
    for i, (text, colour) in enumerate(wrapped):
        draw.text((PAD, PAD + i * line_h), text, font=fnt, fill=colour)
    return band


def render_grid(grid: Grid, size: int = 14) -> Image.Image:
    """The stacked grid, labelled cells, the masked cell outlined, the prompt beneath."""
    img = Image.fromarray(grid.stacked())
    draw = ImageDraw.Draw(img)
    fnt = font(max(9, min(size, grid.rows[0].shape[0] // 12)))
    y = 0
    for r, row in enumerate(grid.rows):
        for c in range(len(grid.cell_sizes[r])):
            x0, y0, x1, y1 = grid.cell_box(r, c)
            masked = (r, c) == grid.masked_cell
            name = grid.cells[r][c] if grid.cells else ""
            text = f"{image_tag(c + 1)} {name}" + (" (masked)" if masked else "")
            border = max(2, (y1 - y0) // 64) if masked else 0
            if masked:
                draw.rectangle((x0, y + y0, x1 - 1, y + y1 - 1), outline=MASK_COLOUR,
                               width=border)
            _label(draw, (x0 + border, y + y0 + border), text, fnt,
                   back=MASK_COLOUR if masked else (0, 0, 0))
        y += row.shape[0]
    head = " | ".join(p for p in (grid.task_id, grid.family, grid.variant) if p)
    prompt = grid.prompt or "(caption dropped: empty prompt)"
    band = text_band([(head, (110, 110, 110)), (prompt, (0, 0, 0))], img.width, size)
    out = Image.new("RGB", (img.width, img.height + band.height), "white")
    out.paste(img, (0, 0))
    out.paste(band, (0, img.height))
    return out


def _thumb(img: np.ndarray, side: int) -> Image.Image:
    im = Image.fromarray(img)
    im.thumbnail((side, side), Image.Resampling.LANCZOS)
    tile = Image.new("RGB", (side, side), (235, 235, 235))
    tile.paste(im, ((side - im.width) // 2, (side - im.height) // 2))
    return tile


def graph_figure(key: str, nodes: list[str], width_px: int,
                 height_px: int = GRAPH_HEIGHT) -> Image.Image:
    """The sample's type graph (target <-> every other node), drawn with matplotlib Agg."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import networkx as nx
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.patches import Patch

    from graph200k.graph import HUB, sample_graph

    g = sample_graph(key, nodes)
    g = nx.relabel_nodes(g, {n: n.split("/", 1)[1] for n in g.nodes})
    ring = [n for n in nodes if n != HUB]
    pos = {HUB: (0.0, 0.0)}
    for i, n in enumerate(ring):
        a = 2 * np.pi * i / max(1, len(ring))
        pos[n] = (np.cos(a), np.sin(a))
    dpi = 100
    fig = plt.figure(figsize=(width_px / dpi, height_px / dpi), dpi=dpi)
    ax = fig.add_axes((0, 0, 1, 0.95))
    colours = [KIND_COLOURS[NODE_TYPES[n].kind] for n in g.nodes]
    nx.draw_networkx_edges(g.to_undirected(), pos, ax=ax, edge_color="#999999", width=0.8)
    nx.draw_networkx_nodes(g, pos, ax=ax, node_color=colours, node_size=260,
                           edgecolors="#333333", linewidths=0.6)
    ax.text(0, -0.1, HUB, ha="center", va="top", fontsize=8)
    for n in ring:  # radial labels: dozens of ring nodes stay readable without overlap
        x, y = pos[n]
        deg = np.degrees(np.arctan2(y, x))
        left = x < -1e-9
        ax.text(x * 1.08, y * 1.08, n, fontsize=7, va="center", ha="right" if left else "left",
                rotation=deg - 180 if left else deg, rotation_mode="anchor")
    ax.set_xlim(-1.7, 1.7)
    ax.set_ylim(-1.6, 1.6)
    ax.set_aspect("equal")
    ax.axis("off")
    ax.legend(handles=[Patch(color=c, label=k) for k, c in KIND_COLOURS.items()],
              loc="lower left", fontsize=8, frameon=False)
    fig.suptitle(f"type graph of sample {key}: {len(nodes)} node types, "
                 f"every edge is target <-> node (both directions)", fontsize=9)
    canvas = FigureCanvasAgg(fig)
    canvas.draw()
    arr = np.asarray(canvas.buffer_rgba())[..., :3].copy()
    plt.close(fig)
    return Image.fromarray(arr)


def render_sheet(reader: SampleReader, key: str, thumb: int = 144, per_row: int = 8,
                 degradations: bool = True) -> Image.Image:
    """Every node image of one sample in a labelled contact sheet, its type graph below."""
    m = reader.manifest
    i = m.index_of(key)
    nodes = names_of(int(m.masks[i]))
    if not degradations:
        nodes = [n for n in nodes if NODE_TYPES[n].kind != "degradation"]
    slots = [s.name for n in nodes for s in NODE_TYPES[n].slots]
    label_h = 18
    cols = min(per_row, len(slots))
    rows = (len(slots) + cols - 1) // cols
    width = cols * (thumb + PAD) + PAD
    sheet = Image.new("RGB", (width, rows * (thumb + label_h + PAD) + PAD), "white")
    draw = ImageDraw.Draw(sheet)
    fnt = font(11)
    cache: dict = {}
    for j, slot in enumerate(slots):
        x = PAD + (j % cols) * (thumb + PAD)
        y = PAD + (j // cols) * (thumb + label_h + PAD)
        try:
            tile = _thumb(reader.fetch(key, slot, seed=0, cache=cache), thumb)
        except FetchError as e:  # show the broken node instead of failing the whole sheet
            tile = Image.new("RGB", (thumb, thumb), (255, 225, 225))
            ImageDraw.Draw(tile).multiline_text((4, 4), "\n".join(textwrap.wrap(
                f"{e.reason}: {e}", 22))[:400], font=fnt, fill=(150, 0, 0))
        sheet.paste(tile, (x, y))
        draw.text((x, y + thumb + 2), slot[:24], font=fnt, fill=(0, 0, 0))
    head = text_band([(f"sample {key}  ·  item: {m.item(i)}  ·  shard {int(m.shards[i]):06d}",
                       (0, 0, 0)), (m.description(i), (90, 90, 90))], width, 14)
    graph = graph_figure(key, nodes, width)
    out = Image.new("RGB", (width, head.height + sheet.height + graph.height), "white")
    out.paste(head, (0, 0))
    out.paste(sheet, (0, head.height))
    out.paste(graph, (0, head.height + sheet.height))
    return out


class TaskSpecError(ValueError):
    """A --task / --tasks that does not give a task."""


def load_task(spec: str, tasks_file: str | None) -> Task:
    """`spec` is a JSON task object, or a 0-based line index into `tasks_file` (JSONL)."""
    spec = spec.strip()
    if spec.startswith("{"):
        return _task(spec, "--task")
    try:
        index = int(spec)
    except ValueError:
        raise TaskSpecError(f"--task {spec!r} is neither a line index nor a JSON task") from None
    if not tasks_file:
        raise TaskSpecError("--task N needs --tasks FILE (a JSONL written by "
                            "python -m graph200k.sample_tasks)")
    try:
        text = storage.read_bytes(tasks_file).decode()
    except FileNotFoundError:
        raise TaskSpecError(f"--tasks {tasks_file} does not exist (write it with "
                            "python -m graph200k.sample_tasks --out)") from None
    lines = [line for line in text.splitlines() if line.strip()]
    if not 0 <= index < len(lines):
        raise TaskSpecError(f"{tasks_file} holds {len(lines)} tasks; there is no line {index}")
    return _task(lines[index], f"line {index} of {tasks_file}")


def _task(text: str, where: str) -> Task:
    try:
        return Task.from_json(json.loads(text))
    except json.JSONDecodeError as e:
        raise TaskSpecError(f"{where} is not valid JSON ({e})") from None
    except (KeyError, TypeError, ValueError, AttributeError) as e:
        raise TaskSpecError(f"{where} is not a task ({type(e).__name__}: {e}); write tasks "
                            "with python -m graph200k.sample_tasks") from None


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m graph200k.preview", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    what = ap.add_mutually_exclusive_group(required=True)
    what.add_argument("--task", help="line index into --tasks, or a task as JSON")
    what.add_argument("--key", help="sample key: draw its node contact sheet and type graph")
    ap.add_argument("--tasks", help="task JSONL, a file or URL (python -m graph200k.sample_tasks --out)")
    ap.add_argument("--shards", required=True, help="folder or URL (s3://...) of NNNNNN.tar shards")
    ap.add_argument("--manifest", help="manifest parquet (default: scan the shards)")
    ap.add_argument("--res", type=int, default=384, help="cell side (training) or area^0.5")
    ap.add_argument("--sizing", choices=(TRAIN, INFER), default=TRAIN,
                    help="train: square cells; infer: diffusers' VisualClozeProcessor sizing "
                         "(every row at its first image's aspect)")
    ap.add_argument("--no-degradations", action="store_true",
                    help="contact sheet: leave out the 32 online degradations")
    ap.add_argument("--out", required=True, help="PNG to write")
    args = ap.parse_args(argv)

    if why := storage.unwritable(args.out):
        print(f"preview: error: --out {why}", file=sys.stderr)
        return 2
    try:
        reader = SampleReader(args.shards, args.manifest)
        if args.task is not None:
            task = load_task(args.task, args.tasks)
            image = render_grid(reader.grid(task, args.res, args.sizing))
            what = f"grid of task {task.task_id} ({task.variant}, {len(task.rows)} rows)"
        else:
            image = render_sheet(reader, args.key, degradations=not args.no_degradations)
            what = f"contact sheet of sample {args.key}"
    except (FetchError, KeyError, TaskSpecError, ShardError, OSError) as e:
        print(f"preview: error: {e}", file=sys.stderr)
        return 2
    out = args.out
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    try:
        storage.atomic_write(out, buf.getvalue())
    except OSError as e:
        print(f"preview: error: cannot write {out} ({e})", file=sys.stderr)
        return 1
    print(f"preview: {what} -> {out} ({image.width}x{image.height})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
