"""The public figures: every one predicted or explained, fitted rows marked, and docs/validation.md carrying
the generated table verbatim (it cannot be typed by hand and drift)."""

from __future__ import annotations

from pathlib import Path

import pytest

from apps.cli import main
from simulator.catalog import TAEHV, WAN_VAE
from simulator.public import FIGURES, FITTED, NO_CHECK
from simulator.reproduce import format_public, public_rows
from tests.extras import need

DOC = Path(__file__).resolve().parents[2] / "docs" / "validation.md"
BEGIN, END = "<!-- public-table: begin (cascade validate --public --markdown) -->", "<!-- public-table: end -->"


def test_every_figure_has_a_row_and_fitted_rows_say_so() -> None:
    rows = public_rows()
    assert [r.figure.id for r in rows] == [f.id for f in FIGURES]
    for r in rows:
        assert r.note
        if r.figure.id in FITTED or r.figure.id in NO_CHECK:
            assert r.fitted and r.why_no_check
        else:
            assert not r.fitted
    held = [r for r in rows if not r.fitted and r.error_pct is not None]
    assert len(held) >= 10  # the evidence: figures no fit has seen
    # The fits reproduce their own figures exactly; that is what makes them no evidence.
    for r in rows:
        if r.figure.id in ("paper-1.3b-seq", "paper-14b-seq", "sdv2-vae-5090"):
            assert r.error_pct == pytest.approx(0.0, abs=0.2)


def test_the_doc_carries_the_generated_table() -> None:
    text = DOC.read_text(encoding="utf-8")
    assert BEGIN in text and END in text, "docs/validation.md lost its public-table markers"
    table = text.split(BEGIN, 1)[1].split(END, 1)[0].strip()
    assert table == format_public(public_rows(), markdown=True).strip(), (
        "docs/validation.md's public table is stale: paste `cascade validate --public --markdown` between the markers")


def test_cli_prints_the_table(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["validate", "--public"]) == 0
    out = capsys.readouterr().out
    assert "longlive-block-5" in out and "held out" in out


def test_taehv_count_matches_its_layer_list() -> None:
    import sys

    sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
    from count_flops import count_taehv

    c = count_taehv()
    assert TAEHV.flops(12) == pytest.approx(3 * c["flops_per_latent_frame"], rel=1e-3)
    assert TAEHV.bytes(12) == pytest.approx(3 * c["bytes_per_latent_frame"], rel=1e-3)


@pytest.mark.slow
def test_wan_vae_count_matches_the_catalog() -> None:
    """Recount the Wan VAE on the meta device with diffusers' AutoencoderKLWan (no weights, no arithmetic)."""
    need("diffusers")
    import sys

    sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
    from count_flops import count_wan_vae

    c = count_wan_vae()
    for label, frames in (("first_block", 9), ("later_block", 12)):
        assert WAN_VAE.flops(frames) == pytest.approx(c[label]["flops"], rel=1e-3)
        assert WAN_VAE.bytes(frames) == pytest.approx(c[label]["bytes"], rel=1e-3)


def test_dit_flops_formula_matches_a_count_of_the_model() -> None:
    import sys

    sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
    from count_flops import count_dit

    for v in count_dit().values():
        assert v["formula"] == pytest.approx(v["counted"], rel=0.02)
