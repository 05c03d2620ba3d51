"""The plugin API: the one surface a method author reads and imports from.

- the method interface (`Method`, `Features`, `InnerProduct`, the padding declarations) and its helpers
  (`masked_mean`, `symmetric_cross_entropy`);
- the shared backbone (`Backbone`: the CLIP towers whole or stage by stage, parameter ownership) and its
  loaders (`ClipShape`, `build_clip`, `load_weights_strictly`);
- head building blocks (the temporal transformer, copies of text blocks and positions, scoring chunked over
  videos under a pair budget);
- official-checkpoint import (`load_official_mapped`; `load_official_hf` and its key map for checkpoints in
  the Hugging Face CLIP layout);
- the errors a method raises (`HarnessError`, `CheckpointError`);
- the method contract check (`check_method`; `assert_conforms` for pytest).

Built-in methods import only from here, as a plugin does. Nothing here imports the run pipeline or the
commands (tests/test_imports.py).
"""

from harness.api.backbone import Backbone, ClipShape, build_clip, load_weights_strictly
from harness.api.blocks import (OFFICIAL_HEAD_LAYER_NORM_EPS, over_video_chunks, run_blocks, temporal_transformer,
                                text_blocks, text_positions)
from harness.api.hf_clip import hf_to_openai, load_official_hf, openai_to_hf
from harness.api.method import (PADDED_FRAMES, PADDED_WORDS, Features, InnerProduct, Method, masked_mean,
                                symmetric_cross_entropy)
from harness.api.official import load_official_mapped
from harness.errors import CheckpointError, HarnessError

__all__ = ["Backbone", "CheckpointError", "ClipShape", "Features", "HarnessError", "InnerProduct", "Method",
           "OFFICIAL_HEAD_LAYER_NORM_EPS", "PADDED_FRAMES", "PADDED_WORDS", "build_clip", "hf_to_openai",
           "load_official_hf", "load_official_mapped", "openai_to_hf",
           "load_weights_strictly", "masked_mean", "over_video_chunks", "run_blocks", "symmetric_cross_entropy",
           "temporal_transformer", "text_blocks", "text_positions"]
