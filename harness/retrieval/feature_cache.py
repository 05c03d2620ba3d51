"""Feature cache: a method's encoded gallery videos and queries, kept so that re-evaluating the same
weights encodes nothing again.

Entries live under `cache_dir/features/`, named by a SHA-256 of everything the features depend on:
- the method: its class and name, its resolved params, its weights (every state_dict tensor with its
  name, dtype and shape) and its code (see `code_digest`);
- how it ran: the device type and whether bf16 autocast was on (bf16 features differ from fp32);
- the inputs: for videos, the frame store's protocol (frames, sampling, image size) and every video's
  frame-cache key (path, size, modification time, decoded span); for queries, the word count and every
  caption.
Any change to one of these is another entry. One entry holds a split's videos (or its captions), in
order; splits with the same videos share it. Entries are .npz archives, written atomically (processes
sharing a cache never read half an entry) and CRC-checked on read: a corrupt or unreadable entry is
reported, not used, and encoded again. The key also holds the source of the method's package and of the
engine's encoding path, so that editing an encoder never returns features the old code computed.
"""

from __future__ import annotations

import dataclasses
import hashlib
import inspect
import json
import logging
import re
import zipfile
from collections.abc import Callable
from functools import cache
from importlib.metadata import PackageNotFoundError, packages_distributions, version
from pathlib import Path

import numpy as np
import torch
from torch import nn

from harness import distributed
from harness.data.benchmark import Split
from harness.data.frames import FrameStore
from harness.errors import HarnessError
from harness.storage.files import atomic_save
from harness.api.method import Features, Method

log = logging.getLogger(__name__)
LAYOUT_VERSION = 1  # bump when the key or the entry layout changes: older entries are no longer found
ARRAY_PREFIX = "feature:"  # np.savez takes names as keywords; the prefix keeps any feature name clear of its own


def weights_digest(module: nn.Module) -> str:
    """SHA-256 of every state_dict tensor with its name, dtype and shape."""
    digest = hashlib.sha256()
    for name, tensor in sorted(module.state_dict().items()):
        tensor = tensor.detach().cpu().contiguous()
        digest.update(f"{name}|{tensor.dtype}|{tuple(tensor.shape)}\n".encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy())
    return digest.hexdigest()


# The engine's code that every method's encoders run through (frames to pixels, tokens, the backbone).
ENGINE_SOURCES = ("harness/api/backbone.py", "harness/api/method.py", "harness/api/blocks.py", "harness/retrieval/ranking.py", "harness/data/video.py",
                  "harness/data/text.py")


@cache
def installed_packages() -> dict[str, list[str]]:
    """Top-level module -> the distributions that install it (read once: it scans every installed package)."""
    return packages_distributions()


def method_code(cls: type) -> dict[str, str | None]:
    """Where a method's code comes from and what it is: its distribution (the installed package that provides
    its module), that distribution's version, and `code_digest` (which tells two edits of one version apart)."""
    top = cls.__module__.split(".")[0]
    distributions = installed_packages().get(top, [])
    distribution = distributions[0] if distributions else None
    try:
        installed = version(distribution) if distribution else None
    except PackageNotFoundError:
        installed = None
    return {"distribution": distribution, "version": installed, "digest": code_digest(cls)}


def code_digest(cls: type) -> str:
    """SHA-256 of the source files that compute a method's features: every module of the package that
    defines it (a plugin's whole package) and the engine's encoding path."""
    import harness

    package = Path(inspect.getfile(cls)).parent
    root = Path(harness.__file__).parent.parent
    digest = hashlib.sha256()
    for file in sorted(package.rglob("*.py")) + [root / name for name in ENGINE_SOURCES]:
        digest.update(file.read_bytes())
    return digest.hexdigest()


def method_identity(method: Method, device: torch.device, mixed_precision: bool) -> dict:
    """What a method's features depend on besides their inputs."""
    cls = type(method)
    return {"class": f"{cls.__module__}.{cls.__qualname__}", "name": method.name, "code": code_digest(cls),
            "params": dataclasses.asdict(method.params), "weights": weights_digest(method), "device": device.type,
            # autocast is used only on CUDA (harness.retrieval.ranking.autocast): on the CPU the flag changes nothing
            "bf16_autocast": bool(mixed_precision and device.type == "cuda")}


class FeatureCache:
    def __init__(self, cache_dir: Path | str):
        self.folder = Path(cache_dir).expanduser() / "features"

    def videos(self, identity: dict, split: Split, store: FrameStore, encode: Callable[[], Features]) -> Features:
        """The features of `split.videos` (in order): read from the cache, or `encode()`d and stored."""
        key = {"inputs": "videos", **identity, "frames": store.frames, "sampling": store.policy,
               "image_size": store.size, "videos": [store.key(video) for video in split.videos]}
        return self._read_or_encode(key, len(split.videos), encode)

    def queries(self, identity: dict, split: Split, words: int, encode: Callable[[], Features]) -> Features:
        """The features of `split.captions` (in order): read from the cache, or `encode()`d and stored."""
        key = {"inputs": "queries", **identity, "words": words, "captions": split.captions}
        return self._read_or_encode(key, len(split.captions), encode)

    def _file(self, key: dict) -> Path:
        digest = hashlib.sha256(json.dumps({"layout": LAYOUT_VERSION, **key}, sort_keys=True, default=str).encode())
        name = re.sub(r"[^A-Za-z0-9._-]", "_", key["name"])[:60]
        return self.folder / f"{name}-{key['inputs']}-{digest.hexdigest()[:32]}.npz"

    def _read_or_encode(self, key: dict, rows: int, encode: Callable[[], Features]) -> Features:
        file = self._file(key)
        features = self._read(file, rows)
        # in a process group encoding is collective: every rank encodes unless every rank found the entry
        # (one rank missing it, e.g. while another run writes it, would otherwise wait for the others forever)
        if not all(distributed.gather_objects(features is not None)):
            features = encode()
            if distributed.is_main():
                self._write(file, features)
        return features

    def _read(self, file: Path, rows: int) -> Features | None:
        """The cached features, or None when absent, unreadable or of the wrong length (reported)."""
        try:
            with np.load(file) as archive:
                features = {name[len(ARRAY_PREFIX):]: torch.from_numpy(archive[name]) for name in archive.files}
        except FileNotFoundError:
            return None
        except (zipfile.BadZipFile, ValueError, EOFError, OSError, KeyError) as error:
            log.warning("feature cache entry %s is corrupt or unreadable (%s): it is not used, the features are "
                        "encoded again", file, error)
            return None
        lengths = sorted({int(value.shape[0]) if value.dim() else 0 for value in features.values()})
        if lengths != [rows]:
            log.warning("feature cache entry %s holds %s rows per feature, %d expected: it is not used, the "
                        "features are encoded again", file, lengths, rows)
            return None
        return features

    def _write(self, file: Path, features: Features) -> None:
        """Store the features; a failure to write leaves them unused by later runs, not this one (reported)."""
        arrays = {f"{ARRAY_PREFIX}{name}": value.detach().cpu().numpy() for name, value in features.items()}

        def save(temporary: Path) -> None:
            with open(temporary, "wb") as stream:
                np.savez(stream, **arrays)

        try:
            atomic_save(file, save, "feature cache entry")
        except HarnessError as error:
            log.warning("%s The features are used but not cached.", error)
