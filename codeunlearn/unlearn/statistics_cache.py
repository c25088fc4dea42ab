"""Retain statistics that belong to a bottleneck: computed once, kept in its directory, keyed by corpus fingerprint.

Forgetting a new topic then costs one forward pass over the topic's text: the retain side (general text, the same
for every topic) was counted when the bottleneck was trained, or the first time a retain corpus was named.

    BOTTLENECK_DIR/statistics/retain-<corpus fingerprint>.safetensors (+ .json)

A corpus fingerprint hashes the packed token ids a statistics pass reads, so it changes with the text, the
tokenizer, the document split, the chunk length and the token cap, and with nothing else. The statistics also
record the fingerprint of the bottleneck they were counted on; a file from another bottleneck is refused.
"""

from __future__ import annotations

from pathlib import Path

from codeunlearn.errors import CodeunlearnError
from codeunlearn.unlearn.statistics import CodeStatistics

STATISTICS_DIR = "statistics"
PREFIX = "retain-"


def cache_path(bottleneck_dir: str | Path, fingerprint: str) -> Path:
    """Where the retain statistics of the corpus with `fingerprint` are kept for this bottleneck."""
    return Path(bottleneck_dir) / STATISTICS_DIR / f"{PREFIX}{fingerprint}.safetensors"


def cached_fingerprints(bottleneck_dir: str | Path) -> list[str]:
    """Corpus fingerprints of the retain statistics kept in a bottleneck directory."""
    folder = Path(bottleneck_dir) / STATISTICS_DIR
    return sorted(p.stem[len(PREFIX) :] for p in folder.glob(f"{PREFIX}*.safetensors"))


def save_retain_statistics(stats: CodeStatistics, bottleneck_dir: str | Path) -> Path:
    """Keep `stats` (which must carry their corpus fingerprint) in the bottleneck directory."""
    if not stats.corpus_fingerprint:
        raise ValueError("retain statistics without a corpus fingerprint cannot be cached")
    path = cache_path(bottleneck_dir, stats.corpus_fingerprint)
    stats.save(path)
    return path


def load_retain_statistics(
    bottleneck_dir: str | Path, bottleneck_fingerprint: str, fingerprint: str | None = None
) -> CodeStatistics | None:
    """The cached retain statistics of corpus `fingerprint` (None: the only ones cached), or None if not cached.

    Refused with a one-line error: statistics counted on another bottleneck, or several cached corpora and no
    fingerprint to choose between them."""
    if fingerprint is None:
        found = cached_fingerprints(bottleneck_dir)
        if not found:
            return None
        if len(found) > 1:
            raise CodeunlearnError(
                f"{bottleneck_dir} keeps retain statistics of {len(found)} corpora ({', '.join(found)})",
                "name the retain corpus with --retain_corpora (the same split settings as when it was counted)",
            )
        fingerprint = found[0]
    path = cache_path(bottleneck_dir, fingerprint)
    if not path.is_file():
        return None
    stats = CodeStatistics.load(path)
    if stats.bottleneck_fingerprint != bottleneck_fingerprint:
        raise CodeunlearnError(
            f"retain statistics {path} were counted on another bottleneck (fingerprint "
            f"{stats.bottleneck_fingerprint or 'none'}, this one is {bottleneck_fingerprint})",
            f"delete {path} (they are recomputed when --retain_corpora is given)",
        )
    return stats
