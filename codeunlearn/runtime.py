"""How a run executes: batching, precision and progress of forward passes, and the options every run shares.

bf16 autocast of the frozen model is opt-in (`bf16=True`): it is 3-4x faster on GPUs and on CPUs with bf16 matmul
kernels (AMX / AVX512-BF16), but 6-50x *slower* on AVX2-only CPUs (`bf16_is_fast` tells them apart). fp16 autocast
(`fp16=True`, training only) is for GPUs without fast bf16; its trained parameters stay fp32 and their loss is
scaled (`codeunlearn.train.precision`). Bottleneck distances always stay fp32.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import threading
import time
import typing
from collections.abc import Iterator
from dataclasses import dataclass, field

import torch
from torch import Tensor
from tqdm.auto import tqdm

from codeunlearn.errors import CodeunlearnError

BF16_HELP = (
    "bf16 autocast of the frozen model's forward passes (bottleneck math stays fp32). Default: off where a run's "
    "numbers must not depend on the machine (train, forget, demo, baseline, relearn: training and the statistics "
    "it keeps share one precision); for stats, calibrate and eval, on where bf16 matmuls are fast (a GPU, a CPU with "
    "AVX512-BF16/AMX), decided when the command runs. `--no_bf16` turns it off."
)
FP16_HELP = (
    "fp16 autocast of the frozen model's forward passes, for GPUs without fast bf16 (V100, T4): the trained "
    "parameters stay fp32 and their loss is scaled (torch.amp.GradScaler; an update whose gradients overflow is "
    "skipped and the scale halved, logged as grad_scale and skipped_updates); bottleneck math stays fp32. Not with "
    "--bf16."
)


@dataclass
class RunArguments:
    """The options every run shares, declared once: a command composes the ones it uses (`run_arguments`), and so
    do the library's own argument classes (`TrainingArguments`, `BaselineTrainingArguments`, `RelearnConfig`).
    Each field's help says what it does."""

    output_dir: str = field(metadata={"help": "Directory the run writes into."})
    overwrite: bool = field(default=False, metadata={"help": "Replace what an earlier run wrote there."})
    progress: bool = field(default=True, metadata={"help": "Show progress bars."})
    bf16: bool = field(default=False, metadata={"help": BF16_HELP})
    fp16: bool = field(default=False, metadata={"help": FP16_HELP})
    resume: bool = field(
        default=False,
        metadata={"help": "Continue an interrupted run from the state it saved (refused if it saved none)."},
    )


def run_arguments(*names: str, writes: str | None = None) -> type:
    """A dataclass of the named `RunArguments` fields (in their declared order), for a command to compose or an
    argument class to inherit. `writes` says what `output_dir` receives, for its help."""
    unknown = set(names) - {f.name for f in dataclasses.fields(RunArguments)}
    if unknown:
        raise ValueError(f"no run arguments {sorted(unknown)}")
    hints = typing.get_type_hints(RunArguments)
    chosen = []
    for f in dataclasses.fields(RunArguments):
        if f.name not in names:
            continue
        metadata = dict(f.metadata)
        if f.name == "output_dir" and writes:
            metadata["help"] = f"Directory for {writes}."
        chosen.append((f.name, hints[f.name], field(default=f.default, metadata=metadata)))
    return dataclasses.make_dataclass("RunArguments", chosen)


def check_precision(bf16: bool, fp16: bool) -> None:
    """Refuse both autocast precisions at once (one run autocasts to one of them)."""
    if bf16 and fp16:
        raise CodeunlearnError(
            "--bf16 and --fp16 were both given", "pass one: --bf16 where bf16 is fast (most GPUs), else --fp16"
        )


def autocast(device: torch.device | str, enabled: bool = True) -> contextlib.AbstractContextManager:
    """bf16 autocast of forward passes on `device` when `enabled`."""
    return mixed_precision(device, bf16=enabled)


def mixed_precision(
    device: torch.device | str, bf16: bool = False, fp16: bool = False
) -> contextlib.AbstractContextManager:
    """Autocast of forward passes on `device` to bf16 or fp16, or none (`check_precision` refuses both)."""
    check_precision(bf16, fp16)
    if not (bf16 or fp16):
        return contextlib.nullcontext()
    return torch.autocast(device_type=torch.device(device).type, dtype=torch.bfloat16 if bf16 else torch.float16)


_bars_off = False  # set by `progress_bars(False)`: codeunlearn's own bars stay hidden whatever a caller passes


def bars_enabled(requested: bool = True) -> bool:
    """Whether to draw a bar the caller asks for (`requested`): not inside `progress_bars(False)`."""
    return requested and not _bars_off


@contextlib.contextmanager
def progress_bars(enabled: bool) -> Iterator[None]:
    """With `enabled` False, silence every progress bar for the duration: codeunlearn's (`ticker`, `batches`) and
    those its libraries draw on their own (transformers' "Loading weights" and GGUF de-quantizing bars, datasets'
    map/load bars, huggingface_hub's downloads), which no `progress` argument reaches. What was switched off is
    switched back on afterwards, so one quiet command (or test) leaves the next as it found it."""
    global _bars_off
    if enabled:
        yield
        return
    restore = []
    with contextlib.suppress(ImportError):
        from transformers.utils import logging as transformers_logging

        if transformers_logging.is_progress_bar_enabled():
            transformers_logging.disable_progress_bar()
            restore.append(transformers_logging.enable_progress_bar)
    with contextlib.suppress(ImportError):
        # The GGUF de-quantizing bar is a plain `tqdm.auto.tqdm` that disable_progress_bar does not reach: the module's
        # name for it is swapped for a disabled one while bars are off.
        from transformers import modeling_gguf_pytorch_utils as gguf_utils

        original = gguf_utils.tqdm
        gguf_utils.tqdm = functools.partial(original, disable=True)
        restore.append(functools.partial(setattr, gguf_utils, "tqdm", original))
    with contextlib.suppress(ImportError):
        import datasets

        if not datasets.are_progress_bars_disabled():
            datasets.disable_progress_bars()
            restore.append(datasets.enable_progress_bars)
    with contextlib.suppress(ImportError):
        from huggingface_hub import utils as hub_utils

        if not hub_utils.are_progress_bars_disabled():
            hub_utils.disable_progress_bars()
            restore.append(hub_utils.enable_progress_bars)
    previous, _bars_off = _bars_off, True
    try:
        yield
    finally:
        _bars_off = previous
        for switch_on in restore:
            switch_on()


def batches(chunks: Tensor, batch_size: int, desc: str | None = None, progress: bool = True) -> Iterator[Tensor]:
    """Yield consecutive batches of packed chunks, with a progress bar when `desc` is given."""
    starts = range(0, len(chunks), batch_size)
    bar = tqdm(starts, desc=desc, unit="batch", disable=not bars_enabled(progress) or desc is None, leave=False)
    for start in bar:
        yield chunks[start : start + batch_size]


def model_device(model: torch.nn.Module) -> torch.device:
    return next(model.parameters()).device


def bf16_is_fast() -> bool:
    """Whether bf16 autocast speeds up forward passes here: on a GPU, or a CPU with bf16 matmul kernels
    (AVX512-BF16/AMX). On an AVX2-only CPU a bf16 matmul runs on a slow fallback, 6-50x slower than fp32."""
    if torch.cuda.is_available():
        return True
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


@contextlib.contextmanager
def ticker(desc: str, enabled: bool = True) -> Iterator[None]:
    """A tqdm bar that shows elapsed time for a step that reports no progress of its own (e.g. loading a model)."""
    bar = tqdm(desc=desc, bar_format="{desc}: {elapsed}", disable=not bars_enabled(enabled), leave=False)
    stop = threading.Event()

    def tick() -> None:
        while not stop.wait(1.0):
            bar.refresh()

    thread = threading.Thread(target=tick, daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()
        bar.close()


class Stopwatch:
    """Wall-clock seconds of named stages (a stage entered twice adds up), printed as each one starts and ends."""

    def __init__(self, verbose: bool = True) -> None:
        self.seconds: dict[str, float] = {}
        self.verbose = verbose

    @contextlib.contextmanager
    def stage(self, name: str) -> Iterator[None]:
        start = time.perf_counter()
        if self.verbose:
            print(f"[{name}] ...", flush=True)
        try:
            yield
        finally:
            self.seconds[name] = self.seconds.get(name, 0.0) + time.perf_counter() - start
        if self.verbose:
            print(f"[{name}] done in {self.seconds[name]:.1f} s", flush=True)

    @property
    def total(self) -> float:
        return sum(self.seconds.values())
