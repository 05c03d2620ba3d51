"""Prompt Switch (Deng et al., ICCV 2023; official code bladewaltz1/PromptSwitch): a prompt cube switched
between the frames of a chunk inside every visual block, a prompt-aggregation attention per frame, mean pooling,
and a captioning branch at training only.

Video (encoder.py): padded frames take the video's last real frame; the frames are arranged in the official
chunk-major order and encoded in groups of F (the training frame count), giving frame features f_1..f_T;
v = normalise(mean_f f^_f) over every frame (no mask: repeated frames count, as in the official code).
Text: t^, the normalised EOT feature. Score s = t^ . v, a cosine without logit scale (the official evaluation);
an inner product, indexable. Loss: symCE(e^theta S) + 0.5 CE_w(caption) (captioner.py), theta the backbone's
logit scale.

Cost split: encode_video = the prompted ViT over every frame and the aggregation; encode_text = the text tower;
score = D MACs per pair. The captioner costs nothing at evaluation.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from harness.api import Features, HarnessError, InnerProduct, Method, symmetric_cross_entropy
from methods.promptswitch.captioner import Captioner, class_weights, official_padding
from methods.promptswitch.encoder import (aggregate, extend_to_groups, official_frame_order, prompted_tokens,
                                          repeat_last_real_frame, switched_block, training_selection)

# "official": the engine's time-ordered frames are arranged chunk-major as the official loader orders them;
# "given": they enter the encoder in the order given (for inputs already in the official order).
FrameOrder = Literal["official", "given"]
# The official prompt initialisation: N(0, (w^-1/2 x initializer_range)^2), HF CLIP's initializer_range 0.02.
INITIALIZER_RANGE = 0.02


@dataclass
class PromptSwitchParams:
    prompts: int = 6  # P (num_prompts): prompts per frame and frames per chunk
    # F (num_frames): the training frame count. The official vision config always takes it (it is read in
    # training mode, at construction), so every video is encoded in groups of F frames.
    train_frames: int = 6
    frame_order: FrameOrder = "official"
    # Training mode keeps train_frames of the frames (per chunk and segment, a random one of the segment's
    # frames), as the official code trains on F frames sampled 'rand'. False: train on every frame.
    train_subsample: bool = True
    caption_layers: int = 2  # num_captioner_layers
    frequent_word_weight: float = 0.25
    caption_loss_weight: float = 0.5  # caption_loss_mult
    # The aggregation's out_proj starts at N(0, std^2) with bias 0. 0: the official zero init (the aggregation
    # starts as the identity, and its in-projection receives no gradient until out_proj has moved).
    aggregation_out_std: float = 0.0


class PromptSwitch(Method):
    """Prompt Switch: prompt cube with inter-frame switching, prompt aggregation, mean pooling. No
    benchmark_defaults: the official code has one configuration (its flag defaults, no per-benchmark script)."""

    name = "promptswitch"
    reported_as = "Prompt Switch"
    Params = PromptSwitchParams
    score_kind = "similarity"

    def __init__(self, backbone, params: PromptSwitchParams):
        super().__init__(backbone, params)
        if params.prompts < 1 or params.train_frames % params.prompts:
            raise HarnessError(f"promptswitch: train_frames={params.train_frames} must be a multiple of "
                               f"prompts={params.prompts} (each group of F frames is split into chunks of P).")
        width = backbone.clip.visual.class_embedding.shape[0]
        if backbone.clip.token_embedding.embedding_dim != backbone.embed_dim:
            raise HarnessError(f"promptswitch: the captioner decodes in the text width "
                               f"({backbone.clip.token_embedding.embedding_dim}) over frame features of the "
                               f"embedding width ({backbone.embed_dim}); the official code needs them equal.")
        self.prompt_embedding = nn.Parameter(torch.randn(params.prompts, params.prompts, width)
                                             * (width ** -0.5 * INITIALIZER_RANGE))
        self.aggregation = nn.MultiheadAttention(width, backbone.visual_blocks[0].attn.num_heads, batch_first=True)
        nn.init.normal_(self.aggregation.out_proj.weight, std=params.aggregation_out_std)
        nn.init.zeros_(self.aggregation.out_proj.bias)
        self.captioner = Captioner(backbone, params.caption_layers)
        self.register_buffer("caption_weights", class_weights(self.captioner.head.out_features,
                                                              params.frequent_word_weight), persistent=False)

    # -- video ----------------------------------------------------------------------------------------
    def arrange(self, frames: Tensor, frame_mask: Tensor) -> Tensor:
        """The engine's frames (B, T, 3, H, W) -> the frames the official encoder sees: padded frames replaced
        by the last real one, extended to whole groups of F, in the official order; at training, F of them."""
        params = self.params
        frames = extend_to_groups(repeat_last_real_frame(frames, frame_mask), params.train_frames)
        count = frames.shape[1]
        if params.frame_order == "official":
            frames = frames[:, official_frame_order(count, params.prompts).to(frames.device)]
        if self.training and params.train_subsample and count > params.train_frames:
            frames = frames[:, training_selection(count, params.prompts, params.train_frames).to(frames.device)]
        return frames

    def encoder_output(self, images: Tensor, states: list[Tensor] | None = None) -> Tensor:
        """images (N, 3, H, W), N a multiple of F, in the official order -> the last block's output
        (N, 1 + patches + P, w); `states` (if given) receives every block's input and that output."""
        x = prompted_tokens(self.backbone, images, self.prompt_embedding)
        batch_first = self.backbone.clip.visual.transformer.batch_first
        for block in self.backbone.visual_blocks:
            if states is not None:
                states.append(x)
            x = switched_block(block, x, self.params.prompts, batch_first)
        if states is not None:
            states.append(x)
        return x

    def frame_features(self, frames: Tensor) -> Tensor:
        """Arranged frames (B, T, 3, H, W) -> f (B, T, D), not normalised."""
        batch, count = frames.shape[:2]
        last = self.encoder_output(frames.flatten(0, 1))
        aggregated = aggregate(self.aggregation, last, self.params.train_frames, self.params.prompts)
        return self.backbone.pool_frames(aggregated[:, None]).view(batch, count, -1)

    def encode_video(self, frames: Tensor, frame_mask: Tensor) -> Features:
        features = self.frame_features(self.arrange(frames, frame_mask))
        video = F.normalize(F.normalize(features, dim=-1).mean(dim=1), dim=-1)
        return {"video": video, "frames": features} if self.training else {"video": video}

    # -- text, score, loss ----------------------------------------------------------------------------
    def encode_text(self, tokens: Tensor, token_mask: Tensor) -> Features:
        text = {"text": F.normalize(self.backbone.encode_sentence(tokens), dim=-1)}
        if self.training:
            text["caption_ids"] = official_padding(tokens, token_mask)
        return text

    def score(self, text: Features, video: Features) -> Tensor:
        return text["text"] @ video["video"].t()

    def inner_product(self, text: Features, video: Features) -> InnerProduct:
        return InnerProduct(text["text"], video["video"], 1.0)

    def caption_logits(self, text: Features, video: Features) -> Tensor:
        """Next-token logits of caption i from the frames of video i (aligned pairs)."""
        return self.captioner(self.backbone, video["frames"], text["caption_ids"])

    def loss(self, text: Features, video: Features) -> dict[str, Tensor]:
        contrastive = symmetric_cross_entropy(self.backbone.logit_scale.exp() * self.score(text, video))
        caption = self.params.caption_loss_weight * self.captioner.loss(self.backbone, video["frames"],
                                                                        text["caption_ids"], self.caption_weights)
        return {"total": contrastive + caption, "contrastive": contrastive, "caption": caption}

    def protocol(self) -> dict[str, str]:
        params = self.params
        order = ("official: time-ordered frames arranged chunk-major (P segments, chunk c takes one frame of each)"
                 if params.frame_order == "official" else "given: frames enter the encoder in the order given")
        return {
            "frame_padding": "padded frames are replaced by the video's last real frame and the frame count is "
                             f"extended to a multiple of F = {params.train_frames} the same way (the official "
                             "loader repeats the last decoded frame); the mean pooling counts them (no frame mask, "
                             "as the official code)",
            "frame_groups": f"every video is encoded in independent groups of F = {params.train_frames} frames, "
                            f"chunks of P = {params.prompts} (the official vision config takes the training "
                            "frame count at test time too)",
            "frame_order": order,
            "training_frames": (f"training encodes F = {params.train_frames} frames per video (a random frame of each "
                                "segment per chunk, the official 'rand' sampling)" if params.train_subsample
                                else "deviation: training encodes every frame (the official code trains on F)"),
            "aggregation_lr": "deviation: the aggregation attention trains at the head learning rate; the official "
                              "code's parameter grouping (names containing prompt/caption/pool) leaves it in the CLIP "
                              "group (1e-6, not 1e-5). The harness puts every added parameter at the head rate",
            "caption_padding": "the captioner reads ids padded with EOT, as the official tokenizer pads; its loss "
                               "skips the EOT and the pads",
            "evaluation": "score = cosine of t^ and the normalised mean of the normalised frames, no logit scale",
        } | ({} if params.aggregation_out_std == 0 else {
            "aggregation_init": f"deviation: the aggregation's out_proj starts at N(0, {params.aggregation_out_std}^2),"
                                " not at zero"})

    def load_official(self, state: dict[str, Tensor], source: str) -> None:
        from methods.promptswitch.official import load_official_promptswitch

        load_official_promptswitch(self, state, source)
