"""Checkpoints: the suite's CLIP backbone, a method's given checkpoint instead of training, official ones
converted.

"official": saved by the method's own code base, mapped by the method's explicit, strict key map
(`Method.load_official`). "harness": a method state dict saved by the harness.
"""

from __future__ import annotations

from pathlib import Path


from harness import registry
from harness.api.backbone import Backbone, load_clip, load_weights_strictly, read_state_dict
from harness.errors import CheckpointError, SuiteError
from harness.storage.files import atomic_torch_save
from harness.api.method import Method
from harness.suite import Suite, method_params
from harness.data.synthetic_backbone import SYNTHETIC_ARCH, synthetic_checkpoint


def load_backbone(suite: Suite, cache_dir: Path, quiet: bool = False) -> Backbone:
    """The suite's backbone: its local CLIP checkpoint, or the built-in small CLIP (pre-trained into the
    cache on first use)."""
    spec = suite.backbone
    arch, checkpoint = spec.arch, spec.checkpoint
    if arch == SYNTHETIC_ARCH and checkpoint is None:
        checkpoint, arch = str(synthetic_checkpoint(cache_dir, suite.seed, quiet)), "auto"
    if checkpoint is None:
        raise CheckpointError(f"backbone.checkpoint: no CLIP checkpoint given for {arch}. Point it at a local file "
                              "(e.g. OpenAI's ViT-B-32.pt), for example checkpoint: ${CLIP_CHECKPOINT}.")
    clip = load_clip(arch, checkpoint, suite.protocol.words, spec.quick_gelu)
    return Backbone(clip, {"arch": spec.arch, "checkpoint": str(checkpoint), "quick_gelu": spec.quick_gelu})


def load_checkpoint(method: Method, path: str | Path, checkpoint_format: str) -> None:
    source = f"{method.name} checkpoint {path}"
    state = read_state_dict(path, f"{method.name} checkpoint",
                            f"Fix the checkpoint of {method.name} in the suite's methods (or the file given to import).")
    if checkpoint_format == "official":
        method.load_official(state, source)
    else:
        load_weights_strictly(method, state, source)


def build_method(suite: Suite, name: str, backbone) -> Method:
    specs = {spec.name: spec for spec in suite.methods}
    cls = registry.methods().get(name)
    if cls is None:
        raise SuiteError(f"unknown method {name!r}; available: {', '.join(sorted(registry.methods()))}.")
    params = specs[name].params if name in specs else method_params(cls, suite, {}, f"{name} params")
    return cls.build(backbone, params)


def import_checkpoint(suite: Suite, name: str, path: str | Path, output: str | Path, quiet: bool = False) -> int:
    """Convert an official checkpoint into a harness state dict under the suite's protocol (its backbone
    and word count); returns the number of tensors written."""
    method = build_method(suite, name, load_backbone(suite, Path(suite.cache_dir).expanduser(), quiet))
    load_checkpoint(method, path, "official")
    state = method.state_dict()
    atomic_torch_save(Path(output), state, "checkpoint")
    return len(state)
