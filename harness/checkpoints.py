"""Method checkpoints: evaluate a given one instead of training, and convert official ones.

"official": saved by the method's own code base, mapped by the method's explicit, strict key map
(`Method.load_official`). "harness": a method state dict saved by the harness.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

from harness import registry
from harness.backbone import load_weights_strictly, read_state_dict
from harness.errors import SuiteError
from harness.method import Method
from harness.suite import Suite, method_params


def load_checkpoint(method: Method, path: str | Path, checkpoint_format: str) -> None:
    state = read_state_dict(path)
    source = f"{method.name} checkpoint {path}"
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
    return cls(backbone, cls.Params(**params))


def import_checkpoint(suite: Suite, name: str, path: str | Path, output: str | Path, quiet: bool = False) -> int:
    """Convert an official checkpoint into a harness state dict under the suite's protocol (its backbone
    and word count); returns the number of tensors written."""
    from harness.run import load_backbone

    method = build_method(suite, name, load_backbone(suite, Path(suite.cache_dir).expanduser(), quiet))
    load_checkpoint(method, path, "official")
    output = Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    state = method.state_dict()
    temporary = output.with_suffix(f".{os.getpid()}.tmp")
    torch.save(state, temporary)
    os.replace(temporary, output)
    return len(state)
