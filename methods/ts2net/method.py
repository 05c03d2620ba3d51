"""TS2-Net: Token Shift and Selection (official code yuqi657/ts2_net, a CLIP4Clip fork; ECCV 2022).

Visual side only; the text side is CLIP's EOT feature t. Per video of T frames, N tokens per frame:
- token shift (shift.py) in the attention input of the last `shift_blocks` visual blocks (officially
  blocks 10 and 11 of 12), a video's frames together;
- every token through ln_post and proj: (T, N, D);
- token selection (selection.py): per frame the CLS token plus k = 3 perturbed-top-k combinations of the
  patch tokens, scored by a small MLP; soft and noisy at evaluation too, as officially;
- seqTransf over the K T = (1 + k) T tokens: X' = Transformer(X + P_pos[0 .. K T - 1]) + X, keys masked by
  the official tiled token mask (scores.py); F'_i = X'_{K i}, the CLS positions;
- score (scores.py): S = exp(logit_scale) sum_i w_i <t^, f^_i>, w the frame softmax of the masked,
  normalised cosines (factor 4). Train and test alike; loss: symmetric cross-entropy on S.

Selection noise: Z for the selection is drawn on the CPU from generators the method owns. In training,
from `noise_generator`, seeded with Params.seed at construction and advancing batch by batch (as the
official code's global generator after its seed). At evaluation, every video gets the same draw of shape
(T, samples, patches) from a generator freshly seeded with Params.seed, so that a video's features depend
on neither its batch nor the order of evaluation (officially the noise is fresh for every evaluation
batch). Tests set `topk_noise` to a (videos x T, samples, patches) tensor, frame-major rows, to use that
noise instead of drawing (train and test).

Cost split: encode_video = the shifted visual tower, the scorer, the selection and seqTransf (F'^ and the
frame mask it uses); encode_text = the text tower (t^); score = the frame cosines, the frame softmax and
the weighted sum, T (D + 2) MACs per pair, chunked over videos under `pair_budget` elements.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor

from harness.api import (PADDED_FRAMES, Features, HarnessError, Method, over_video_chunks, symmetric_cross_entropy,
                         temporal_transformer, text_blocks, text_positions)
from methods.ts2net.official import load_official_ts2net
from methods.ts2net.scores import FrameMask, frame_weighted_scores, token_mask
from methods.ts2net.selection import TokenScorer, hard_indicator, perturbed_indicator, select_tokens
from methods.ts2net.shift import shift_fold, shift_positions, shifted_block

# The selection at evaluation: "perturbed" (official: the training-time soft, noisy top-k) or "hard" (a
# deviation: the plain top-k of the scores, one patch per slot, no noise). Training always perturbs.
EvalSelection = Literal["perturbed", "hard"]


@dataclass
class TS2NetParams:
    layers: int = 4  # seqTransf blocks, initialised from the backbone's first text blocks
    frame_positions: int = 77  # rows of the token position embedding (CLIP's text context length)
    shift_blocks: int = 2  # the last `shift_blocks` visual blocks are shifted (official: 10 and 11 of 12)
    shift_div: int = 7  # n_div: shifted positions every fold = tokens // n_div (at least 1)
    selected_patches: int = 3  # k, patch tokens selected per frame besides the CLS token
    topk_samples: int = 500  # perturbed top-k samples
    topk_sigma: float = 0.05  # perturbation scale
    frame_softmax: float = 4.0  # factor of the frame softmax
    frame_mask: FrameMask = "official-tiled"
    eval_selection: EvalSelection = "perturbed"
    seed: int = 42  # seeds the selection noise (the official default seed)
    # Elements of the (texts x videos x frames) cosine tensor built at once while scoring.
    pair_budget: int = 1 << 24


@dataclass
class VideoStages:
    """Every intermediate of encode_video, for inspection and tests."""

    tokens: Tensor  # (B, T, N, D) every token after ln_post and proj, shift included
    token_scores: Tensor  # (B, T, N) the scorer's tanh output, CLS at 0
    indicator: Tensor  # (B * T, k, N - 1) selection weights, frame-major rows
    selected: Tensor  # (B, K T, D) per frame the CLS token, then the k selected tokens
    frames: Tensor  # (B, T, D) seqTransf output (with its residual) at the CLS positions
    frame_mask: Tensor  # (B, T) bool, the frame mask the score applies


class TS2Net(Method):
    """TS2-Net: token shift in the last visual blocks, token selection, seqTransf, frame-weighted score."""

    name = "ts2net"
    reported_as = "TS2-Net"
    Params = TS2NetParams
    score_kind = "logits"
    post_processing = ("dsl",)
    # The official scripts (MSR-VTT, VATEX) use the same method values, and there are none for MSVD, DiDeMo,
    # LSMDC or ActivityNet: the Params defaults hold for every benchmark.
    benchmark_defaults = {}

    def __init__(self, backbone, params: TS2NetParams):
        super().__init__(backbone, params)
        blocks = len(backbone.visual_blocks)
        if params.shift_blocks < 0 or params.shift_div < 1:
            raise HarnessError(f"ts2net: shift_blocks={params.shift_blocks} and shift_div={params.shift_div} must be "
                               ">= 0 and >= 1.")
        self.shifted_blocks = tuple(range(blocks - min(params.shift_blocks, blocks), blocks))
        self.tokens_in_frame = int(backbone.clip.visual.positional_embedding.shape[0])  # N, CLS included
        if not 1 <= params.selected_patches <= self.tokens_in_frame - 1:
            raise HarnessError(f"ts2net: selected_patches={params.selected_patches}, but a frame has "
                               f"{self.tokens_in_frame - 1} patches.")
        from_previous, from_next = shift_positions(self.tokens_in_frame, params.shift_div)
        self.register_buffer("from_previous", from_previous, persistent=False)
        self.register_buffer("from_next", from_next, persistent=False)
        self.resblocks = text_blocks(backbone, params.layers, self.name)
        self.frame_position_embeddings = text_positions(backbone, params.frame_positions)
        self.scorer = TokenScorer(backbone.embed_dim)
        self.noise_generator = torch.Generator().manual_seed(params.seed)
        self.topk_noise: Tensor | None = None

    @property
    def kept_per_frame(self) -> int:
        """K: the CLS token and the selected ones."""
        return 1 + self.params.selected_patches

    # -- per video ------------------------------------------------------------------------------------
    def visual_tokens(self, frames: Tensor) -> Tensor:
        """frames (B, T, 3, H, W) -> every token (B, T, N, D) through the shifted tower, ln_post and proj."""
        videos, length = frames.shape[:2]
        first_shifted = len(self.backbone.visual_blocks) - len(self.shifted_blocks)
        x = self.backbone.run_visual_blocks(self.backbone.frame_tokens(frames.flatten(0, 1)), 0, first_shifted)
        for index in self.shifted_blocks:
            x = shifted_block(self.backbone.visual_blocks[index], x, length, self.from_previous, self.from_next)
        cls, patches = self.backbone.project_tokens(x)
        return torch.cat([cls.unsqueeze(1), patches], dim=1).view(videos, length, patches.shape[1] + 1, -1)

    def selection_noise(self, videos: int, length: int, patches: int, like: Tensor) -> Tensor:
        """Z (videos x length, samples, patches): injected, drawn from the training generator, or (evaluation)
        the same fixed draw for every video."""
        shape = (videos * length, self.params.topk_samples, patches)
        if self.topk_noise is not None:
            if tuple(self.topk_noise.shape) != shape:
                raise HarnessError(f"ts2net: the injected topk_noise has shape {tuple(self.topk_noise.shape)}; "
                                   f"this batch needs {shape} (videos x frames, samples, patches).")
            return self.topk_noise.to(like)
        if self.training:
            return torch.normal(0.0, 1.0, size=shape, generator=self.noise_generator).to(like)
        generator = torch.Generator().manual_seed(self.params.seed)
        per_video = torch.normal(0.0, 1.0, size=(length, *shape[1:]), generator=generator)
        return per_video.repeat(videos, 1, 1).to(like)

    def select(self, tokens: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """tokens (B, T, N, D) -> token scores (B, T, N), indicators (B T, k, N - 1) and the selected tokens
        (B, K T, D)."""
        videos, length, count, dim = tokens.shape
        flat = tokens.flatten(0, 1)
        scores = self.scorer(flat)
        patch_scores = scores[:, 1:]
        if self.training or self.params.eval_selection == "perturbed":
            noise = self.selection_noise(videos, length, count - 1, patch_scores)
            indicator = perturbed_indicator(patch_scores, noise, self.params.selected_patches, self.params.topk_sigma)
        else:
            indicator = hard_indicator(patch_scores, self.params.selected_patches)
        selected = select_tokens(flat, indicator).view(videos, length * self.kept_per_frame, dim)
        return scores.view(videos, length, count), indicator, selected

    def aggregate(self, selected: Tensor, frame_mask: Tensor) -> tuple[Tensor, Tensor]:
        """seqTransf over the selected tokens (B, K T, D) -> the CLS positions (B, T, D) and the frame mask
        (B, T) the score applies."""
        if selected.shape[1] > self.params.frame_positions:
            raise HarnessError(f"ts2net: {frame_mask.shape[1]} frames give {selected.shape[1]} selected tokens, but "
                               f"frame_positions={self.params.frame_positions}.")
        mask = token_mask(frame_mask, self.kept_per_frame, self.params.frame_mask)
        output = temporal_transformer(self.resblocks, self.frame_position_embeddings, selected, mask, self.name)
        return output[:, ::self.kept_per_frame], mask[:, ::self.kept_per_frame]

    def video_stages(self, frames: Tensor, frame_mask: Tensor) -> VideoStages:
        tokens = self.visual_tokens(frames)
        scores, indicator, selected = self.select(tokens)
        aggregated, used_mask = self.aggregate(selected, frame_mask)
        return VideoStages(tokens, scores, indicator, selected, aggregated, used_mask)

    def encode_video(self, frames: Tensor, frame_mask: Tensor) -> Features:
        stages = self.video_stages(frames, frame_mask)
        return {"frames": F.normalize(stages.frames, dim=-1), "frame_mask": stages.frame_mask}

    # -- per query ------------------------------------------------------------------------------------
    def encode_text(self, tokens: Tensor, token_mask: Tensor) -> Features:
        return {"text": F.normalize(self.backbone.encode_sentence(tokens), dim=-1)}

    # -- per pair -------------------------------------------------------------------------------------
    def score(self, text: Features, video: Features) -> Tensor:
        length = video["frames"].shape[1]
        scores = over_video_chunks(
            lambda part: frame_weighted_scores(text["text"], part["frames"], part["frame_mask"],
                                               self.params.frame_softmax),
            video, text["text"].shape[0] * length, self.params.pair_budget)
        return self.backbone.logit_scale.exp() * scores

    def loss(self, text: Features, video: Features) -> dict[str, Tensor]:
        contrastive = symmetric_cross_entropy(self.score(text, video))
        return {"total": contrastive, "contrastive": contrastive}

    # -- declarations ---------------------------------------------------------------------------------
    def protocol(self) -> dict[str, str]:
        tiled = self.params.frame_mask == "official-tiled"
        facts = {
            "token_shift": self.shift_note(),
            "token_selection": self.selection_note(),
            "frame_mask": "official: the frame mask is tiled over the selected tokens, token j masked by m[j mod T], "
                          "and frame i scored under m[(K i) mod T]" if tiled else
                          "deviation: each frame's mask repeated over its own K tokens (the official code tiles it)",
        }
        readers = []
        if self.shifted_blocks:
            readers.append("the token shift carries padded frames' tokens into the last real frame")
        if tiled:
            readers.append("the tiled frame mask lets padded frames into seqTransf and the score")
        if readers:
            facts[PADDED_FRAMES] = "; ".join(readers) + " (official)"
        copied = self.backbone.context_length
        if copied < self.params.frame_positions:
            facts["token_positions"] = (
                f"deviation at initialisation: token positions {copied}..{self.params.frame_positions - 1} start "
                f"N(0, 0.02), the backbone keeping only {copied} text positions (official: all "
                f"{self.params.frame_positions} from CLIP's positional embedding); K T of them are used")
        return facts

    def shift_note(self) -> str:
        blocks = len(self.backbone.visual_blocks)
        if not self.shifted_blocks:
            return "deviation: no visual block shifted (shift_blocks = 0; official: blocks 10 and 11 of 12)"
        tokens, div = self.tokens_in_frame, self.params.shift_div
        extension = " (tokens // n_div = 0, where the official code fails)" if tokens // div == 0 else ""
        return (f"visual blocks {list(self.shifted_blocks)} of {blocks}, the last min(shift_blocks = "
                f"{self.params.shift_blocks}, {blocks}) (official: 10 and 11 of 12): in the attention input ln_1(x), "
                f"tokens {self.from_previous.tolist()} from frame t-1 and {self.from_next.tolist()} from frame t+1 "
                f"(fold = max(1, {tokens} // {div}) = {shift_fold(tokens, div)}{extension}), whole tokens, CLS fixed, "
                "the residual unshifted, a video's frames together (official)")

    def selection_note(self) -> str:
        k, samples, sigma = self.params.selected_patches, self.params.topk_samples, self.params.topk_sigma
        training = (f"CLS kept plus {k} patch combinations by perturbed top-k ({samples} samples, sigma {sigma}), "
                    "noise from a generator seeded with Params.seed")
        if self.params.eval_selection == "hard":
            return training + "; deviation: plain top-k at evaluation (official: the same soft, noisy selection)"
        return training + ("; at evaluation too, as officially, with one fixed draw from Params.seed for every video "
                           "(officially fresh noise per evaluation batch)")

    def load_official(self, state: dict[str, Tensor], source: str) -> None:
        load_official_ts2net(self, state, source)
