"""The selection report of `forget_curves.py`: the top codes of each layer with their counts on the statistics text
and the tokens they fire on in the forget text (what a reader checks to see that a selection picked topic words).
"""

from __future__ import annotations

import torch

from codeunlearn.bottleneck.edit import Edit
from codeunlearn.bottleneck.model import BottleneckedModel
from codeunlearn.kinds.codebook.bottleneck import QuantizeOutput, flat_code_ids
from codeunlearn.runtime import autocast, batches, model_device
from codeunlearn.tables import markdown_table
from codeunlearn.unlearn.statistics import CodeStatistics

if __package__:
    from .common import markdown_safe
else:  # run as a file: Python puts the script's own folder first on sys.path
    from common import markdown_safe


def split_flat_id(code: int, num_heads: int, codebook_size: int) -> tuple[int, int, int]:
    """flat id -> (stage, head, code within the head's codebook)."""
    slot, index = divmod(code, codebook_size)
    stage, head = divmod(slot, num_heads)
    return stage, head, index


@torch.no_grad()
def find_examples(
    bmodel: BottleneckedModel, chunks: torch.Tensor, wanted: dict[int, list[int]], per_code: int, args
) -> dict:
    """Positions (chunk, position) where each wanted code fires, scanning `chunks` until every code has `per_code`."""
    config = bmodel.config
    found: dict[tuple[int, int], list[tuple[int, int]]] = {
        (layer, c): [] for layer, codes in wanted.items() for c in codes
    }
    offset = 0

    def observe(layer: int, states: torch.Tensor, result: QuantizeOutput) -> None:
        if layer not in wanted:
            return
        ids = flat_code_ids(result.codes, config.num_heads, config.codebook_size)  # (B, T, S, H)
        ids = ids.flatten(2).cpu()
        for code in wanted[layer]:
            hits = found[(layer, code)]
            if len(hits) >= per_code:
                continue
            for b, t in torch.nonzero((ids == code).any(-1)).tolist():
                if len(hits) >= per_code:
                    break
                hits.append((offset + b, t))

    device = model_device(bmodel)
    with autocast(device, args.bf16):
        for batch in batches(chunks, args.batch_size, desc="selection examples"):
            bmodel.run_to_deepest(batch.to(device), observe)
            offset += len(batch)
            if all(len(hits) >= per_code for hits in found.values()):
                break
    return found


def context_string(tokenizer, chunk: torch.Tensor, position: int, left: int = 8, right: int = 3) -> tuple[str, str]:
    ids = chunk.tolist()
    token = tokenizer.decode(ids[position : position + 1])
    before = tokenizer.decode(ids[max(0, position - left) : position])
    after = tokenizer.decode(ids[position + 1 : position + 1 + right])
    return token, f"{before}[{token}]{after}"


def selection_report(
    bmodel, tokenizer, edit: Edit, forget: CodeStatistics, retain: CodeStatistics, forget_chunks, args
) -> dict:
    config = bmodel.config
    report: dict = {"layers": {}}
    wanted = {layer: codes.codes[: args.example_codes] for layer, codes in edit.layers.items()}
    examples = (
        find_examples(bmodel, forget_chunks, wanted, args.examples_per_code, args) if args.example_codes > 0 else {}
    )
    for layer, codes in sorted(edit.layers.items()):
        top = []
        for rank, (code, score) in enumerate(
            zip(codes.codes[: args.top_codes], codes.scores[: args.top_codes], strict=True), start=1
        ):
            stage, head, index = split_flat_id(code, config.num_heads, config.codebook_size)
            entry = {
                "rank": rank,
                "code": code,
                "stage": stage,
                "head": head,
                "index": index,
                "score": score,
                "forget_count": int(forget.counts[layer][code]),
                "retain_count": int(retain.counts[layer][code]),
                "forget_freq": float(forget.frequency(layer)[code]),
                "retain_freq": float(retain.frequency(layer)[code]),
            }
            hits = examples.get((layer, code), [])
            if hits:
                entry["examples"] = [
                    dict(zip(("token", "context"), context_string(tokenizer, forget_chunks[c], t), strict=True))
                    for c, t in hits
                ]
            top.append(entry)
        report["layers"][layer] = {"eligible_codes": len(codes.codes), "top": top}
    return report


def code_row(e: dict) -> list[object]:
    """A selected code's row: where it sits, its counts and frequencies, its score."""
    counts = [e["forget_count"], e["retain_count"], f"{e['forget_freq']:.2e}", f"{e['retain_freq']:.2e}"]
    return [e["rank"], e["code"], f"{e['stage']}/{e['head']}/{e['index']}", *counts, f"{e['score']:.3f}"]


def selection_markdown(report: dict, args) -> list[str]:
    lines = ["## Selection report", ""]
    lines.append(
        f"Top {args.top_codes} codes per layer by score log((f_forget + a) / (f_retain + a)), a = 1 / retain tokens; counts are "
        "firings on the statistics (train) split. Examples: the token at which the code fires (in brackets) with its left "
        "context, from forget-train text."
    )
    for layer, data in report["layers"].items():
        lines += ["", f"### Layer {layer} ({data['eligible_codes']} eligible codes selected)", ""]
        header = ["rank", "code", "stage/head/index", "forget count", "retain count", "forget freq", "retain freq"]
        rows = [code_row(e) for e in data["top"]]
        lines += markdown_table([*header, "score"], rows).split("\n")
        with_examples = [e for e in data["top"] if e.get("examples")]
        if with_examples:
            lines += ["", "Example firings:", ""]
            for e in with_examples:
                tokens = ", ".join(f"`{markdown_safe(x['token'])}`" for x in e["examples"])
                lines.append(f"- code {e['code']} (rank {e['rank']}), tokens: {tokens}")
                for x in e["examples"][:3]:
                    lines.append(f"  - `{markdown_safe(x['context'])}`")
    return lines
