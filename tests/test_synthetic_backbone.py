"""The synthetic suite's small CLIP: its pre-training, stopped midway, continues from its saved state and ends
with the weights of an uninterrupted pre-training; the stop says where the state is and how to continue."""

from __future__ import annotations

import pytest
import torch

import harness.data.synthetic_backbone as synthetic_backbone

STEPS = 12


def test_a_stopped_pre_training_continues_to_the_weights_of_an_uninterrupted_one(tmp_path, monkeypatch):
    monkeypatch.setattr(synthetic_backbone, "SAVE_EVERY", 5)
    uninterrupted = synthetic_backbone.pretrain(7, STEPS, quiet=True)
    real_loss, calls, lines = synthetic_backbone.symmetric_cross_entropy, [], []

    def stopped_at_the_ninth_step(logits):
        calls.append(1)
        if len(calls) == 9:
            raise KeyboardInterrupt  # Ctrl-C during step 9: steps 1-5 are saved, 6-8 are lost
        return real_loss(logits)

    monkeypatch.setattr(synthetic_backbone, "symmetric_cross_entropy", stopped_at_the_ninth_step)
    state = tmp_path / "backbone.pretrain-state.pt"
    with pytest.raises(KeyboardInterrupt):
        synthetic_backbone.pretrain(7, STEPS, quiet=True, state_file=state, log=lines.append)
    assert torch.load(state, weights_only=True)["step"] == 5
    assert lines == [f"the synthetic backbone's pre-training was stopped; its state after step 5 of {STEPS} is kept "
                     f"in {state}, and the same command continues from it"]
    monkeypatch.setattr(synthetic_backbone, "symmetric_cross_entropy", real_loss)
    resumed = synthetic_backbone.pretrain(7, STEPS, quiet=True, state_file=state, log=lines.append)
    assert lines[-1] == f"continuing the synthetic backbone's pre-training after step 5 of {STEPS} ({state})"
    assert resumed.keys() == uninterrupted.keys()
    assert all(torch.equal(resumed[name], uninterrupted[name]) for name in uninterrupted)  # exactly


def test_the_cached_backbone_is_written_once_and_its_state_removed(tmp_path, monkeypatch):
    monkeypatch.setattr(synthetic_backbone, "STEPS", 2)
    path = synthetic_backbone.synthetic_checkpoint(tmp_path, 3, quiet=True, log=lambda *_: None)
    assert path == synthetic_backbone.checkpoint_path(tmp_path, 3) and path.is_file()
    assert not path.with_suffix(".pretrain-state.pt").exists()
    written = path.stat().st_mtime_ns
    assert synthetic_backbone.synthetic_checkpoint(tmp_path, 3, quiet=True) == path
    assert path.stat().st_mtime_ns == written  # found, not pre-trained again


def test_the_text_tower_cut_after_the_longest_caption_gives_the_features_of_the_whole_context():
    """Pre-training encodes captions cut after the batch's last EOT: the causal tower pooled at the EOT gives the
    same features as on the 32 tokens (float32, 1e-5 absolute)."""
    import numpy as np

    from harness.api.backbone import Backbone, build_clip

    torch.manual_seed(0)
    model = build_clip(synthetic_backbone.small_shape(), synthetic_backbone.CONTEXT_LENGTH)
    _, tokens = synthetic_backbone._batch(np.random.default_rng(0))
    cut = synthetic_backbone.up_to_longest(tokens)
    assert cut.shape[1] < tokens.shape[1] and cut.argmax(dim=1).max() == cut.shape[1] - 1
    difference = (Backbone(model).encode_sentence(cut) - model.encode_text(tokens)).abs().max().item()
    assert difference <= 1e-5


def test_the_first_run_generates_the_benchmark_in_the_background_only_when_both_are_missing(tmp_path, monkeypatch):
    from harness.data.synthetic import Synthetic
    from harness.pipeline import preflight
    from harness.suite import load_suite

    started = []
    monkeypatch.setattr(preflight, "generate_in_background",
                        lambda root, seed, store: started.append((root, seed, store)) or root)
    suite = load_suite("suites/synthetic.yaml", [f"cache_dir={tmp_path}"])
    folder = Synthetic.folder(None, tmp_path, suite.seed)
    assert preflight.generate_while_pretraining(suite, tmp_path, quiet=True) == folder
    assert started == [(folder, suite.seed, {"cache_dir": tmp_path, "frames": 8, "policy": "fps1-linspace", "size": 32,
                                             "timeout": suite.benchmark.decode_timeout})]
    checkpoint = synthetic_backbone.checkpoint_path(tmp_path, suite.seed)
    checkpoint.parent.mkdir(parents=True)
    checkpoint.touch()  # the backbone cached: nothing to overlap the generation with
    assert preflight.generate_while_pretraining(suite, tmp_path, quiet=True) is None
    checkpoint.unlink()
    folder.mkdir()  # the benchmark there already
    assert preflight.generate_while_pretraining(suite, tmp_path, quiet=True) is None
    other = load_suite("suites/synthetic.yaml", [f"cache_dir={tmp_path}", "benchmark.root=elsewhere"])
    assert preflight.generate_while_pretraining(other, tmp_path / "fresh", quiet=True) is None
    assert len(started) == 1


def test_the_batches_made_ahead_in_another_process_are_those_made_here():
    import numpy as np

    here, ahead = np.random.default_rng(11), synthetic_backbone.AheadBatches(np.random.default_rng(11), 3)
    try:
        for _ in range(3):
            pixels, tokens = synthetic_backbone._batch(here)
            made_pixels, made_tokens, state = ahead.next()
            assert torch.equal(made_pixels, pixels) and torch.equal(made_tokens, tokens)
            assert state == here.bit_generator.state  # a state saved after this step continues from here
    finally:
        ahead.close()
