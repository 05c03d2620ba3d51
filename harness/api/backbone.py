"""The shared CLIP backbone (open_clip): load a local checkpoint, encode frames and tokens.

Outputs every head may use (docs/methods.md): t (B, D) the text EOT feature, W (B, L, D) every token
through ln_final and text_projection, F (B, T, D) the per-frame CLS feature after ln_post and proj.
"""

from __future__ import annotations

import pickle
import re
import zipfile
from dataclasses import dataclass
from pathlib import Path

import open_clip
import torch
from open_clip.constants import OPENAI_DATASET_MEAN, OPENAI_DATASET_STD
from open_clip.model import CLIP, CLIPTextCfg, CLIPVisionCfg
from torch import Tensor, nn

from harness.errors import CheckpointError
from harness.numerics import pin_torch

pin_torch()  # oneDNN and NNPACK off for every model, which is built or loaded here (harness/numerics.py)

PIXEL_MEAN = OPENAI_DATASET_MEAN
PIXEL_STD = OPENAI_DATASET_STD
# Keys OpenAI's archive carries that are not weights.
_NON_WEIGHT_KEYS = ("input_resolution", "context_length", "vocab_size")


@dataclass(frozen=True)
class ClipShape:
    """The sizes of an OpenAI-layout ViT CLIP (heads follow OpenAI's width // 64 rule)."""

    embed_dim: int
    image_size: int
    patch_size: int
    vision_width: int
    vision_layers: int
    context_length: int
    vocab_size: int
    text_width: int
    text_layers: int


def shape_from_state_dict(state: dict[str, Tensor]) -> ClipShape:
    """Infer the architecture of an OpenAI-layout ViT CLIP state dict (as open_clip does)."""
    grid = round((state["visual.positional_embedding"].shape[0] - 1) ** 0.5)
    patch = state["visual.conv1.weight"].shape[-1]
    return ClipShape(
        embed_dim=state["text_projection"].shape[1],
        image_size=patch * grid,
        patch_size=patch,
        vision_width=state["visual.conv1.weight"].shape[0],
        vision_layers=len({k.split(".")[3] for k in state if k.startswith("visual.transformer.resblocks.")}),
        context_length=state["positional_embedding"].shape[0],
        vocab_size=state["token_embedding.weight"].shape[0],
        text_width=state["ln_final.weight"].shape[0],
        text_layers=len({k.split(".")[2] for k in state if k.startswith("transformer.resblocks.")}),
    )


def build_clip(shape: ClipShape, context_length: int, quick_gelu: bool = True) -> CLIP:
    """A float32 open_clip CLIP of the given shape with text length `context_length`."""
    vision = CLIPVisionCfg(
        layers=shape.vision_layers,
        width=shape.vision_width,
        head_width=64,
        patch_size=shape.patch_size,
        image_size=shape.image_size,
    )
    text = CLIPTextCfg(
        context_length=context_length,
        vocab_size=shape.vocab_size,
        width=shape.text_width,
        heads=max(1, shape.text_width // 64),
        layers=shape.text_layers,
    )
    return CLIP(shape.embed_dim, vision_cfg=vision, text_cfg=text, quick_gelu=quick_gelu)


CLIP_FILE_HINT = ("Give a local file (OpenAI's ViT-B-32.pt, an OpenAI-layout state dict, or an open_clip "
                  "checkpoint) in the suite's backbone.checkpoint.")


def read_state_dict(path: str | Path, what: str = "CLIP checkpoint", hint: str = CLIP_FILE_HINT) -> dict[str, Tensor]:
    """Weights from OpenAI's TorchScript archive, a plain or wrapped state dict, or safetensors. `what` names
    the file in errors (e.g. "xpool checkpoint"), `hint` says where to fix it."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise CheckpointError(f"{what} not found: {path}. {hint}")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(path))
        elif zipfile.is_zipfile(path) and any(n.endswith("constants.pkl") for n in zipfile.ZipFile(path).namelist()):
            state = torch.jit.load(str(path), map_location="cpu").state_dict()  # OpenAI's archive
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:
        raise CheckpointError(f"cannot read {what} {path}: {unreadable_because(error, path)}") from None
    for wrapper in ("state_dict", "model"):
        if isinstance(state, dict) and isinstance(state.get(wrapper), dict):
            state = state[wrapper]
    if not isinstance(state, dict) or not all(torch.is_tensor(v) for v in state.values()):
        raise CheckpointError(f"{what} {path}: not a state dict of tensors.")
    if all(k.startswith("module.") for k in state):
        state = {k[len("module."):]: v for k, v in state.items()}
    return {k: v for k, v in state.items() if k not in _NON_WEIGHT_KEYS}


def unreadable_because(error: Exception, path: Path) -> str:
    """Why torch could not read a checkpoint file, in words a user can act on (torch's own messages name its
    internals, and its pickle refusal advises loading with weights_only=False, which would run the file's code)."""
    size = path.stat().st_size
    if size == 0:
        return "the file is empty (0 bytes): an interrupted copy or download; copy it again."
    if isinstance(error, pickle.UnpicklingError):
        refused = re.search(r"(GLOBAL \S+)|(Unsupported operand \d+)", str(error))
        what = (f"it refers to {refused.group(1)}, code that loading it would run" if refused and refused.group(1)
                else f"its pickle holds more than tensors ({refused.group(2) if refused else 'refused'} by the "
                     "weights-only reader), and loading it fully could run code from the file")
        return (f"{what}; the harness reads weights only and refuses it. Save the weights as a state dict of tensors "
                "(torch.save(model.state_dict(), ...)) where the file is trusted.")
    if isinstance(error, EOFError) or "central directory" in str(error) or "zip archive" in str(error):
        return f"the file ends early or is damaged ({size:,} bytes; not a complete torch archive); copy it again."
    return str(error)


def load_weights_strictly(model: nn.Module, state: dict[str, Tensor], source: str) -> None:
    """load_state_dict, but every mismatch is listed in one clear error."""
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    misshapen = [
        f"{k} {tuple(state[k].shape)} != {tuple(expected[k].shape)}"
        for k in expected
        if k in state and state[k].shape != expected[k].shape
    ]
    if missing or unexpected or misshapen:
        parts = []
        for label, keys in (("missing", missing), ("unexpected", unexpected), ("wrong shape", misshapen)):
            if keys:
                more = f" (+{len(keys) - 8} more)" if len(keys) > 8 else ""
                parts.append(f"{label}: {', '.join(keys[:8])}{more}")
        raise CheckpointError(f"{source} does not fit the model: " + "; ".join(parts) + ".")
    model.load_state_dict({k: v.to(expected[k].dtype) for k, v in state.items()})


def load_clip(arch: str, checkpoint: str | Path, context_length: int, quick_gelu: bool = True) -> CLIP:
    """Build the backbone from a local checkpoint with text length `context_length`.

    arch "auto" infers the sizes from OpenAI-layout weights (any size); an open_clip architecture
    name builds that configuration and requires the weights to fit it exactly.
    """
    state = read_state_dict(checkpoint)
    source = f"CLIP checkpoint {checkpoint}"
    if "positional_embedding" not in state:
        raise CheckpointError(f"{source}: no text positional_embedding; is this a CLIP checkpoint?")
    available = state["positional_embedding"].shape[0]
    if context_length > available:
        raise CheckpointError(f"{source}: {context_length} words requested, the checkpoint has {available} positions.")
    positions = state["positional_embedding"]
    state["positional_embedding"] = positions[:context_length]
    if arch == "auto":
        if "visual.proj" not in state:
            raise CheckpointError(f"{source}: arch 'auto' needs OpenAI-layout ViT weights (no visual.proj found).")
        model = build_clip(shape_from_state_dict(state), context_length, quick_gelu)
    else:
        if arch not in open_clip.list_models():
            raise CheckpointError(f"unknown open_clip architecture {arch!r}; use 'auto' or one of open_clip.list_models().")
        model = open_clip.create_model(
            arch, force_context_length=context_length, force_quick_gelu=quick_gelu, precision="fp32"
        )
    load_weights_strictly(model, state, source)
    model = model.float()
    # every text position of the checkpoint (beyond the words used): what heads initialise positions from
    model.checkpoint_positional_embedding = positions.detach().float().clone()
    return model


class Backbone(nn.Module):
    """open_clip CLIP -> t, W (text) and F (frames), whole or stage by stage.

    The visual tower in open_clip's own stages: `frame_tokens` (`frame_embeddings`: patch embedding, class
    token, positions; then `prepare_tokens`: ln_pre), the ordered blocks `visual_blocks` (run by `run_visual_blocks`, or one by one by a method that
    inserts work between them), and `pool_frames` / `project_tokens` (ln_post, proj). `encode_frames` is
    their composition. The text tower likewise: `text_embeddings`, `text_attention_mask`, `text_blocks`,
    `project_text`. A method may run the stages itself (insert a module between two blocks, wrap a block,
    append tokens, pass an attention mask, change the number of sequences midway) without open_clip's
    private methods.

    Parameter ownership: the parameters of the CLIP as loaded are recorded (`clip_parameters`); they train at
    lr x coef_lr. Everything a method adds, wherever it sits (inside the tower too), is a head parameter."""

    def __init__(self, clip: CLIP, provenance: dict | None = None):
        super().__init__()
        self.clip = clip
        self.provenance = provenance or {}
        size = clip.visual.image_size
        self.image_size = int(size[0] if isinstance(size, tuple) else size)
        self.context_length = int(clip.context_length)
        self.embed_dim = int(clip.text_projection.shape[1])
        visual = clip.visual
        if visual.attn_pool is not None or visual.final_ln_after_pool or visual.pool_type != "tok" \
                or visual.proj is None:
            raise CheckpointError("the backbone's visual tower is not an OpenAI-style ViT (class-token pooling, "
                                  "ln_post then proj); its stages cannot be exposed")
        # A plain list, not registered: deep-copied with the module (the same copies as its parameters), so a
        # method built on a copy of the backbone knows which of its parameters came from the checkpoint.
        self.clip_parameters: list[nn.Parameter] = list(clip.parameters())

    @property
    def logit_scale(self) -> nn.Parameter:
        return self.clip.logit_scale

    def owns(self, parameter: nn.Parameter) -> bool:
        """Whether `parameter` is one of the CLIP checkpoint's (trained at lr x coef_lr)."""
        return any(parameter is own for own in self.clip_parameters)

    # -- visual stages --------------------------------------------------------------------------------
    @property
    def visual_blocks(self) -> nn.ModuleList:
        """The visual transformer's residual-attention blocks, in order."""
        return self.clip.visual.transformer.resblocks

    def frame_embeddings(self, images: Tensor) -> Tensor:
        """images (N, 3, H, W) -> (N, 1 + patches, width): patch embedding, class token first, positions (what a
        method adds its own embeddings to before `prepare_tokens`)."""
        visual = self.clip.visual
        x = visual.conv1(images)
        x = x.reshape(x.shape[0], x.shape[1], -1).permute(0, 2, 1)
        cls = visual.class_embedding.to(x.dtype).view(1, 1, -1).expand(x.shape[0], -1, -1)
        return torch.cat([cls, x], dim=1) + visual.positional_embedding.to(x.dtype)

    def prepare_tokens(self, x: Tensor) -> Tensor:
        """Embedded tokens (N, tokens, width) -> the input of the first block: patch dropout (identity unless
        configured), ln_pre."""
        visual = self.clip.visual
        return visual.ln_pre(visual.patch_dropout(x))

    def frame_tokens(self, images: Tensor) -> Tensor:
        """images (N, 3, H, W) -> (N, 1 + patches, width): `frame_embeddings` then `prepare_tokens`."""
        return self.prepare_tokens(self.frame_embeddings(images))

    def run_visual_blocks(self, x: Tensor, start: int = 0, stop: int | None = None,
                          attn_mask: Tensor | None = None) -> Tensor:
        """x (N, tokens, width) through blocks start..stop-1 (default: all), with an optional attention mask
        (tokens x tokens, or (N * heads, tokens, tokens)): additive (float), or bool with True where attention is
        not allowed, as torch's attention takes it (turned into -inf here: open_clip's blocks would cast a bool
        mask to the activations' dtype, 1.0 where masked)."""
        if attn_mask is not None and attn_mask.dtype == torch.bool:
            attn_mask = torch.zeros(attn_mask.shape, dtype=x.dtype, device=x.device).masked_fill(attn_mask, -torch.inf)
        batch_first = self.clip.visual.transformer.batch_first
        x = x if batch_first else x.transpose(0, 1)
        for block in self.visual_blocks[start:stop]:
            x = block(x, attn_mask=attn_mask)
        return x if batch_first else x.transpose(0, 1)

    def pool_frames(self, x: Tensor) -> Tensor:
        """The last block's output (N, tokens, width) -> (N, D): the class token through ln_post and proj."""
        visual = self.clip.visual
        return visual.ln_post(x)[:, 0] @ visual.proj

    def project_tokens(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """The last block's output (N, tokens, width) -> the class token (N, D) and every other token
        (N, tokens - 1, D), each through ln_post and proj."""
        visual = self.clip.visual
        projected = visual.ln_post(x) @ visual.proj
        return projected[:, 0], projected[:, 1:]

    def encode_frames(self, frames: Tensor) -> Tensor:
        """frames (B, T, 3, H, W) -> F (B, T, D): CLS after ln_post and proj, not normalised."""
        batch, length = frames.shape[:2]
        pooled = self.pool_frames(self.run_visual_blocks(self.frame_tokens(frames.flatten(0, 1))))
        return pooled.view(batch, length, -1)

    def encode_frames_and_patches(self, frames: Tensor) -> tuple[Tensor, Tensor]:
        """frames (B, T, 3, H, W) -> F (B, T, D) and P (B, T, N, D): every patch token after ln_post and
        proj (N = 49 for ViT-B/32 at 224 px), not normalised."""
        batch, length = frames.shape[:2]
        x = self.run_visual_blocks(self.frame_tokens(frames.flatten(0, 1)))
        pooled = self.pool_frames(x)
        patches = self.clip.visual.ln_post(x)[:, 1:] @ self.clip.visual.proj
        return pooled.view(batch, length, -1), patches.view(batch, length, patches.shape[1], -1)

    # -- text stages ----------------------------------------------------------------------------------
    @property
    def text_blocks(self) -> nn.ModuleList:
        """The text transformer's residual-attention blocks, in order."""
        return self.clip.transformer.resblocks

    def text_embeddings(self, tokens: Tensor) -> Tensor:
        """tokens (B, L) -> (B, L, width): token embedding plus positions, the input of the first block."""
        return self.clip.token_embedding(tokens) + self.clip.positional_embedding[: tokens.shape[1]]

    def text_attention_mask(self, tokens: Tensor, mask_padding_keys: Tensor | None = None) -> Tensor:
        """The causal mask (L, L); with `mask_padding_keys` (B, L) bool, padded keys masked too: (B * heads,
        L, L), batch-major as torch expects."""
        length = tokens.shape[1]
        mask = self.clip.attn_mask[:length, :length]
        if mask_padding_keys is None:
            return mask
        heads = self.text_blocks[0].attn.num_heads
        mask = mask.expand(tokens.shape[0], -1, -1).masked_fill(~mask_padding_keys[:, None, :], -torch.inf)
        return mask.repeat_interleave(heads, dim=0)

    def text_states(self, tokens: Tensor, mask_padding_keys: Tensor | None = None) -> Tensor:
        """tokens (B, L) -> the final text transformer states (B, L, width).

        CLIP's encoder is causal only. With `mask_padding_keys` (B, L) bool, padded positions are also
        masked as keys (the DiCoSA/GLSCL text encoder): the states at padded positions then attend to the
        real tokens only. The real positions' states are unchanged (causality already hides the padding
        from them)."""
        return self.clip.transformer(self.text_embeddings(tokens),
                                     attn_mask=self.text_attention_mask(tokens, mask_padding_keys))

    def project_text(self, states: Tensor) -> Tensor:
        """Text states (..., width) -> (..., D) through ln_final and text_projection."""
        return self.clip.ln_final(states) @ self.clip.text_projection

    def encode_sentence(self, tokens: Tensor) -> Tensor:
        """tokens (B, L) -> t (B, D): the EOT (largest id) state through ln_final and text_projection; only
        that position is projected (heads that need no word features pay for no more)."""
        states = self.text_states(tokens)
        eot = states[torch.arange(tokens.shape[0], device=tokens.device), tokens.argmax(dim=-1)]
        return self.project_text(eot)

    def encode_text(self, tokens: Tensor, mask_padding_keys: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """tokens (B, L) -> t (B, D) at the EOT and W (B, L, D) at every position (see text_states for
        `mask_padding_keys`)."""
        words = self.project_text(self.text_states(tokens, mask_padding_keys))
        sentence = words[torch.arange(tokens.shape[0], device=tokens.device), tokens.argmax(dim=-1)]
        return sentence, words

    def load_prefixed(self, state: dict[str, Tensor], prefix: str, source: str) -> None:
        """Load the `prefix`-ed CLIP weights of a method checkpoint (OpenAI layout), strictly; text
        positions are sliced to this backbone's word count."""
        clip = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
        if "positional_embedding" in clip:
            clip["positional_embedding"] = clip["positional_embedding"][: self.context_length]
        load_weights_strictly(self.clip, clip, f"{source} ({prefix}*)")

    def describe(self) -> dict:
        return {"image_size": self.image_size, "context_length": self.context_length,
                "embed_dim": self.embed_dim, **self.provenance}
