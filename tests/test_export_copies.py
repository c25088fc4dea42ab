"""The exported modeling file is self-contained (torch and transformers only), so it repeats parts of the library on
purpose: the decoder-layer paths, the search chunk, the guardrail's window scores, the codebook's nearest-key search,
passthrough and forward. Each repeated part is checked here against the library by value (the exact-logits tests of
test_export.py check the whole model), so that a change to one side cannot drift unnoticed."""

from __future__ import annotations

import pytest
import torch
from export_helpers import make_tokenizer, topic_edits, trained_bmodel

from codeunlearn.bottleneck.architectures import DECODER_LAYER_PATHS
from codeunlearn.export.remote_code import modeling_codeunlearn as remote
from codeunlearn.export.save import save_pretrained
from codeunlearn.kinds.codebook import kmeans
from codeunlearn.kinds.sae import interventions


def test_constants_are_the_library_ones():
    assert remote.DECODER_LAYER_PATHS == DECODER_LAYER_PATHS
    assert remote.SEARCH_CHUNK == kmeans.SEARCH_CHUNK


def test_window_scores_is_the_library_function():
    counts = torch.randint(0, 5, (3, 2, 40))
    for window in (1, 4, 32):
        assert torch.equal(remote.window_scores(counts, window), interventions.window_scores(counts, window))


@pytest.fixture(scope="module")
def codebook_pair(tmp_path_factory):
    """A trained, edited library codebook and the exported file's module built from the same tensors."""
    from transformers import AutoModelForCausalLM

    root = tmp_path_factory.mktemp("copies")
    bmodel = trained_bmodel("llama", root / "run", num_stages=2)
    for edit in topic_edits(bmodel):
        bmodel.apply_edit(edit)
    save_pretrained(bmodel, root / "export", make_tokenizer())
    exported = AutoModelForCausalLM.from_pretrained(str(root / "export"), trust_remote_code=True)
    layer = bmodel.layers[0]
    return bmodel.bottleneck(layer), exported.bottlenecks[str(layer)]


def test_the_nearest_key_search_and_passthrough_are_the_library_ones(codebook_pair):
    library, copy = codebook_pair
    assert type(copy).__name__ == "CodebookQuantizer"  # the export's own module, loaded by transformers
    torch.manual_seed(0)
    heads, head_dim = library.config.num_heads, library.keys(0).shape[-1]
    z = torch.randn(2 * kmeans.SEARCH_CHUNK + 7, heads, head_dim)  # several chunks, one partial
    for stage in range(library.config.num_stages):
        assert torch.equal(copy._nearest(z, stage), library._nearest(z, stage))
    x = torch.randn(2, 9, heads * head_dim)
    x[0, 4] *= 1e4  # a massive-norm token
    positions = torch.arange(9).expand(2, 9)
    assert torch.equal(copy.passthrough_mask(x, positions), library.passthrough_mask(x, positions))
    assert torch.equal(copy.passthrough_mask(x, None), library.passthrough_mask(x, None))
    assert torch.equal(copy(x, positions), library.quantize(x, positions).output)
