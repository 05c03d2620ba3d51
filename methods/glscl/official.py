"""Import a state dict saved by the official GLSCL code into the harness's GLSCL, strictly.

The official configuration shares the queries and the decoder between the modalities
(`query_share=1`, `cross_att_share=1`): both sides use `spatial_queries` and `transformer_decoder_noun`.
Key map:
    clip.*                          -> the backbone (text positions sliced to the suite's word count)
    transformerClip.resblocks.*     -> seqTransf blocks
    frame_position_embeddings.*     -> seqTransf frame positions
    spatial_queries                 -> the shared queries
    transformer_decoder_noun.*      -> the shared decoder
The official model also saves tensors that configuration never uses; they are skipped by name:
`weight_fc.*` (a weighting head left out of the score), `noun_queries` (unused when queries are shared),
`decoder_layer_noun.*` / `decoder_layer_spatial.*` (the templates nn.TransformerDecoder copies) and
`transformer_decoder_spatial.*` (unused when the decoder is shared). Any other key, a missing key or a
shape mismatch is an error naming the keys. A checkpoint trained with unshared queries or decoders
cannot be told apart by its keys: only the shared configuration is supported.
"""

from __future__ import annotations

from torch import Tensor

from harness.api import load_official_mapped

KEY_MAP = {
    "transformerClip.resblocks.": "resblocks.",
    "frame_position_embeddings.": "frame_position_embeddings.",
    "spatial_queries": "local.queries",
    "transformer_decoder_noun.": "local.decoder.",
}
UNUSED_PREFIXES = ("weight_fc.", "noun_queries", "decoder_layer_noun.", "decoder_layer_spatial.",
                   "transformer_decoder_spatial.")


def load_official_glscl(method, state: dict[str, Tensor], source: str = "GLSCL checkpoint") -> None:
    load_official_mapped(method, state, KEY_MAP, source, skip=UNUSED_PREFIXES)
