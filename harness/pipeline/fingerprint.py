"""Fingerprints: what produced a run's results, so that a resumed run reuses only what it would recompute
identically, and names what differs otherwise.

The run's shared part: the code version, the backbone weights (file hash), the device type, the test
videos (each file's size and modification time, as the frame cache keys them) and the resolved suite without
the methods and without what cannot change a number (its name, paths, cache folder, decode time limit);
besides, every annotation file both runs read must have the same hash (a run that adds a method may read a
file the stored one did not, e.g. the training list). The training budget (the `training` section, the
training and validation splits) and the training videos are a part of their own: they matter to the methods
that train, not to zero-shot CLIP or a given checkpoint. A method's fingerprint adds its resolved
hyper-parameters and, when it evaluates a given checkpoint, that file's hash.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from harness.data.benchmark import fingerprint as file_fingerprint
from harness.suite import MethodSpec

# Suite keys that do not change any number: never a reason to refuse a resume.
NEUTRAL_SUITE_KEYS = ("name", "methods", "cache_dir", "source", "benchmark.root", "benchmark.videos",
                      "benchmark.decode_timeout", "backbone.checkpoint", "jobs", "training.log")
# Suite keys that change only what a training produces.
TRAINING_SUITE_KEYS = ("training", "benchmark.train_split", "benchmark.validation_split")


def digest(data) -> str:
    return "sha256:" + hashlib.sha256(json.dumps(data, sort_keys=True, default=str).encode()).hexdigest()


def flatten(data: dict, prefix: str = "") -> dict[str, object]:
    flat = {}
    for key, value in data.items():
        path = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(flatten(value, f"{path}."))
        else:
            flat[path] = value
    return flat


def _under(key: str, prefixes: tuple[str, ...]) -> bool:
    return any(key == p or key.startswith(f"{p}.") for p in prefixes)


def suite_part(suite: dict, training: bool) -> dict[str, object]:
    """The resolved suite's keys that can change a number, flattened to dotted paths: the training budget
    (training=True) or everything else."""
    return {k: v for k, v in flatten(suite).items()
            if not _under(k, NEUTRAL_SUITE_KEYS) and _under(k, TRAINING_SUITE_KEYS) == training}


# Fingerprint parts that concern only the methods that train.
TRAINING_PARTS = ("training", "training_videos")


def run_fingerprint(code_version: str, backbone_checkpoint: str, device: str, suite: dict,
                    videos: dict[str, dict[str, str]]) -> dict[str, str]:
    """`videos`: role ("test", "training") -> {video id: key} (harness.pipeline.preflight.videos_by_role)."""
    return {"code_version": code_version, "backbone_weights": file_fingerprint(Path(backbone_checkpoint)),
            "device": device, "suite": digest(suite_part(suite, training=False)),
            "training": digest(suite_part(suite, training=True)),
            "test_videos": digest(videos["test"]), "training_videos": digest(videos["training"])}


def method_fingerprint(spec: MethodSpec, run: dict[str, str], trains: bool, code: str) -> str:
    """`code`: the digest of the method's source (harness.retrieval.feature_cache.method_code): a plugin installed apart from
    the harness, or edited in place, is not covered by the harness's own code version."""
    checkpoint = file_fingerprint(Path(spec.checkpoint).expanduser()) if spec.checkpoint else None
    shared = {k: v for k, v in run.items() if trains or k not in TRAINING_PARTS}
    return digest({"method": spec.name, "params": spec.params, "checkpoint": checkpoint, "code": code,
                   "checkpoint_format": spec.checkpoint_format if spec.checkpoint else None, "run": shared})


def _changed(old: dict, new: dict, label: str) -> list[str]:
    return [f"{label}{key}: {old.get(key)!r} in the stored run, {new.get(key)!r} now"
            for key in sorted(old.keys() | new.keys()) if old.get(key) != new.get(key)]


def video_differences(role: str, before: dict[str, str] | None, after: dict[str, str]) -> str:
    """One line naming which of a role's videos differ from the stored run's (its record of them, when kept)."""
    if before is None:
        return f"the {role} videos differ from the stored run's (its record of them is missing)"
    changed = [vid for vid in sorted(before.keys() | after.keys()) if before.get(vid) != after.get(vid)]
    shown = "; ".join(f"{vid}: {before.get(vid, 'absent')} in the stored run, {after.get(vid, 'absent')} now"
                      for vid in changed[:5])
    more = f" (+{len(changed) - 5} more)" if len(changed) > 5 else ""
    return f"{len(changed)} of the {role} videos differ from the stored run's: {shown}{more}"


def run_differences(stored: dict, now: dict, training: bool, stored_videos: dict | None = None,
                    videos: dict | None = None) -> list[str]:
    """What differs between a stored results.json and the run about to write into it: the shared part,
    and with `training` the training budget too. `stored_videos` / `videos`: the video keys by role of the
    stored run (its videos.json) and of this one, to name the videos that differ."""
    before, after = stored.get("fingerprint") or {}, now["fingerprint"]
    lines = [f"{key}: {before.get(key)} in the stored run, {after[key]} now" for key in after
             if key not in ("suite", "training", "test_videos", "training_videos") and before.get(key) != after[key]]
    for role in ("test", "training") if training else ("test",):
        if f"{role}_videos" in after and before.get(f"{role}_videos") != after[f"{role}_videos"]:
            lines.append(video_differences(role, (stored_videos or {}).get(role), (videos or {}).get(role, {}))
                         if videos is not None else f"the {role} videos differ from the stored run's")
    files, files_now = stored.get("benchmark", {}).get("annotations", {}), now["benchmark"]["annotations"]
    lines += [f"annotation file {name}: {files[name]} in the stored run, {files_now[name]} now"
              for name in sorted(files.keys() & files_now.keys()) if files[name] != files_now[name]]
    old, new = stored.get("suite") or {}, now["suite"]
    lines += _changed(suite_part(old, False), suite_part(new, False), "suite ")
    if training:
        lines += _changed(suite_part(old, True), suite_part(new, True), "suite ")
    return lines


def method_differences(stored: dict, params: dict, checkpoint: str | None, code: dict) -> list[str]:
    """Why a stored method entry does not match the method about to run (its own part)."""
    lines = _changed(stored.get("params") or {}, params, "params.")
    before = stored.get("code") or {}
    if before.get("digest") != code["digest"]:
        lines.append(f"code: {before.get('distribution')} {before.get('version')} ({before.get('digest')}) in the "
                     f"stored run, {code['distribution']} {code['version']} ({code['digest']}) now: its source changed")
    given = stored.get("checkpoint") if "checkpoint_format" in stored else None  # else the run's own checkpoint
    if given != checkpoint:
        lines.append(f"checkpoint: {given} in the stored run, {checkpoint} now")
    return lines or ["its checkpoint file changed"]
