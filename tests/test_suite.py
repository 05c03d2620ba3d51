"""Suite validation: every bad input gives one error naming the file, the key path and what is allowed."""

from __future__ import annotations

from pathlib import Path

import pytest

from harness.errors import SuiteError
from harness.pipeline.preflight import PreflightError
from harness.pipeline.run import run_suite
from harness.suite import load_suite

REPO = Path(__file__).parent.parent


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "suite.yaml"
    path.write_text(text)
    return path


BASE = """
name: t
benchmark: {name: msrvtt, root: /nowhere, test_splits: [test-1kA]}
methods: [{name: zeroshot}]
"""


def test_shipped_suites_validate(monkeypatch):
    monkeypatch.setenv("MSRVTT_ROOT", "/data/msrvtt")
    monkeypatch.setenv("CLIP_CHECKPOINT", "/weights/ViT-B-32.pt")
    synthetic = load_suite(REPO / "suites" / "synthetic.yaml")
    assert [m.name for m in synthetic.methods] == ["zeroshot", "clip4clip-meanp", "clip4clip-seqlstm",
                                                   "clip4clip-seqtransf", "clip4clip-tighttransf", "xpool", "glscl", "eercf",
                                                   "glccl", "xclip", "dicosa", "ts2net", "centerclip", "promptswitch",
                                                   "clipvip"]
    assert synthetic.methods[3].params == {"layers": 3, "frame_positions": 77}  # resolved with defaults
    msrvtt = load_suite(REPO / "suites" / "msrvtt.yaml")
    assert msrvtt.benchmark.root == "/data/msrvtt"
    assert msrvtt.backbone.checkpoint == "/weights/ViT-B-32.pt"
    assert msrvtt.protocol.frames == 12 and msrvtt.protocol.words == 32
    glscl, eercf, glccl = msrvtt.methods[6:9]
    assert glccl.name == "glccl" and glccl.params["words"] == 32 and glccl.params["csc_weight"] == 0.5
    assert eercf.name == "eercf" and eercf.params["frames"] == 12 and eercf.params["candidates"] == 50
    assert glscl.name == "glscl" and glscl.params["temperature"] == 3.0 and glscl.params["beta"] == 0.02
    xclip, dicosa = msrvtt.methods[9:11]
    assert xclip.name == "xclip" and (xclip.params["words"], xclip.params["frames"]) == (32, 12)
    assert dicosa.name == "dicosa" and dicosa.params["concepts"] == 8 and dicosa.params["temperature"] == 3.0


def test_typo_in_a_key_names_path_and_suggests(tmp_path):
    path = write(tmp_path, BASE + "training: {epochz: 3}\n")
    with pytest.raises(SuiteError) as error:
        load_suite(path)
    message = str(error.value)
    assert str(path) in message and "training.epochz" in message
    assert "Did you mean 'epochs'" in message and "batch_size" in message  # the allowed keys are listed


def test_unknown_method_lists_allowed_and_suggests(tmp_path):
    path = write(tmp_path, BASE.replace("{name: zeroshot}", "{name: zeroshot}, {name: clip4clip-meanP}"))
    with pytest.raises(SuiteError) as error:
        load_suite(path)
    message = str(error.value)
    assert "methods[1].name" in message and "'clip4clip-meanP'" in message
    assert "Did you mean 'clip4clip-meanp'" in message and "zeroshot" in message


def test_unknown_benchmark_and_split(tmp_path):
    with pytest.raises(SuiteError, match=r"benchmark.name: unknown benchmark 'msrvt'.*Did you mean 'msrvtt'"):
        load_suite(write(tmp_path, BASE.replace("name: msrvtt", "name: msrvt")))
    with pytest.raises(SuiteError, match=r"benchmark.test_splits\[0\]: unknown split 'test-1k'.*test-1kA"):
        load_suite(write(tmp_path, BASE.replace("[test-1kA]", "[test-1k]")))


def test_wrong_type_names_expected_type(tmp_path):
    with pytest.raises(SuiteError) as error:
        load_suite(write(tmp_path, BASE + "protocol: {frames: twelve}\n"))
    assert "protocol.frames" in str(error.value) and "'twelve'" in str(error.value) and "an integer" in str(error.value)
    with pytest.raises(SuiteError, match=r"protocol.sampling: got 'uniformly'; allowed: 'fps1-linspace', 'uniform'"):
        load_suite(write(tmp_path, BASE + "protocol: {sampling: uniformly}\n"))


def test_method_may_override_only_its_own_hyper_parameters(tmp_path):
    with pytest.raises(SuiteError, match=r"methods\[0\].params.epochs: unknown key"):
        load_suite(write(tmp_path, BASE.replace("{name: zeroshot}", "{name: zeroshot, params: {epochs: 3}}")))
    with pytest.raises(SuiteError, match=r"methods\[0\].frames: unknown key 'frames'"):
        load_suite(write(tmp_path, BASE.replace("{name: zeroshot}", "{name: zeroshot, frames: 3}")))


def test_interpolation(tmp_path, monkeypatch):
    text = BASE.replace("/nowhere", '"${DATA_HOME:-/default}/msrvtt"')
    monkeypatch.delenv("DATA_HOME", raising=False)
    assert load_suite(write(tmp_path, text)).benchmark.root == "/default/msrvtt"
    monkeypatch.setenv("DATA_HOME", "/mnt/data")
    assert load_suite(write(tmp_path, text)).benchmark.root == "/mnt/data/msrvtt"
    monkeypatch.delenv("NO_SUCH_VARIABLE", raising=False)
    with pytest.raises(SuiteError, match=r"benchmark.root: environment variable \$\{NO_SUCH_VARIABLE\} is not set"):
        load_suite(write(tmp_path, BASE.replace("/nowhere", '"${NO_SUCH_VARIABLE}"')))


def test_not_yaml_and_missing_file(tmp_path):
    with pytest.raises(SuiteError, match="not valid YAML"):
        load_suite(write(tmp_path, "name: [unclosed\n"))
    with pytest.raises(SuiteError, match="suite file not found"):
        load_suite(tmp_path / "absent.yaml")


def test_missing_data_path_stops_at_once_naming_files_and_layout(tmp_path):
    suite = load_suite(write(tmp_path, BASE.replace("/nowhere", str(tmp_path / "absent"))))
    suite.cache_dir = str(tmp_path / "cache")
    with pytest.raises(PreflightError) as error:
        run_suite(suite, tmp_path / "run", quiet=True)
    message = str(error.value)
    assert str(tmp_path / "suite.yaml") in message
    assert str(tmp_path / "absent" / "MSRVTT_JSFUSION_test.csv") in message
    assert "Expected layout" in message and "videos/<video_id>.mp4" in message
    assert not (tmp_path / "run").exists()  # nothing was started


@pytest.mark.parametrize("name", ["msrvtt", "msvd", "didemo", "lsmdc", "activitynet", "vatex", "synthetic"])
def test_every_benchmark_suite_lists_every_method_with_its_protocol(name):
    from harness.registry import methods

    suite = load_suite(REPO / "suites" / f"{name}.yaml")
    assert suite.benchmark.name == name
    assert {m.name for m in suite.methods} == set(methods())
    paragraph = name in ("didemo", "activitynet")
    assert (suite.protocol.frames, suite.protocol.words) == ((64, 64) if paragraph else (8 if name == "synthetic"
                                                                                          else 12, 32))


def test_benchmark_protocol_defaults_apply_unless_the_suite_sets_them(tmp_path):
    base = "name: t\nbenchmark: {name: didemo, root: /nowhere, test_splits: [test]}\nmethods: [{name: glscl}, {name: eercf}]\n"
    suite = load_suite(write(tmp_path, base))
    assert (suite.protocol.frames, suite.protocol.words) == (64, 64)
    assert suite.methods[0].params["beta"] == 0.005 and suite.methods[1].params["frames"] == 64
    suite = load_suite(write(tmp_path, base + "protocol: {frames: 32}\n"))
    assert (suite.protocol.frames, suite.protocol.words) == (32, 64)


def test_per_benchmark_method_defaults(tmp_path):
    base = "name: t\nbenchmark: {{name: {}, root: /nowhere, test_splits: [test]}}\nmethods: [{{name: xpool}}, {{name: glscl}}]\n"
    msvd = load_suite(write(tmp_path, base.format("msvd")))
    assert msvd.methods[0].params["dropout"] == 0.4
    lsmdc = load_suite(write(tmp_path, base.format("lsmdc")))
    assert lsmdc.methods[0].params["dropout"] == 0.3
    assert (lsmdc.methods[1].params["temperature"], lsmdc.methods[1].params["alpha"]) == (5.0, 0.01)


def test_validation_split_must_be_a_split_of_the_benchmark(tmp_path):
    path = write(tmp_path, "name: t\nbenchmark: {name: vatex, root: /x, validation_split: val, test_splits: [test]}\n"
                           "methods: [{name: zeroshot}]\n")
    with pytest.raises(SuiteError, match=r"benchmark.validation_split: unknown split 'val' of vatex"):
        load_suite(path)


def test_the_suite_key_reference_covers_every_key_and_is_the_one_in_the_plugin_docs():
    """Generated from the suite schema: every key the reader accepts has a line with its type, default and
    meaning; docs/plugins.md holds exactly the generated table (regenerate it with `harness list --suite-keys`)."""
    import dataclasses

    from harness.suite_reference import SECTIONS, key_reference

    reference = key_reference()
    rows = {line.split("|")[1].strip().strip("`"): line for line in reference.splitlines()[2:]}
    for section, cls in SECTIONS.items():
        for field in dataclasses.fields(cls):
            if field.name == "source" or (section == "" and field.name in ("benchmark", "methods", "backbone",
                                                                            "protocol", "training", "evaluation")):
                continue
            key = f"{section}.{field.name}" if section else field.name
            assert key in rows, key
            assert not rows[key].rstrip().endswith("|  |"), f"{key} has no meaning in the reference"
    assert "a finite value >= 1" in rows["training.epochs"] and "`5`" in rows["training.epochs"]
    marker = "<!-- suite keys: generated -->\n"
    docs = (REPO / "docs" / "plugins.md").read_text()
    assert marker in docs
    assert docs.split(marker, 1)[1].lstrip("\n").startswith(reference), \
        "docs/plugins.md: regenerate its suite keys with `harness list --suite-keys`"
