"""New subjects and captions for the edit stages (filledit, depthedit: VisualCloze §3.2 gives
both the same rewrite): Qwen2-VL rewriting the caption (the paper), or without a VLM
another Subjects200K item of the same category (`annotators.filledit.same_category_edits`).

The VLM is asked for a JSON list of {"subject", "caption"} and decodes greedily, so one
prompt gives the same rewrite on every rerun. A reply that holds no such list does not
parse: the sample is skipped with that reason (a random tiny VLM always lands there).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass

FILL = "fill"

_PROMPTS = {
    FILL: ('A photo is captioned: "{description}" Its main subject is "{item}". Invent {n} '
           "different new subjects that could stand in the same place in this scene, and "
           "rewrite the caption for each so that only the subject changes and the "
           "background stays the same. Reply with a JSON list only, like "
           '[{{"subject": "...", "caption": "..."}}].'),
}
MAX_CAPTION_CHARS = 400


@dataclass
class VLMOptions:
    """The caption rewriter of `rewrite: vlm` (loaded in the stage's actor, beside FLUX)."""

    rewrite_model: str = "Qwen/Qwen2-VL-7B-Instruct"
    rewrite_revision: str | None = None
    rewrite_max_new_tokens: int = 400


class RewriteError(ValueError):
    """A rewrite that does not parse into a {subject, caption} list."""


def rewrite_prompt(kind: str, item: str, description: str, n: int) -> str:
    return _PROMPTS[kind].format(item=item, description=description.strip(), n=n)


def prompt_words() -> str:
    """The words of the prompts (the tiny tokenizers' vocabulary includes them)."""
    return " ".join(_PROMPTS.values())


def _json_list(text: str):
    text = re.sub(r"```(?:json)?", "", text)
    start, end = text.find("["), text.rfind("]")
    if start < 0 or end <= start:
        return None
    try:
        return json.loads(text[start:end + 1])
    except json.JSONDecodeError:
        return None


def parse_rewrites(text: str, n: int, old_subject: str | None = None) -> list[dict]:
    """Up to n distinct {"subject", "caption"} entries from a VLM reply; `old_subject` is
    dropped (a filledit must change the subject). Raises RewriteError when none remain."""
    entries = _json_list(text)
    if not isinstance(entries, list):
        raise RewriteError(f"the rewrite does not parse (no JSON list): {text.strip()[:80]!r}")
    out, seen = [], set()
    old = (old_subject or "").strip().lower()
    for e in entries:
        if not isinstance(e, dict):
            continue
        subject, caption = e.get("subject"), e.get("caption")
        if not (isinstance(subject, str) and isinstance(caption, str)):
            continue
        subject, caption = subject.strip(), " ".join(caption.split())
        if not subject or not caption or len(caption) > MAX_CAPTION_CHARS:
            continue
        if subject.lower() in seen or (old and subject.lower() == old):
            continue
        seen.add(subject.lower())
        out.append({"subject": subject, "caption": caption})
        if len(out) == n:
            break
    if not out:
        raise RewriteError("the rewrite does not parse: its JSON list holds no new "
                           f"{{subject, caption}} entry: {text.strip()[:80]!r}")
    return out


def rewrite_batch(rewriter: "VLMRewriter", inputs: list, n: int) -> None:
    """Fill `edits` of every input holding a `rewrite_prompt` from one batched generate (the
    old subject dropped: both edits replace it); an input whose reply does not parse gets
    `skip` (its sample is skipped with the reason)."""
    todo = [x for x in inputs if x.get("rewrite_prompt") and not x.get("skip")]
    for x, reply in zip(todo, rewriter.generate([x["rewrite_prompt"] for x in todo])):
        try:
            x["edits"] = parse_rewrites(reply, n, x.get("item"))
        except RewriteError as e:
            x["skip"] = str(e)


def predict_edits(stage, inputs: list) -> list:
    """The edit stages' `predict`: captions rewritten by the VLM when the stage has one,
    then every (sample, variant) edit generated `images_per_call` at a time through
    `stage._generate(inputs, jobs)`."""
    from annotators.diffusion import Job, collect, run_jobs

    if stage.rewriter is not None:
        rewrite_batch(stage.rewriter, inputs, stage.options.variants)
    jobs = [Job(i, v, x["seeds"][v], e) for i, x in enumerate(inputs) if not x.get("skip")
            for v, e in enumerate(x["edits"])]
    done = run_jobs(jobs, stage.options.images_per_call, lambda c: stage._generate(inputs, c))
    counts = [0 if x.get("skip") else len(x["edits"]) for x in inputs]
    return collect(inputs, done, counts, [{"edits": x.get("edits")} for x in inputs])


class VLMRewriter:
    """Qwen2-VL (or any chat model `AutoModelForImageTextToText` loads) rewriting captions;
    built once per actor. Greedy decoding, left padding, one `generate` per batch."""

    def __init__(self, stage: str, model: str, revision, device, dtype, max_new_tokens: int,
                 offload: bool = False):
        from transformers import AutoModelForImageTextToText, AutoTokenizer

        from annotators.models import model_dir

        self.stage, self.device, self.max_new_tokens = stage, device, max_new_tokens
        self.offload = offload  # kept on the CPU between batches, beside an offloaded FLUX
        path = model_dir(stage, model, revision)
        self.tokenizer = AutoTokenizer.from_pretrained(path, revision=revision)
        self.tokenizer.padding_side = "left"
        self.model = AutoModelForImageTextToText.from_pretrained(
            path, revision=revision, dtype=dtype).eval()
        if not offload:
            self.model.to(device)

    def generate(self, prompts: list[str]) -> list[str]:
        import torch

        if not prompts:
            return []
        chats = [self.tokenizer.apply_chat_template([{"role": "user", "content": p}],
                                                    tokenize=False, add_generation_prompt=True)
                 for p in prompts]
        batch = self.tokenizer(chats, return_tensors="pt", padding=True,
                               add_special_tokens=False).to(self.device)
        if self.offload:
            self.model.to(self.device)
        try:
            with torch.no_grad():
                out = self.model.generate(**batch, max_new_tokens=self.max_new_tokens,
                                          do_sample=False)
        finally:
            if self.offload:
                self.model.to("cpu")
                torch.cuda.empty_cache()
        new = out[:, batch["input_ids"].shape[1]:]
        return self.tokenizer.batch_decode(new, skip_special_tokens=True)
