"""The published cost claims against the harness's figures (`harness claims`) and GLSCL's Table I regenerated
(`harness report --table glscl-table1`), on planted cost records: no counting, no timing."""

from __future__ import annotations

import json
from importlib import resources
from pathlib import Path

import pandas as pd
import pytest

from harness import registry
from harness.commands.cli import main
from harness.errors import HarnessError
from harness.report.claims import (FAILS, HOLDS, UNCHECKABLE, Claim, check_claim, figures_from_record, read_claims,
                                   verdict)
from harness.report.leaderboard import Run
from harness.report.render import latex_escape, markdown_escape
from harness.report.reported import METRICS, read_reported
from harness.report.table1 import SOURCE, table1_context, table1_rows, write_table1

PROTOCOL = {"frames": 12, "words": 32, "image_size": 224, "arch": "ViT-B-32", "weights": "random"}


def entry(pair: float, query: float = 1e9, pair_s: float | None = None, query_s: float = 1e-2,
          coarse: float | None = None, candidates: int | None = None) -> dict:
    """A `harness cost` method entry with planted figures (MACs; seconds per pair and per query)."""
    score = {"per_pair": pair, "per_text": 0.0, "per_video": 0.0, "fixed": 0.0}
    record = {"method": "m", "counter": "fvcore", "check_counter": "flop-counter", "per_video": 5e10,
              "per_query": query, "score": score, "candidates": candidates,
              "coarse": {**score, "per_pair": coarse} if coarse is not None else None}
    if pair_s is not None:
        record["timing"] = {"per_video": {"median_s": 1.0}, "per_query": {"median_s": query_s},
                            "per_pair": {"median_s": pair_s}, "per_pair_coarse": {"median_s": pair_s / 10}}
    return record


def planted_record() -> dict:
    """xpool's score 300 GMAC over the 1k-A matrix, glscl's 10 GMAC plus 5 MMAC of per-query head work."""
    return {"protocol": PROTOCOL, "settings": {"timing": True, "code_version": "test"},
            "environment": {"device_name": "cpu", "torch_threads": 2},
            "methods": {"zeroshot": entry(512.0, pair_s=1e-9), "xpool": entry(3e5, pair_s=3e-6),
                        "glscl": entry(1e4, query=1e9 + 5e6, pair_s=1e-7, query_s=2e-2)}}


def write_json(path: Path, data: object) -> Path:
    path.write_text(json.dumps(data))
    return path


def claim(numerator: str, denominator: str, ratio: float, statement: str = "x times faster") -> Claim:
    return Claim("c", "a paper", statement, "head FLOPs", numerator, denominator, ratio, 1.0, ratio, "")


@pytest.fixture
def figures() -> dict:
    return figures_from_record(planted_record(), {"xpool": "X-Pool", "glscl": "GLSCL", "zeroshot": None})


def test_each_ratio_is_computed_from_the_figures_it_shows(figures):
    check = check_claim(claim("X-Pool", "GLSCL", 275.0), figures)
    c = check.comparison
    assert (c.numerator.name, c.denominator.name) == ("xpool", "glscl")
    assert c.counted.numerator == pytest.approx(3e11) and c.counted.denominator == pytest.approx(1e10)
    assert c.counted.value == pytest.approx(30.0)
    # the per-query head work: encode_text beyond zeroshot's bare text tower, once per caption, 1,000 captions
    assert figures["glscl"].query_head_macs == pytest.approx(5e6)
    assert c.counted_with_query.value == pytest.approx(3e11 / (1e10 + 1000 * 5e6))
    # measured: 1,000 pairs of one caption, and the same with its encode_text
    assert c.measured.value == pytest.approx(3e-3 / 1e-4)
    assert c.measured_with_query.value == pytest.approx((1e-2 + 3e-3) / (2e-2 + 1e-4))
    assert check.verdict.kind == FAILS and "9.167 times below the reported 275x" in check.verdict.text


def test_the_rendered_table_shows_the_figures_beside_each_ratio(tmp_path, capsys):
    cost = write_json(tmp_path / "cost.json", planted_record())
    assert main(["claims", "--cost", str(cost), "--output", str(tmp_path / "claims.md")]) == 0
    text = (tmp_path / "claims.md").read_text()
    row = next(line for line in text.splitlines() if line.startswith("| glscl-xpool "))
    assert "300 GMAC / 10 GMAC = 30x" in row and "3 ms / 0.1 ms = 30x" in row
    assert "does not hold: counted 30x" in row
    assert "glscl-xpool: does not hold" in capsys.readouterr().out


def test_the_verdict_at_the_boundaries_of_the_factor():
    assert verdict(4.0, 8.0, 2.0, "counted").kind == HOLDS
    assert verdict(4.0, 2.0, 2.0, "counted").kind == HOLDS
    above, below = verdict(4.0, 8.02, 2.0, "counted"), verdict(4.0, 1.98, 2.0, "counted")
    assert above.kind == below.kind == FAILS
    assert "2.005 times above the reported 4x" in above.text and "2.02 times below the reported 4x" in below.text
    assert verdict(4.0, 12.0, 3.0, "counted").kind == HOLDS
    assert verdict(4.0, None, 2.0, "measured", "no timing").text == f"{UNCHECKABLE}: no timing"


def test_a_claims_method_the_harness_lacks_cannot_be_checked(figures):
    check = check_claim(claim("X-CLIP", "GLSCL", 220.9), figures)
    assert check.comparison is None and check.verdict.kind == UNCHECKABLE
    assert "'X-CLIP'" in check.verdict.text and "glscl, xpool, zeroshot" in check.verdict.text


def test_an_unnamed_reference_is_compared_with_every_method(figures):
    statement = "comparable performance while 50 times faster"
    check = check_claim(claim("state-of-the-art (not named)", "GLSCL", 30.0, statement), figures,
                        accuracy={"xpool": 46.0, "glscl": 48.0})
    assert check.verdict.kind == UNCHECKABLE and "not named" in check.verdict.text
    others = {c.numerator.name: c for c in check.against_every}
    assert set(others) == {"xpool", "zeroshot"} and all(c.denominator.name == "glscl" for c in others.values())
    assert others["xpool"].counted.value == pytest.approx(30.0)
    assert "counted for: xpool;" in check.verdict.text  # within 2x of 30 only against xpool
    assert check.accuracy == {"xpool": 46.0, "glscl": 48.0}  # the claim names accuracy


def test_every_named_method_of_the_packaged_claims_is_a_registered_one():
    names = {cls.reported_as or name for name in registry.methods() for cls in [registry.methods()[name]]}
    for c in read_claims():
        for side in (c.numerator, c.denominator):
            assert "not named" in side or side in names or side.lower() in names, (c.id, side)


def test_table1_has_one_row_per_table_i_method_with_its_reported_figures(figures):
    reported = read_reported()
    table = reported[reported["source"] == SOURCE]
    rows = table1_rows(reported, figures, "ViT-B/32")
    assert len(rows) == len(table.groupby(["backbone", "method", "post"]))
    for row in rows:
        published = table[(table["method"] == row.method) & (table["backbone"] == row.backbone)
                          & (table["post"] == row.post)]
        for record in published.to_dict("records"):
            for metric in METRICS:
                value = row.reported[f"{record['direction']} {metric}"]
                assert (value is None and pd.isna(record[metric])) or value == record[metric]
        assert row.head_flops_g == published["head_flops_g"].iloc[0]
        assert row.reproduced == {}
    by_key = {(r.method, r.backbone, r.post): r for r in rows}
    assert by_key["X-Pool", "ViT-B/32", "none"].counted_gmac == pytest.approx(300.0)
    assert by_key["GLSCL", "ViT-B/16", "none"].counted_gmac is None  # counted at ViT-B/32 only
    assert by_key["GLSCL", "ViT-B/32", "qbnorm"].label == "GLSCL*"


def test_table1_fills_the_reproduced_columns_from_a_run(figures):
    row = {"method": "xpool", "benchmark": "msrvtt", "split": "test-1kA", "direction": "t2v", "stage": "single",
           "post": "none", "R1": 45.0, "R5": 70.0, "R10": 80.0, "MdR": 2.0, "MnR": 14.0}
    run = Run(Path("run-1"), {"suite": {"backbone": {"arch": "ViT-B-32"}, "benchmark": {"train_split": "train-9k"}},
                              "methods": {"xpool": {"reported_as": "X-Pool"}}, "rows": [row]})
    rows = {(r.method, r.backbone, r.post): r for r in table1_rows(read_reported(), figures, "ViT-B/32", [run])}
    assert rows["X-Pool", "ViT-B/32", "none"].reproduced["t2v R1"] == 45.0
    assert rows["X-Pool", "ViT-B/32", "none"].reproduced.get("v2t R1") is None
    assert rows["GLSCL", "ViT-B/32", "none"].reproduced == {}


def test_table1_latex_and_markdown_escape_names(figures, tmp_path):
    name = "A_B&C%"
    reported = pd.DataFrame([{"method": name, "venue": "V#1", "backbone": "ViT-B/32", "dataset": "msrvtt-1kA",
                              "direction": d, "post": "none", "R1": 40.0, "R5": 70.0, "R10": 80.0, "MdR": 2.0,
                              "MnR": 12.0, "head_flops_g": 3.5, "source": SOURCE} for d in ("t2v", "v2t")])
    context = table1_context(table1_rows(reported, figures, "ViT-B/32"), "planted", "ViT-B/32", [])
    write_table1(context, ["tex", "md"], tmp_path)
    tex, md = (tmp_path / "glscl-table1.tex").read_text(), (tmp_path / "glscl-table1.md").read_text()
    assert latex_escape(name) in tex and name not in tex and latex_escape("V#1") in tex
    assert markdown_escape(name) in md and r"\toprule" in tex and "no run given" in md


def test_the_table_command_writes_both_formats_from_a_cost_record(tmp_path):
    cost = write_json(tmp_path / "cost.json", planted_record())
    assert main(["report", "--table", "glscl-table1", "--cost", str(cost), "--output", str(tmp_path / "out")]) == 0
    md = (tmp_path / "out" / "glscl-table1.md").read_text()
    assert "| X-Pool | CVPR'22 | xpool |" in md and (tmp_path / "out" / "glscl-table1.tex").is_file()


@pytest.mark.parametrize("content, message", [
    ("not json", "cannot be read as a `harness cost --output` record"),
    (json.dumps({"rows": []}), "not a `harness cost --output` record (no methods)"),
    (json.dumps({"protocol": PROTOCOL, "methods": {"xpool": {"per_query": 1.0}}}), "method 'xpool' is not"),
])
def test_a_cost_file_that_is_not_a_cost_record_is_one_error(tmp_path, capsys, content, message):
    path = tmp_path / "cost.json"
    path.write_text(content)
    assert main(["claims", "--cost", str(path)]) == 2
    error = capsys.readouterr().err
    assert f"--cost {path}" in error and message in error


def test_a_scale_record_of_another_protocol_is_refused(tmp_path, capsys):
    cost = write_json(tmp_path / "cost.json", planted_record())
    scale = write_json(tmp_path / "scale.json", {**planted_record(), "protocol": {**PROTOCOL, "frames": 64}})
    assert main(["claims", "--cost", str(cost), "--scale", str(scale)]) == 2
    assert "frames 64 != 12" in capsys.readouterr().err


def test_an_unknown_table_and_a_format_it_lacks_are_errors(tmp_path, capsys):
    cost = write_json(tmp_path / "cost.json", planted_record())
    assert main(["report", "--table", "glscl-table2", "--cost", str(cost), "--output", str(tmp_path)]) == 2
    assert "--table 'glscl-table2': no such table; choose from glscl-table1" in capsys.readouterr().err
    assert main(["report", "--table", "glscl-table1", "--format", "html", "--cost", str(cost),
                 "--output", str(tmp_path)]) == 2
    assert "Table I is written as tex and md" in capsys.readouterr().err
    assert main(["report"]) == 2
    assert "give at least one run directory" in capsys.readouterr().err


def test_a_factor_that_cannot_bound_a_ratio_is_an_error(tmp_path, capsys):
    cost = write_json(tmp_path / "cost.json", planted_record())
    assert main(["claims", "--cost", str(cost), "--factor", "1"]) == 2
    assert "--factor 1: a claim holds within a factor above 1" in capsys.readouterr().err


@pytest.mark.parametrize("edit, message", [
    (lambda text: text.replace("reported_ratio,", "ratio,", 1), "not a claims table (no column reported_ratio)"),
    (lambda text: text.replace("220.9,1.0,220.9", "220.9,1.0,fast", 1), "reported_ratio 'fast' is not a positive"),
])
def test_a_malformed_claims_table_is_one_error_naming_the_file(tmp_path, edit, message):
    path = tmp_path / "claims.csv"
    path.write_text(edit(resources.files("harness.report").joinpath("claims.csv").read_text()))
    with pytest.raises(HarnessError, match=str(path)) as error:
        read_claims(path)
    assert message in str(error.value)
