"""revlib.harness.alive: the three schedules' alive tensors, by liveness."""

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import pytest  # noqa: E402

from revlib.harness import alive  # noqa: E402


@pytest.mark.parametrize("blocks", [1, 2, 4, 9, 64])
def test_peaks_autograd_linear_checkpoint_linear_reversible_constant(blocks):
    # autograd: every activation and every block's internals, plus two gradients
    assert alive.peak("autograd", blocks) == 2 * blocks + 2
    # checkpoint: the block inputs, one block's internals, two gradients
    assert alive.peak("checkpoint", blocks) == blocks + 3
    # reversible: two activations, one block's internals, two gradients... at most four at once
    assert alive.peak("reversible", blocks) == 4


def test_liveness_frees_a_tensor_after_its_last_use():
    frames = alive.replay(alive.schedule("reversible", 3))
    forward = [f for f in frames if f.step.phase[0] == "forward"]
    assert [sorted(f.alive) for f in forward] == [["x0", "x1"], ["x1", "x2"], ["x2", "x3"]]
    assert "g0" in frames[-1].alive  # a result stays alive to the end
    rebuild = next(f for f in frames if f.step.phase == ("recompute", 3))
    assert rebuild.rebuilt == {"x2", "a3"}


def test_replay_refuses_a_tensor_never_made():
    steps = [alive.Step(("forward", 1), "bad", ("x7",), ("x1",))]
    with pytest.raises(ValueError, match="uses x7, never made"):
        alive.replay(steps)


def test_internals_weight_the_count():
    frames = alive.replay(alive.schedule("autograd", 2))
    loss = next(f for f in frames if f.step.phase == ("loss", 0))
    assert loss.size() == 6 and loss.size(internals=4.5) == 3 + 1 + 2 * 4.5


def test_aligned_autograd_waits_while_the_others_recompute():
    rows = alive.aligned(4)
    assert len(rows) == 1 + 4 + 1 + 2 * 4
    waits = [r for r in rows[1:] if r["autograd"].step is None]
    assert len(waits) == 4
    assert all(r["reversible"].step.phase[0] == "recompute" for r in waits)


def test_animation_has_one_frame_per_phase_and_a_text_stand_in():
    fig, anim = alive.animate_schedules(2, dpi=30)
    try:
        html = anim.to_jshtml(default_mode="once")
        assert html.count("data:image/png;base64") == 1 + 2 + 1 + 2 * 2
        movie = alive.AnimationHTML(html, "an animation")
        assert movie._repr_html_() == html and repr(movie) == "an animation"
    finally:
        plt.close(fig)


def test_static_plot_counts_match_replay():
    fig, counts = alive.plot_alive_counts(3, [1, 2, 4])
    try:
        assert max(counts["reversible"]) == 4 and max(counts["autograd"]) == 8
    finally:
        plt.close(fig)
