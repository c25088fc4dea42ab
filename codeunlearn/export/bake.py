"""Bake an edit into the stock weights: distil the edited bottleneck model into the base architecture.

A bottleneck export keeps every base weight and a switch (`bottleneck_enabled=False`) that gives the base model
back. A baked export has neither: a copy of the base model (the *student*, stock `model_type`, no remote code) is
trained to match the next-token distributions of the edited bottlenecked model (the *teacher*) on the train split of
the forget corpora, and those of the base model on the train split of the retain corpora (`retain_teacher="base"`,
the default: the bottleneck's own reconstruction cost is not part of the edit, so the student is not taught it; with
`"edited"` the retain text is distilled from the edited model too). The loss per micro-batch is

    KL(teacher(forget) || student(forget)) + retain_weight * KL(teacher_retain(retain) || student(retain)),

a mean over tokens of the KL divergence of the full next-token distributions. It is its own method, not the edit:
the student learns the edit's effect where the distillation text shows it, and the card and tables label it `bake`.

With `perturb_alpha > 0` the student starts from perturbed weights, as in UNDO (Lee et al. 2025, arXiv 2506.06278,
"distillation robustifies unlearning"): every matrix of the decoder layers becomes (1 - alpha) W + alpha * std(W) * N
with N standard normal (seeded), so the distillation must rebuild the weights rather than nudge them, which is what
made UNDO's forgetting survive relearning; larger alpha needs more distillation steps to restore the retain loss.

The optimisation loop is the gradient baselines' (`codeunlearn.baselines.trainer.train_baseline`: AdamW, warm-up and
decay, clipping, bf16 autocast, several processes through `accelerate`).
"""

from __future__ import annotations

import json
import math
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from codeunlearn import __version__
from codeunlearn.baselines.base import MethodConfig, UnlearningMethod
from codeunlearn.baselines.trainer import BaselineResult, BaselineTrainingArguments, train_baseline
from codeunlearn.bottleneck.architectures import decoder_layers, model_type_of
from codeunlearn.bottleneck.model import BottleneckedModel
from codeunlearn.errors import CodeunlearnError, check_range
from codeunlearn.evaluate.evaluation import mean_loss
from codeunlearn.evaluate.loss_table import add_deltas
from codeunlearn.export.card import BAKE_SPEC_NAME, EVAL_REPORT_NAME, write_model_card
from codeunlearn.export.linear import verify_stock_export
from codeunlearn.io import atomic_directory, atomic_write_text, stamp_checksums

BAKE_METHOD = "bake"
METRICS_FILE = "bake_metrics.jsonl"
MIN_TRAIN_CHUNKS = 8  # below this a corpus shows the student too little of the edit (or of the base) to copy it


@dataclass
class BakeConfig(MethodConfig):
    """The distillation's optimiser and targets. Defaults are fixed before any held-out number was seen: the
    fine-tuning learning rate the baselines scale to SmolLM2-135M (7e-5), a short warm-up then cosine decay, no
    weight decay (the student should stay near the base), 100 steps of 4 forget + 4 retain chunks of 256 tokens
    (204,800 tokens: about 20 minutes of a 2-core CPU in bf16 for SmolLM2-135M, the budget the step count was set
    by)."""

    learning_rate: float = field(default=7e-5, metadata={"help": "AdamW peak learning rate."})
    weight_decay: float = field(default=0.0, metadata={"help": "AdamW weight decay (matrices only)."})
    warmup_ratio: float = field(default=0.1, metadata={"help": "Fraction of max_steps spent in linear warm-up."})
    lr_scheduler: Literal["linear", "cosine", "constant"] = field(
        default="cosine", metadata={"help": "Decay after the warm-up."}
    )
    max_steps: int = field(default=100, metadata={"help": "Distillation steps."})
    batch_size: int = field(
        default=4, metadata={"help": "Chunks per step from each of the forget and retain corpora (per process)."}
    )
    retain_teacher: Literal["base", "edited"] = field(
        default="base",
        metadata={
            "help": "What the student copies on retain text: the base model (the edit's retain side without the "
            "bottleneck's reconstruction cost) or the edited bottleneck model."
        },
    )
    retain_weight: float = field(default=1.0, metadata={"help": "Weight of the retain KL term."})
    perturb_alpha: float = field(
        default=0.0,
        metadata={"help": "UNDO: start from (1-a)W + a*std(W)*noise on every decoder matrix (0 = no perturbation)."},
    )
    perturb_seed: int = field(default=0, metadata={"help": "Seed of the perturbation noise."})

    def __post_init__(self) -> None:
        super().__post_init__()
        check_range("perturb_alpha", self.perturb_alpha, 0.0 <= self.perturb_alpha <= 1.0, "in [0, 1] (0 = none)")
        check_range(
            "retain_weight", self.retain_weight, math.isfinite(self.retain_weight) and self.retain_weight >= 0, ">= 0"
        )
        if self.retain_teacher not in ("base", "edited"):
            raise CodeunlearnError(f"retain_teacher={self.retain_teacher!r}", "use `base` or `edited`")


def token_kl(teacher_logits: Tensor, student_logits: Tensor) -> Tensor:
    """Mean over tokens of KL(teacher || student) between next-token distributions, in fp32."""
    vocab = student_logits.shape[-1]
    teacher = F.log_softmax(teacher_logits.float().reshape(-1, vocab), -1)
    student = F.log_softmax(student_logits.float().reshape(-1, vocab), -1)
    return F.kl_div(student, teacher, log_target=True, reduction="batchmean")


@torch.no_grad()
def perturb_(model: nn.Module, alpha: float, seed: int) -> int:
    """UNDO's perturbation in place: every matrix of the decoder layers becomes (1 - alpha) W + alpha std(W) N.
    Returns how many matrices changed. Embeddings, the unembedding and norm weights are kept: they carry token
    identity and scale, which noise would only make the distillation relearn."""
    generator = torch.Generator().manual_seed(seed)
    changed = 0
    for layer in decoder_layers(model):
        for param in layer.parameters():
            if param.ndim < 2:
                continue
            scale = alpha * float(param.float().std())  # the std before shrinking
            noise = torch.randn(param.shape, generator=generator).to(param.device, param.dtype)
            param.mul_(1.0 - alpha).add_(noise * scale)
            changed += 1
    return changed


class BakeDistillation(UnlearningMethod):
    """The distillation objective of `bake` as an `UnlearningMethod`, so the baselines' loop trains it."""

    name: ClassVar[str] = BAKE_METHOD
    config_class: ClassVar[type[MethodConfig]] = BakeConfig

    def __init__(self, teacher: BottleneckedModel, config: BakeConfig | None = None) -> None:
        super().__init__(config)
        if not teacher.edits:
            raise CodeunlearnError("the bottleneck has no active edit to bake", "pass --edit EDIT.json")
        self.teacher: BottleneckedModel | None = teacher.eval().requires_grad_(False)

    @property
    def needs_retain(self) -> bool:
        return True

    def prepare(self, model: nn.Module, forget: Tensor, retain: Tensor | None) -> dict[str, Any]:
        self.teacher.to(next(model.parameters()).device)
        config: BakeConfig = self.config
        if config.perturb_alpha > 0:
            return {"perturbed_matrices": perturb_(model, config.perturb_alpha, config.perturb_seed)}
        return {"perturbed_matrices": 0}

    def loss(self, model: nn.Module, forget: Tensor | None, retain: Tensor | None) -> tuple[Tensor, dict[str, float]]:
        config: BakeConfig = self.config
        with torch.no_grad():
            forget_target = self.teacher(input_ids=forget, use_cache=False).logits
            if config.retain_teacher == "base":
                with self.teacher.disabled():
                    retain_target = self.teacher(input_ids=retain, use_cache=False).logits
            else:
                retain_target = self.teacher(input_ids=retain, use_cache=False).logits
        # One student forward over both halves: larger matrix products, one backward.
        logits = model(input_ids=torch.cat([forget, retain]), use_cache=False).logits
        kl_forget = token_kl(forget_target, logits[: len(forget)])
        kl_retain = token_kl(retain_target, logits[len(forget) :])
        loss = kl_forget + config.retain_weight * kl_retain
        return loss, {"kl_forget": float(kl_forget.detach()), "kl_retain": float(kl_retain.detach())}

    def release(self) -> None:
        self.teacher = None


def check_distillation_text(name: str, chunks: Tensor, seq_len: int) -> None:
    """One-line error for a corpus whose train split is too small to distil on."""
    if chunks.ndim != 2 or len(chunks) < MIN_TRAIN_CHUNKS:
        got = 0 if chunks.ndim != 2 else len(chunks)
        raise CodeunlearnError(
            f"the {name} corpora give {got} train chunks of {seq_len} tokens; bake needs at least {MIN_TRAIN_CHUNKS}",
            f"pass more {name} text (--{name}_corpora) or a smaller --seq_len",
        )


@dataclass
class BakeOutcome:
    """A finished bake: the training record and the held-out loss rows (base, edited teacher, baked student)."""

    result: BaselineResult
    rows: list[dict[str, Any]]
    metrics: list[dict[str, Any]]


def heldout_rows(
    teacher: BottleneckedModel,
    student: nn.Module,
    heldout: dict[str, Tensor],
    batch_size: int = 8,
    bf16: bool = False,
) -> list[dict[str, Any]]:
    """Held-out forget and retain loss of the base model, the edited bottleneck model and the baked student, with
    changes against the base model (the loss table's rows)."""

    def row(name: str, model: nn.Module) -> dict[str, Any]:
        losses = {k: mean_loss(model, v, batch_size, 0, None, bf16) for k, v in heldout.items()}
        return {"row": name, "codes_removed": None, "forget_loss": losses["forget"], "retain_loss": losses["retain"]}

    with teacher.disabled():
        rows = [row("base", teacher)]
    removed = sum(edit.num_codes for edit in teacher.edits)
    rows.append({**row("edited bottleneck (teacher)", teacher), "codes_removed": removed})
    rows.append(row("baked (student)", student))
    add_deltas(rows, reference="base")
    return rows


def bake(
    teacher: BottleneckedModel,
    student: nn.Module,
    forget: Tensor,
    retain: Tensor,
    config: BakeConfig,
    train_args: BaselineTrainingArguments,
    heldout: dict[str, Tensor] | None = None,
    eval_batch_size: int = 8,
) -> BakeOutcome:
    """Distil `teacher` (an edited `BottleneckedModel`) into `student` (a copy of its base model, trained in place)
    on forget and retain train chunks, and measure the held-out rows if `heldout` ({"forget", "retain"} chunks) is
    given. `train_args.output_dir` receives the loop's metrics; the student is not saved here (`save_baked`)."""
    seq_len = forget.shape[-1] if forget.ndim == 2 else 0
    check_distillation_text("forget", forget, seq_len)
    check_distillation_text("retain", retain, seq_len)
    if model_type_of(student) != model_type_of(teacher.model):
        raise CodeunlearnError(
            f"the student is a {model_type_of(student)} model, the teacher's base a {model_type_of(teacher.model)}",
            "load the student from the bottleneck's base model",
        )
    method = BakeDistillation(teacher, config)
    result = train_baseline(student, method, forget, retain, train_args)
    student.eval().requires_grad_(False)
    teacher.requires_grad_(False)
    rows = heldout_rows(teacher, student, heldout, eval_batch_size, train_args.bf16) if heldout else []
    return BakeOutcome(result, rows, result.metrics)


def bake_spec(
    outcome: BakeOutcome,
    teacher: BottleneckedModel,
    base_model: str,
    bottleneck: str,
    config: BakeConfig,
    forget_corpora: list[str],
    retain_corpora: list[str],
    seq_len: int,
) -> dict[str, Any]:
    """What `codeunlearn_bake.json` records: the method, the teacher, the distillation's cost and the rows."""
    result = outcome.result
    return {
        "method": BAKE_METHOD,
        "codeunlearn_version": __version__,
        "base_model": base_model,
        "base_model_type": model_type_of(teacher.model),
        "topics": [edit.topic for edit in teacher.edits],
        "teacher": {
            "bottleneck": bottleneck,
            "edits": [
                {"topic": e.topic, "intervention": e.intervention, "num_codes": e.num_codes} for e in teacher.edits
            ],
        },
        "distillation": {
            "steps": result.steps,
            "tokens": sum(result.tokens.values()),
            "tokens_by_corpus": result.tokens,
            "seconds": result.train_seconds,
            "learning_rate": config.learning_rate,
            "batch_size": config.batch_size,
            "seq_len": seq_len,
            "forget_corpora": list(forget_corpora),
            "retain_corpora": list(retain_corpora),
            "retain_teacher": config.retain_teacher,
            "retain_weight": config.retain_weight,
            "perturb": (
                {"alpha": config.perturb_alpha, "seed": config.perturb_seed} if config.perturb_alpha > 0 else None
            ),
            "config": config.to_dict(),
        },
        "rows": outcome.rows,
    }


def save_baked(
    student: nn.Module,
    tokenizer: Any,
    output_dir: str | Path,
    spec: dict[str, Any],
    metrics: list[dict[str, Any]],
    overwrite: bool = False,
    eval_report: str | Path | None = None,
    verify: bool = True,
    license: str | None = None,
) -> Path:
    """Write the baked student as a stock transformers directory (`save_pretrained`: its base `model_type`, no
    remote code), with its tokenizer, `codeunlearn_bake.json`, the loop's metrics, the eval report if given, and a
    model card labelling the method. Atomic; with `verify` the directory is reloaded with plain
    `AutoModelForCausalLM.from_pretrained` and its logits compared before it is moved into place."""
    if tokenizer is None:
        raise CodeunlearnError("no tokenizer to export", "pass the base model's tokenizer (--tokenizer NAME_OR_DIR)")
    with atomic_directory(output_dir, overwrite=overwrite) as tmp:
        student.save_pretrained(tmp)
        stamp_checksums(tmp)  # transformers writes no checksum; our loaders check this one
        tokenizer.save_pretrained(tmp)
        atomic_write_text(tmp / BAKE_SPEC_NAME, json.dumps(spec, indent=1) + "\n")
        atomic_write_text(tmp / METRICS_FILE, "".join(json.dumps(m) + "\n" for m in metrics))
        if eval_report is not None:
            atomic_write_text(tmp / EVAL_REPORT_NAME, Path(eval_report).read_text())
        write_model_card(tmp, license=license)
        if verify:
            verify_stock_export(student, tmp, what="baked export")
    return Path(output_dir)


def scratch_training_arguments(
    parent: str | Path, seed: int, bf16: bool, progress: bool, log_every: int
) -> tuple[tempfile.TemporaryDirectory, BaselineTrainingArguments]:
    """Training arguments whose output (the loop's metrics) goes to a temporary directory beside `parent`, so the
    export directory itself is only ever written whole."""
    Path(parent).parent.mkdir(parents=True, exist_ok=True)
    scratch = tempfile.TemporaryDirectory(prefix=f".{Path(parent).name}.bake.", dir=Path(parent).parent)
    args = BaselineTrainingArguments(
        output_dir=scratch.name,
        overwrite=True,
        progress=progress,
        bf16=bf16,
        seed=seed,
        log_every=log_every,
        save_model=False,
    )
    return scratch, args
