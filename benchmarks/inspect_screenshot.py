"""A screenshot of a `codeunlearn inspect` page, rendered by headless Chromium (Playwright driving the system's
Chromium: `apt-get install chromium`, `pip install playwright`; no browser download).

Of a page you have:

    python benchmarks/inspect_screenshot.py --page outputs/run/inspect_hp/inspect.html --output shot.png

Or of a real inspect run on the tiny fixture (`--tiny`: the random 4-layer Llama and synthetic corpora of
`benchmarks/tiny.py`, a 256-feature TopK SAE trained at layer 2, `codeunlearn forget` of the `micro` topic with
mean-activation-difference scores, then `codeunlearn inspect` of that edit and its random control):

    python benchmarks/inspect_screenshot.py --tiny --output outputs/tiny_inspect_page.png

`docs/images/inspect_page.png` is the page of the demo's Harry Potter edit, made by
`bash benchmarks/results/inspect_demo/run.sh`.
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
from pathlib import Path

CHROMIUM_NAMES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")


def find_chromium() -> str:
    """$CHROMIUM, or a Chromium on PATH; a clear error where there is none."""
    for candidate in (os.environ.get("CHROMIUM"), *(shutil.which(name) for name in CHROMIUM_NAMES)):
        if candidate and os.access(candidate, os.X_OK):
            return candidate
    raise SystemExit("no Chromium found: apt-get install chromium (or set CHROMIUM=/path/to/chromium)")


def screenshot(page: Path, output: Path, width: int, height: int) -> None:
    """The top `height` pixels of `page` at a `width`-pixel viewport, as a PNG."""
    from playwright.sync_api import sync_playwright

    output.parent.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=find_chromium(), args=["--no-sandbox"])
        view = browser.new_page(viewport={"width": width, "height": height})
        view.goto(page.resolve().as_uri())
        view.screenshot(path=str(output))
        browser.close()


def tiny_inspect_page(workdir: Path) -> Path:
    """Run forget and inspect on the tiny fixture inside `workdir`, with paths relative to it (the page shows them);
    returns the inspect page."""
    import torch

    from codeunlearn.cli import main
    from codeunlearn.data import DataArguments, read_corpora

    if __package__:
        from .common import RETAIN, TOPICS
        from .tiny import build_tiny, train_tiny_sae
    else:  # run as a file: Python puts the script's own folder first on sys.path
        from common import RETAIN, TOPICS
        from tiny import build_tiny, train_tiny_sae

    torch.manual_seed(0)
    previous = Path.cwd()
    os.chdir(workdir)
    try:
        model, tokenizer = build_tiny(Path("data"), 64, TOPICS, RETAIN)
        model.save_pretrained("tiny-llama")
        tokenizer.save_pretrained("tiny-llama")
        forget, retain = f"data/{TOPICS['micro']}", f"data/{RETAIN['history']}"
        chunks = read_corpora([forget, retain], DataArguments(seq_len=64)).pack(tokenizer, "train")
        bottleneck = str(train_tiny_sae(model, chunks, Path("sae"), bf16=False))
        flags = ["--model_name_or_path", "tiny-llama", "--forget_corpora", forget, "--retain_corpora", retain,
                 "--seq_len", "64", "--no_progress", "--no_bf16"]  # fmt: skip
        forget_argv = ["forget", *flags, "--bottleneck_dir", bottleneck, "--topic", "micro", "--num_codes", "6",
                       "--score", "mean_activation_difference", "--output_dir", "forget_micro"]  # fmt: skip
        inspect_argv = ["inspect", *flags, "--bottleneck_dir", bottleneck, "--edit", "forget_micro/edit.json",
                        "--contexts", "4", "--output_dir", "inspect_micro"]  # fmt: skip
        for argv in (forget_argv, inspect_argv):
            if main(argv) != 0:
                raise SystemExit(f"codeunlearn {argv[0]} failed")
    finally:
        os.chdir(previous)
    return workdir / "inspect_micro" / "inspect.html"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--page", type=Path, help="An inspect.html to screenshot.")
    source.add_argument(
        "--tiny", action="store_true", help="Make the page with a real inspect run on the tiny fixture."
    )
    parser.add_argument("--output", type=Path, required=True, help="PNG to write.")
    parser.add_argument("--width", type=int, default=1280, help="Viewport width in pixels.")
    parser.add_argument("--height", type=int, default=1900, help="Height of the shot in pixels (the page's top).")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="inspect_screenshot_") as workdir:
        page = tiny_inspect_page(Path(workdir)) if args.tiny else args.page
        screenshot(page, args.output, args.width, args.height)
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
