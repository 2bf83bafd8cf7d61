"""revlib.harness.figures: tables and the book's schematics."""

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

from revlib.harness import figures, schematics  # noqa: E402


def test_markdown_table_rows_and_header():
    text = figures.markdown_table(["a", "b"], [[1, 2.5], ["x", None]])
    assert text.splitlines() == ["| a | b |", "|---|---|", "| 1 | 2.5 |", "| x | None |"]


def test_markdown_table_refuses_a_short_row():
    with pytest.raises(ValueError, match="markdown_table: a row has 1 cells, the header 2"):
        figures.markdown_table(["a", "b"], [[1]])


@pytest.mark.parametrize(
    "draw",
    [
        schematics.draw_additive_coupling,
        schematics.draw_affine_coupling,
        schematics.draw_reversible_backward,
        schematics.draw_two_step_coupling,
        schematics.draw_revnet_stages,
        schematics.draw_hamiltonian_block,
    ],
)
def test_schematics_draw_patches_at_the_book_dpi(draw):
    fig = draw()
    try:
        assert fig.dpi == figures.DPI
        assert len(fig.axes[0].patches) >= 6  # boxes, adders and arrows
    finally:
        plt.close(fig)


def test_stability_regions_plot_the_given_points():
    z = np.array([-0.5 + 0.2j, 0.3j])
    fig = figures.plot_stability_regions({"block": z})
    try:
        ax = fig.axes[0]
        (points,) = [line for line in ax.lines if line.get_label() == "block"]
        xs, ys = points.get_data()
        assert np.allclose(xs, z.real) and np.allclose(ys, z.imag)
        assert ax.get_legend() is not None
    finally:
        plt.close(fig)


def test_plot_series_one_line_per_series():
    fig = figures.plot_series(
        [1, 2, 4], {"a": [1, 2, 3], "b": [3, 2, 1]}, xlabel="x", ylabel="y", logx=True
    )
    try:
        assert [line.get_label() for line in fig.axes[0].lines] == ["a", "b"]
        assert fig.axes[0].get_xscale() == "log"
    finally:
        plt.close(fig)
