"""The Hugging Face CLIP state-dict layout (`transformers`' `CLIPModel`) <-> the backbone's (OpenAI / open_clip).

Official checkpoints of methods built on `transformers` (Prompt Switch, CLIP-ViP) save CLIP in that layout:
    {text,vision}_model.encoder.layers.i.self_attn.{q,k,v}_proj.*  -> [visual.]transformer.resblocks.i.attn.in_proj_*
                                                                     (q, k, v concatenated in that order)
    ...self_attn.out_proj.*, layer_norm1/2.*, mlp.fc1/fc2.*       -> ...attn.out_proj.*, ln_1/2.*, mlp.c_fc/c_proj.*
    text_model.embeddings.token_embedding.weight                  -> token_embedding.weight
    text_model.embeddings.position_embedding.weight               -> positional_embedding
    text_model.final_layer_norm.*                                 -> ln_final.*
    text_projection.weight (D, width)                             -> text_projection (width, D): transposed
    vision_model.embeddings.class_embedding                       -> visual.class_embedding
    vision_model.embeddings.patch_embedding.weight                -> visual.conv1.weight
    vision_model.embeddings.position_embedding.weight             -> visual.positional_embedding
    vision_model.pre_layrnorm.* / post_layernorm.*                -> visual.ln_pre.* / visual.ln_post.*
    visual_projection.weight (D, width)                           -> visual.proj (width, D): transposed
    logit_scale                                                   -> logit_scale
The `position_ids` buffers (`{text,vision}_model.embeddings.position_ids`, an arange) are skipped by name.
Strict: a key under the CLIP prefix that is neither a CLIP key nor one the caller claims (`own`), a missing
key of a layer or tower, and a tensor whose shape does not fit the sizes read from the state dict itself
(widths from the embeddings, MLP widths from layer 0, the embedding width from text_projection) are one
CheckpointError naming them.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping

import torch
from torch import Tensor

from harness.api.backbone import load_weights_strictly
from harness.api.method import Method
from harness.errors import CheckpointError

TOWERS = {"text_model.": "", "vision_model.": "visual."}
POSITION_IDS = ("text_model.embeddings.position_ids", "vision_model.embeddings.position_ids")
# Per-layer parameters other than q/k/v: HF name -> OpenAI name (both relative to the layer).
LAYER_KEYS = {
    "self_attn.out_proj.weight": "attn.out_proj.weight", "self_attn.out_proj.bias": "attn.out_proj.bias",
    "layer_norm1.weight": "ln_1.weight", "layer_norm1.bias": "ln_1.bias",
    "mlp.fc1.weight": "mlp.c_fc.weight", "mlp.fc1.bias": "mlp.c_fc.bias",
    "mlp.fc2.weight": "mlp.c_proj.weight", "mlp.fc2.bias": "mlp.c_proj.bias",
    "layer_norm2.weight": "ln_2.weight", "layer_norm2.bias": "ln_2.bias",
}
QKV = ("q_proj", "k_proj", "v_proj")
# Tensors outside the layers, copied as they are, except the two projections (transposed).
COPIED = {
    "logit_scale": "logit_scale",
    "text_model.embeddings.token_embedding.weight": "token_embedding.weight",
    "text_model.embeddings.position_embedding.weight": "positional_embedding",
    "text_model.final_layer_norm.weight": "ln_final.weight",
    "text_model.final_layer_norm.bias": "ln_final.bias",
    "vision_model.embeddings.class_embedding": "visual.class_embedding",
    "vision_model.embeddings.patch_embedding.weight": "visual.conv1.weight",
    "vision_model.embeddings.position_embedding.weight": "visual.positional_embedding",
    "vision_model.pre_layrnorm.weight": "visual.ln_pre.weight",
    "vision_model.pre_layrnorm.bias": "visual.ln_pre.bias",
    "vision_model.post_layernorm.weight": "visual.ln_post.weight",
    "vision_model.post_layernorm.bias": "visual.ln_post.bias",
}
TRANSPOSED = {"text_projection.weight": "text_projection", "visual_projection.weight": "visual.proj"}
_LAYER = re.compile(r"(text_model|vision_model)\.encoder\.layers\.(\d+)\.(.+)")


LAYER_HF_KEYS = [f"self_attn.{p}.{kind}" for p in QKV for kind in ("weight", "bias")] + list(LAYER_KEYS)


def _expected_keys(layers: dict[str, int]) -> set[str]:
    keys = set(COPIED) | set(TRANSPOSED)
    for tower, count in layers.items():
        keys |= {f"{tower}.encoder.layers.{i}.{name}" for i in range(count) for name in LAYER_HF_KEYS}
    return keys


def _layer_counts(keys: Iterable[str]) -> dict[str, int]:
    counts = {"text_model": 0, "vision_model": 0}
    for key in keys:
        if match := _LAYER.fullmatch(key):
            counts[match.group(1)] = max(counts[match.group(1)], int(match.group(2)) + 1)
    return counts


def _expected_shapes(clip: Mapping[str, Tensor], layers: dict[str, int]) -> dict[str, tuple[int, ...]]:
    """The shape of every HF CLIP key, from sizes the state dict states once: the two widths (embeddings),
    the two MLP widths (layer 0), the embedding width (text_projection), vocabulary, positions, patch."""
    text_width = clip["text_model.embeddings.token_embedding.weight"].shape[1]
    vision_width = clip["vision_model.embeddings.class_embedding"].shape[0]
    embed = clip["text_projection.weight"].shape[0]
    patch = clip["vision_model.embeddings.patch_embedding.weight"].shape[-1]
    shapes: dict[str, tuple[int, ...]] = {
        "logit_scale": (),
        "text_model.embeddings.token_embedding.weight":
            (clip["text_model.embeddings.token_embedding.weight"].shape[0], text_width),
        "text_model.embeddings.position_embedding.weight":
            (clip["text_model.embeddings.position_embedding.weight"].shape[0], text_width),
        "text_model.final_layer_norm.weight": (text_width,), "text_model.final_layer_norm.bias": (text_width,),
        "vision_model.embeddings.class_embedding": (vision_width,),
        "vision_model.embeddings.patch_embedding.weight": (vision_width, 3, patch, patch),
        "vision_model.embeddings.position_embedding.weight":
            (clip["vision_model.embeddings.position_embedding.weight"].shape[0], vision_width),
        "text_projection.weight": (embed, text_width), "visual_projection.weight": (embed, vision_width),
    }
    for norm in ("pre_layrnorm", "post_layernorm"):
        shapes[f"vision_model.{norm}.weight"] = shapes[f"vision_model.{norm}.bias"] = (vision_width,)
    for tower, width in (("text_model", text_width), ("vision_model", vision_width)):
        if not layers[tower]:
            continue
        mlp = clip[f"{tower}.encoder.layers.0.mlp.fc1.weight"].shape[0]
        layer = {f"self_attn.{p}.weight": (width, width) for p in (*QKV, "out_proj")}
        layer |= {f"self_attn.{p}.bias": (width,) for p in (*QKV, "out_proj")}
        layer |= {f"{norm}.{kind}": (width,) for norm in ("layer_norm1", "layer_norm2") for kind in ("weight", "bias")}
        layer |= {"mlp.fc1.weight": (mlp, width), "mlp.fc1.bias": (mlp,), "mlp.fc2.weight": (width, mlp),
                  "mlp.fc2.bias": (width,)}
        for i in range(layers[tower]):
            shapes |= {f"{tower}.encoder.layers.{i}.{name}": shape for name, shape in layer.items()}
    return shapes


def _listed(label: str, keys: list[str]) -> str:
    more = f" (+{len(keys) - 8} more)" if len(keys) > 8 else ""
    return f"{label}: {', '.join(keys[:8])}{more}"


def hf_to_openai(state: Mapping[str, Tensor], source: str, prefix: str = "",
                 own: tuple[str, ...] = ()) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
    """The HF-layout CLIP under `prefix` (e.g. "clip.") -> (its OpenAI-layout state dict, the caller's own
    tensors under `prefix`: keys starting with one of `own`, full names kept). Keys outside `prefix` are not
    looked at. Unknown, missing and misshapen keys are a CheckpointError naming them (with the prefix)."""
    mine = {key[len(prefix):]: value for key, value in state.items() if key.startswith(prefix)}
    claimed = {prefix + key: value for key, value in mine.items() if own and (prefix + key).startswith(own)}
    clip = {key: value for key, value in mine.items()
            if prefix + key not in claimed and key not in POSITION_IDS}
    layers = _layer_counts(clip)
    expected = _expected_keys(layers)
    unknown = sorted(prefix + key for key in set(clip) - expected)
    missing = sorted(prefix + key for key in expected - set(clip))
    if unknown or missing:
        parts = [_listed(label, keys) for label, keys in (("unknown", unknown), ("missing", missing)) if keys]
        raise CheckpointError(f"{source}: not a Hugging Face CLIP state dict under {prefix!r}: " + "; ".join(parts) + ".")
    try:
        shapes = _expected_shapes(clip, layers)
    except IndexError:
        raise CheckpointError(f"{source}: the sizes of the CLIP under {prefix!r} cannot be read: its embeddings, "
                              "text_projection or layer-0 MLP have too few dimensions.") from None
    misshapen = [f"{prefix}{key} {tuple(clip[key].shape)} != {shape}" for key, shape in sorted(shapes.items())
                 if tuple(clip[key].shape) != shape]
    if misshapen:
        raise CheckpointError(f"{source}: {_listed('wrong shape', misshapen)}.")
    openai = {new: clip[old] for old, new in COPIED.items()}
    openai |= {new: clip[old].t().contiguous() for old, new in TRANSPOSED.items()}
    for tower, count in layers.items():
        for i in range(count):
            hf, ours = f"{tower}.encoder.layers.{i}.", f"{TOWERS[tower + '.']}transformer.resblocks.{i}."
            for kind in ("weight", "bias"):
                openai[f"{ours}attn.in_proj_{kind}"] = torch.cat([clip[f"{hf}self_attn.{p}.{kind}"] for p in QKV])
            openai |= {ours + new: clip[hf + old] for old, new in LAYER_KEYS.items()}
    return openai, claimed


def openai_to_hf(state: Mapping[str, Tensor], prefix: str = "") -> dict[str, Tensor]:
    """The inverse: an OpenAI-layout CLIP state dict -> the HF layout under `prefix`, `position_ids` buffers
    included (as `transformers` saves them). Every key must be an OpenAI CLIP key."""
    inverse = {new: old for old, new in COPIED.items()}
    transposed = {new: old for old, new in TRANSPOSED.items()}
    layer_names = {new: old for old, new in LAYER_KEYS.items()}
    hf: dict[str, Tensor] = {}
    unknown = []
    for key, value in state.items():
        match = re.fullmatch(r"(visual\.)?transformer\.resblocks\.(\d+)\.(.+)", key)
        if key in inverse:
            hf[inverse[key]] = value
        elif key in transposed:
            hf[transposed[key]] = value.t().contiguous()
        elif match and match.group(3) in ("attn.in_proj_weight", "attn.in_proj_bias"):
            layer = f"{'vision_model' if match.group(1) else 'text_model'}.encoder.layers.{match.group(2)}."
            kind = match.group(3).rsplit("_", 1)[1]
            for name, part in zip(QKV, value.chunk(3)):
                hf[f"{layer}self_attn.{name}.{kind}"] = part.contiguous()
        elif match and match.group(3) in layer_names:
            layer = f"{'vision_model' if match.group(1) else 'text_model'}.encoder.layers.{match.group(2)}."
            hf[layer + layer_names[match.group(3)]] = value
        else:
            unknown.append(key)
    if unknown:
        raise CheckpointError(f"not an OpenAI-layout CLIP state dict: {_listed('unknown', sorted(unknown))}.")
    for key, table in (("text_model.embeddings.position_ids", "positional_embedding"),
                       ("vision_model.embeddings.position_ids", "visual.positional_embedding")):
        hf[key] = torch.arange(state[table].shape[0]).unsqueeze(0)
    return {prefix + key: value for key, value in hf.items()}


def load_official_hf(method: Method, state: dict[str, Tensor], source: str, prefix: str, key_map: dict[str, str],
                     skip: tuple[str, ...] = ()) -> None:
    """The official import of a method whose checkpoint holds an HF-layout CLIP under `prefix`: that CLIP to
    the backbone (text positions sliced to its word count), every other key renamed by the first matching
    prefix of `key_map` (full official names; those under `prefix` are the method's tensors inside the CLIP
    namespace, such as a prompt) or skipped on purpose when it starts with one of `skip`. Unknown keys,
    missing keys and shape mismatches are one error naming them."""
    if any(key.startswith("module.") for key in state):
        raise CheckpointError(f"{source}: keys start with 'module.' (a DistributedDataParallel wrapper); strip the "
                              "prefix or save model.module.state_dict() as the official code does.")
    inside = tuple(old for old in key_map if old.startswith(prefix))
    clip, claimed = hf_to_openai(state, source, prefix, own=inside)
    method.backbone.load_prefixed({f"clip.{key}": value for key, value in clip.items()}, "clip.", source)
    rest = {**claimed, **{key: value for key, value in state.items() if not key.startswith(prefix)}}
    head, unknown = {}, []
    for key, value in rest.items():
        if skip and key.startswith(skip):
            continue
        new = next((new + key[len(old):] for old, new in key_map.items() if key.startswith(old)), None)
        if new is None:
            unknown.append(key)
        else:
            head[new] = value
    if unknown:
        raise CheckpointError(f"{source}: keys unknown to {method.name}: {', '.join(sorted(unknown)[:8])}"
                              f"{' ...' if len(unknown) > 8 else ''}.")
    backbone = {k: v for k, v in method.state_dict().items() if k.startswith("backbone.")}
    load_weights_strictly(method, {**backbone, **head}, f"{source} (head)")
