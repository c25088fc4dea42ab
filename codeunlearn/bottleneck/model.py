"""`BottleneckedModel`: a frozen transformers causal LM with bottlenecks wrapped around decoder layers.

The wrapper replaces `layers[L]` by a module that runs the original layer and passes its output (tuple in
transformers 4.x, tensor in 5.x) through the bottleneck. Disabled, it returns the layer output untouched, so the
logits are bit-identical to the base model's.

A bottleneck is any registered kind (`codeunlearn.bottleneck.registry`, the kinds in `codeunlearn.kinds`): a
`CodebookBottleneck` (`kind="vq"`), an `SAEBottleneck` (`kind="sae"`, a sae-lens SAE). Every kind implements
`codeunlearn.bottleneck.base.Bottleneck` (`quantize`, `set_edits`, its files ...), so nothing here depends on which
kind it holds; a kind may run with another splice on request (`splice`: an SAE without its error term), and a kind
may attach modules saved by another library (`codeunlearn.kinds.sae.attach_sae`: sae-lens directories).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from codeunlearn.bottleneck.adapters import (
    ADAPTER_PREFIX,
    adapter_parameters,
    adapter_state,
    inject_adapters,
    set_adapters_enabled,
)
from codeunlearn.bottleneck.architectures import (
    DECODER_LAYER_PATHS,
    check_layer_indices,
    decoder_layers,
    hidden_size,
    model_type_of,
)
from codeunlearn.bottleneck.base import WEIGHTS_NAME, Bottleneck, layer_state
from codeunlearn.bottleneck.config import CONFIG_NAME, BottleneckConfig
from codeunlearn.bottleneck.edit import Edit
from codeunlearn.bottleneck.registry import kind_names, module_class_for
from codeunlearn.errors import CodeunlearnError
from codeunlearn.io import atomic_directory, atomic_write_text, load_tensors

EDITS_NAME = "edits.json"

Observer = Callable[[int, Tensor, Any], None]  # (layer, states, the bottleneck's output or None)


def _read_saved_edits(path: Path) -> list[Edit]:
    """The edits saved beside a bottleneck (`edits.json`, a list), or [] when there is none."""
    if not path.is_file():
        return []
    fix = "re-save the bottleneck, or delete the file to load it without edits"
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise CodeunlearnError(f"{path} is not valid JSON ({err.msg})", fix) from None
    except UnicodeDecodeError:
        raise CodeunlearnError(f"{path} is not UTF-8 text (a damaged file?)", fix) from None
    if not isinstance(data, list):
        raise CodeunlearnError(f"{path} must hold a list of edits, not a JSON {type(data).__name__}", fix)
    return [Edit.from_dict(item) for item in data]


class StopForward(Exception):
    """Raised by the deepest bottleneck layer when the caller only needs states up to there."""


class BottleneckLayer(nn.Module):
    """A decoder layer followed by its bottleneck."""

    def __init__(self, layer: nn.Module, bottleneck: Bottleneck, index: int) -> None:
        super().__init__()
        self.layer = layer
        self.bottleneck = bottleneck
        self.index = index
        self.enabled = True
        self.fit_keys = False
        self.observer: Observer | None = None
        self.stop_here = False
        self.states_only = False  # hand the observer the states (result None) and leave them unchanged

    def __getattr__(self, name: str) -> Any:
        # Model forwards read attributes such as `attention_type` off their layers.
        try:
            return super().__getattr__(name)
        except AttributeError:
            return getattr(self.layer, name)

    def forward(self, hidden_states: Tensor, *args: Any, **kwargs: Any) -> Any:
        out = self.layer(hidden_states, *args, **kwargs)
        if not self.enabled:
            return out
        if self.bottleneck.transparent and self.observer is None and not self.stop_here:
            return out  # an unedited SAE with its error term returns its input exactly: no need to run it
        h = out[0] if isinstance(out, tuple) else out
        x = h - hidden_states if self.bottleneck.config.site == "block_output" else h
        positions = kwargs.get("position_ids")
        if self.states_only:  # e.g. SAE training reads the base model's states; later layers see them unchanged
            if self.observer is not None:
                self.observer(self.index, x, None)
            if self.stop_here:
                raise StopForward
            return out
        if self.fit_keys and not bool(self.bottleneck.initialized):
            self.bottleneck.fit_keys(x.detach(), positions)  # k-means initialisation
        # Quantize before updating the keys, so logged fidelity is measured on a batch the keys have not seen.
        result = self.bottleneck.quantize(x, positions)
        if self.fit_keys:
            self.bottleneck.fit_keys(x.detach(), positions)
        if self.observer is not None:
            self.observer(self.index, x, result)
        if self.stop_here:
            raise StopForward
        y = result.output + hidden_states if self.bottleneck.config.site == "block_output" else result.output
        return (y, *out[1:]) if isinstance(out, tuple) else y


class BottleneckedModel(nn.Module):
    """A base causal LM (frozen) with bottlenecks at `config.layers`, plus the stack of active edits.

    Read bottlenecked states with `observing` (or a hook on the wrapper in `wrappers()`), not `output_hidden_states`:
    transformers 5 records hidden states with hooks on the stock decoder-layer class, which sits inside our wrapper,
    so at a bottleneck layer it returns the state *before* the bottleneck.
    """

    def __init__(self, model: nn.Module, config: BottleneckConfig, bottlenecks: dict[int, Bottleneck]) -> None:
        super().__init__()
        self.model = model
        self.config = config
        self.bottlenecks = nn.ModuleDict({str(k): v for k, v in bottlenecks.items()})
        self.edits: list[Edit] = []
        model.requires_grad_(False)
        layers = decoder_layers(model)
        for index in bottlenecks:  # check every layer before wrapping any, so a refusal changes nothing
            if isinstance(layers[index], BottleneckLayer):
                raise CodeunlearnError(f"layer {index} already has a bottleneck", "detach() the old one first")
        for index, bottleneck in bottlenecks.items():
            layers[index] = BottleneckLayer(layers[index], bottleneck, index)
        if config.adapter_rank:
            inject_adapters(model, config.adapter_rank, first_layer=min(bottlenecks) + 1, seed=config.seed)
            model.requires_grad_(False)

    # ------------------------------------------------------------------------------------------------ creation
    @classmethod
    def attach(cls, model: nn.Module, config: BottleneckConfig) -> BottleneckedModel:
        """Attach fresh (untrained) bottlenecks described by `config` to `model`."""
        num_layers = len(decoder_layers(model))
        config.layers = check_layer_indices(config.layers, num_layers)
        config.hidden_size = hidden_size(model)
        config.num_hidden_layers = num_layers
        config.model_type = model_type_of(model)
        config.base_model = config.base_model or str(getattr(model.config, "_name_or_path", ""))
        config.fill_model_facts()
        config = BottleneckConfig.from_dict(config.to_dict())  # re-validate with the model facts filled in
        device = next(model.parameters()).device
        path = DECODER_LAYER_PATHS[config.model_type]
        kind = module_class_for(config.kind)
        bottlenecks = {layer: kind.fresh(config, layer, f"{path}.{layer}").to(device) for layer in config.layers}
        return cls(model, config, bottlenecks)

    @classmethod
    def from_pretrained(cls, model: nn.Module, path: str | Path) -> BottleneckedModel:
        """Attach the bottlenecks saved in `path` (and re-apply its saved edits) to `model`."""
        path = Path(path)
        config = BottleneckConfig.from_json_file(path / CONFIG_NAME)
        layers = decoder_layers(model)
        # an edited config with no, repeated or out-of-range layers: refused as `attach` refuses them (the order is
        # the file's, which the fingerprint hashes)
        check_layer_indices(config.layers, len(layers))
        mismatches = []
        if config.hidden_size != hidden_size(model):
            mismatches.append(f"hidden size {config.hidden_size} vs model {hidden_size(model)}")
        if config.num_hidden_layers != len(layers):
            mismatches.append(f"{config.num_hidden_layers} layers vs model {len(layers)}")
        if config.model_type != model_type_of(model):
            mismatches.append(f"model_type {config.model_type!r} vs model {model_type_of(model)!r}")
        if mismatches:
            raise CodeunlearnError(
                f"bottleneck at {path} was trained for another model ({'; '.join(mismatches)})",
                f"load it onto {config.base_model or 'the model it was trained on'} or train a new one",
            )
        edits = _read_saved_edits(path / EDITS_NAME)
        device = next(model.parameters()).device
        loaded = module_class_for(config.kind).load_layers(path, config)
        bmodel = cls(model, config, {layer: bottleneck.to(device) for layer, bottleneck in loaded.items()})
        try:
            if config.adapter_rank:
                bmodel._load_adapters(path)
            for edit in edits:
                bmodel.apply_edit(edit)
        except BaseException:
            bmodel.detach()  # a failed load leaves the caller's model as it was
            raise
        return bmodel

    def _load_adapters(self, path: Path) -> None:
        """Copy the downstream adapters saved in `path` (`adapters.{name}` in its tensors file) into the model."""
        tensors = load_tensors(path / WEIGHTS_NAME, "bottleneck weights")
        adapters = self.adapter_parameters()
        saved = {k[len(ADAPTER_PREFIX) :]: v for k, v in tensors.items() if k.startswith(ADAPTER_PREFIX)}
        if set(saved) != set(adapters):
            raise CodeunlearnError(
                f"adapter weights at {path} do not match the model's layers", "re-save the bottleneck"
            )
        with torch.no_grad():
            for name, param in adapters.items():
                param.copy_(saved[name])

    def save_pretrained(self, path: str | Path, overwrite: bool = False, with_edits: bool = True) -> None:
        """Write config, weights (safetensors) and the active edits to `path` atomically."""
        with atomic_directory(path, overwrite=overwrite) as tmp:
            atomic_write_text(tmp / CONFIG_NAME, self.config.to_json_string())
            bottlenecks = {layer: self.bottleneck(layer) for layer in self.layers}
            module_class_for(self.config.kind).save_layers(tmp, bottlenecks, adapter_state(self.model))
            if with_edits and self.edits:
                atomic_write_text(tmp / EDITS_NAME, json.dumps([e.to_dict() for e in self.edits], indent=1) + "\n")

    def bottleneck_state(self) -> dict[str, Tensor]:
        """Bottleneck tensors keyed `{layer}.{name}`, plus `adapters.{name}` for downstream adapters."""
        return {**layer_state(self.bottlenecks), **adapter_state(self.model)}

    def adapter_parameters(self) -> dict[str, nn.Parameter]:
        return adapter_parameters(self.model)

    def trainable_parameters(self) -> list[nn.Parameter]:
        """What gradient training updates: every bottleneck's `trainable_parameters` (a codebook's output values, an
        SAE's weights), then the downstream adapters if any."""
        own = [p for bottleneck in self.bottlenecks.values() for p in bottleneck.trainable_parameters()]
        return own + list(self.adapter_parameters().values())

    def fingerprint(self) -> str:
        """Hash of the config's `fingerprint_prefix` and every layer's `fingerprint_bytes` (a codebook's search keys,
        an SAE's encoder): identifies which bottleneck an edit's code ids refer to."""
        digest = hashlib.sha256(self.config.fingerprint_prefix())
        for layer in self.layers:
            digest.update(self.bottleneck(layer).fingerprint_bytes())
        return digest.hexdigest()[:16]

    def detach(self) -> nn.Module:
        """Remove the wrappers (and adapters) and return the untouched base model."""
        if self.config.adapter_rank:
            from peft.tuners.tuners_utils import BaseTunerLayer

            for name, module in list(self.model.named_modules()):
                if isinstance(module, BaseTunerLayer):
                    parent, _, child = name.rpartition(".")
                    setattr(self.model.get_submodule(parent), child, module.get_base_layer())
            if hasattr(self.model, "peft_config"):
                del self.model.peft_config
        layers = decoder_layers(self.model)
        for index in self.layers:
            if isinstance(layers[index], BottleneckLayer):  # detaching twice is harmless
                layers[index] = layers[index].layer
        return self.model

    # ------------------------------------------------------------------------------------------------ access
    @property
    def layers(self) -> list[int]:
        return list(self.config.layers)

    def bottleneck(self, layer: int) -> Bottleneck:
        return self.bottlenecks[str(layer)]

    def num_features(self, layer: int) -> int:
        """Distinct code ids (VQ) or features (SAE) at a layer."""
        return self.bottleneck(layer).num_features

    @contextlib.contextmanager
    def splice(self, mode: str) -> Iterator[None]:
        """Run with another splice of the kind's (its `Bottleneck.splices`): an SAE's `reconstruction` (no error
        term: the "CE loss recovered" splice) or `zero_ablation` (the states replaced by zeros) instead of its
        default error-term splice."""
        kind = module_class_for(self.config.kind)
        if not kind.splices:
            with_splices = [name for name in kind_names() if module_class_for(name).splices]
            raise CodeunlearnError(
                f"splice modes are not for {self.config.kind!r} bottlenecks",
                f"use a bottleneck of kind {' or '.join(with_splices)}",
            )
        with kind.spliced([self.bottleneck(layer) for layer in self.layers], mode):
            yield

    def wrappers(self) -> list[BottleneckLayer]:
        layers = decoder_layers(self.model)
        return [layers[index] for index in self.layers]

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        return self.model(*args, **kwargs)

    @contextlib.contextmanager
    def disabled(self) -> Iterator[None]:
        """Run the base model: every bottleneck returns its layer's output untouched."""
        wrappers = self.wrappers()
        previous = [w.enabled for w in wrappers]
        for wrapper in wrappers:
            wrapper.enabled = False
        set_adapters_enabled(self.model, False)
        try:
            yield
        finally:
            for wrapper, state in zip(wrappers, previous, strict=True):
                wrapper.enabled = state
            set_adapters_enabled(self.model, True)

    @contextlib.contextmanager
    def observing(self, observer: Observer, stop_at_deepest: bool = False) -> Iterator[None]:
        """Call `observer(layer, states, quantize_output)` at every bottleneck; optionally stop the forward at the
        deepest bottleneck (callers catch `StopForward` through `run_to_deepest`)."""
        wrappers = self.wrappers()
        for wrapper in wrappers:
            wrapper.observer = observer
        wrappers[-1].stop_here = stop_at_deepest
        try:
            yield
        finally:
            for wrapper in wrappers:
                wrapper.observer = None
                wrapper.stop_here = False

    def run_to_deepest(
        self,
        input_ids: Tensor,
        observer: Observer,
        attention_mask: Tensor | None = None,
        states_only: bool = False,
    ) -> None:
        """Forward pass that stops right after the deepest bottleneck (no later layer, no LM head).

        `states_only`: the observer gets the base model's states at each bottleneck layer (and None for the
        result); the bottlenecks do not run, so untrained ones are fine."""
        wrappers = self.wrappers()
        for wrapper in wrappers:
            wrapper.states_only = states_only
        try:
            with self.observing(observer, stop_at_deepest=True):
                try:
                    self.model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False)
                except StopForward:
                    return
        finally:
            for wrapper in wrappers:
                wrapper.states_only = False
        raise RuntimeError("the forward pass never reached the deepest bottleneck")

    @torch.no_grad()
    def states_at(self, layer: int, input_ids: Tensor, attention_mask: Tensor | None = None) -> Tensor:
        """The states the bottleneck at `layer` reads, (batch, seq, hidden), with every shallower bottleneck
        running as it is; the forward stops there, and the bottleneck at `layer` itself does not run (so it may be
        untrained: fitting bottlenecks layer by layer reads each layer's states this way)."""
        target = decoder_layers(self.model)[layer]
        if not isinstance(target, BottleneckLayer):
            raise CodeunlearnError(f"layer {layer} has no bottleneck", f"use one of {self.layers}")
        captured: list[Tensor] = []

        def observer(index: int, states: Tensor, result: None) -> None:
            captured.append(states)

        target.observer, target.states_only, target.stop_here = observer, True, True
        try:
            self.model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False)
        except StopForward:
            pass
        finally:
            target.observer, target.states_only, target.stop_here = None, False, False
        if not captured:
            raise RuntimeError(f"the forward pass never reached layer {layer}")
        return captured[0]

    # ------------------------------------------------------------------------------------------------ edits
    def apply_edit(self, edit: Edit) -> None:
        """Add an edit on top of the active ones (takes milliseconds: only masks change)."""
        self.check_edit(edit)
        self.edits.append(edit)
        try:
            self._refresh_masks()
        except CodeunlearnError:
            # e.g. the edits together exclude a whole head: drop the new edit and restore the previous masks
            self.edits.pop()
            self._refresh_masks()
            raise

    def undo_edit(self, topic: str | None = None) -> Edit:
        """Remove the most recent edit (or the most recent one for `topic`) and return it."""
        for position in range(len(self.edits) - 1, -1, -1):
            if topic is None or self.edits[position].topic == topic:
                edit = self.edits.pop(position)
                self._refresh_masks()
                return edit
        raise CodeunlearnError(f"no active edit for topic {topic!r}", f"active topics: {[e.topic for e in self.edits]}")

    def clear_edits(self) -> None:
        self.edits.clear()
        self._refresh_masks()

    @contextlib.contextmanager
    def edited(self, edit: Edit) -> Iterator[None]:
        """Temporarily apply an edit."""
        self.apply_edit(edit)
        try:
            yield
        finally:
            self.edits.remove(edit)
            self._refresh_masks()

    def check_edit(self, edit: Edit) -> None:
        """Refuse (one-line `CodeunlearnError`) an edit made for another bottleneck: another kind, another
        fingerprint, a layer without a bottleneck or a unit id out of range. Changes nothing."""
        if edit.kind != self.config.kind:
            raise CodeunlearnError(
                f"edit is for a {edit.kind!r} bottleneck, this one is {self.config.kind!r}", "use a matching edit"
            )
        if edit.bottleneck_fingerprint and edit.bottleneck_fingerprint != self.fingerprint():
            raise CodeunlearnError(
                f"edit {edit.topic!r} was made for another bottleneck (fingerprint {edit.bottleneck_fingerprint})",
                "recompute statistics and selection with this bottleneck (codeunlearn stats / forget)",
            )
        for layer, codes in edit.layers.items():
            if layer not in self.layers:
                raise CodeunlearnError(
                    f"edit names layer {layer}, bottlenecks are at {self.layers}",
                    "use an edit made for this bottleneck",
                )
            total = self.num_features(layer)
            bad = [c for c in codes.codes if not 0 <= c < total]
            if bad:
                raise CodeunlearnError(
                    f"edit names code ids {bad[:5]} at layer {layer}; valid ids are 0..{total - 1}",
                    "use an edit made for this bottleneck",
                )

    def _refresh_masks(self) -> None:
        for layer in self.layers:
            self.bottleneck(layer).set_edits(layer, self.edits)
