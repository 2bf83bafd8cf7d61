"""revlib.harness.fmnist_grid: its plan, networks and mode comparison (its runs: test_grid)."""

from __future__ import annotations

import json

import pytest
import torch

from revlib import models
from revlib.harness import fmnist_grid as G
from revlib.harness import mode_compare, networks, train


def test_the_registry_builds_the_papers_networks_and_scales_them():
    for paper, key in networks.PAPER_NAMES.items():
        full = networks.build(paper, in_channels=1)
        ref = getattr(models, key)(in_channels=1)
        assert models.count_parameters(full) == models.count_parameters(ref), paper
    assert networks.scaled((16, 32, 64, 112), 0.5) == (8, 16, 32, 56)
    assert networks.is_reversible("RevNet-38") and not networks.is_reversible("ResNet-32")
    assert networks.is_ode("Midpoint-26") and not networks.is_ode("revnet38")
    with pytest.raises(ValueError, match="only mode 'autograd'"):
        networks.build("ResNet-32", mode="reversible")
    with pytest.raises(networks.UnknownModelError, match="unknown model 'ResNet-9000'"):
        networks.build("ResNet-9000")
    with pytest.raises(TypeError, match="no ODE options"):
        networks.build("resnet32", activation="tanh")


def test_the_plateau_rule_takes_the_shortest_length_close_to_twice_as_long():
    def pilot(accs):
        return [{"study": "pilot", "epochs": e, "val_acc": a, "seed": 0} for e, a in accs.items()]

    assert G.plateau_epochs(pilot({2: 0.880, 4: 0.900, 8: 0.912, 16: 0.914})) == 8
    assert G.plateau_epochs(pilot({2: 0.880, 4: 0.900, 8: 0.912})) is None  # 8 vs 16 not run
    assert G.plateau_epochs(pilot({2: 0.88, 8: 0.912, 16: 0.913})) is None  # 4 not run yet
    assert G.plateau_epochs(pilot({2: 0.900, 4: 0.903, 8: 0.950})) == 2  # the shortest wins


def test_the_plan_pairs_the_small_data_runs_and_puts_the_main_table_first():
    jobs = G.main_jobs(8)
    assert len({j.key() for j in jobs}) == len(jobs)
    first = jobs[:6]
    assert [j.model for j in first[:5]] == list(G.NETWORKS) and first[5].study == "stepsize"
    main = [j for j in jobs if j.study == "main"]
    assert {j.model for j in main if j.seed == 4} == {"ResNet-32", "RevNet-38"}
    assert {(j.model, j.mode) for j in main if j.seed == 0 and j.mode == "reversible"} == {
        (m, "reversible") for m in G.NETWORKS if networks.is_reversible(m)
    }
    small = [j for j in jobs if j.study == "small"]
    for f in G.FRACTIONS:  # every (size, seed) has both networks: the comparison is paired
        for s in G.SMALL_SEEDS:
            assert {j.model for j in small if j.fraction == f and j.seed == s} == set(
                G.SMALL_NETWORKS
            )
    assert G.small_updates(0.01, 8) == G.MIN_SMALL_UPDATES
    assert G.small_updates(0.2, 16) == 16 * 86
    length = [j for j in jobs if j.study == "small_length"]
    assert {(j.model, j.fraction) for j in length} == {
        (m, f) for m in G.SMALL_NETWORKS for f in G.SMALL_LENGTH_FRACTIONS
    }
    assert all(j.seed == 0 and not j.test for j in length) and jobs[-len(length) :] == length
    for j in length:  # twice the updates of the small-data run it checks, drops at 50 and 75 %
        once = G.recipe_for(G.Run("small", j.model, 0, 8, fraction=j.fraction), 0).iterations
        twice = G.recipe_for(j, 0)
        assert twice.iterations == 2 * once
        assert twice.milestones == (once, (3 * 2 * once) // 4)


def test_the_step_size_arm_scales_only_the_blocks():
    model = networks.build("Hamiltonian-74", in_channels=1, width=0.25)
    groups = train.parameter_groups(model, 2e-4, lr_scale=G.block_lr_scale(model, 10.0))
    scaled = {id(p) for g in groups if g["lr_scale"] == 10.0 for p in g["params"]}
    in_blocks = {id(p) for n, p in model.named_parameters() if ".blocks." in n}
    assert scaled == in_blocks and 0 < len(scaled) < len(list(model.parameters()))


@pytest.fixture(scope="module")
def batches():
    g = torch.Generator().manual_seed(0)
    data = [(torch.randn(16, 1, 12, 12, generator=g), torch.randint(0, 10, (16,), generator=g))]
    return lambda: iter(data * 3)


def _revnet(mode):
    return networks.build("RevNet-38", in_channels=1, width=0.25, mode=mode)


def test_both_modes_take_the_same_first_step_and_gradients_agree(batches):
    recipe = train.Recipe(iterations=3, milestones=(2,))
    c = mode_compare.compare_modes(_revnet, batches, recipe, cosine_at=(0, 2))
    assert c["autograd"]["loss"][0] == c["reversible"]["loss"][0]  # same weights, same batch
    assert c["first_difference"] is None or c["first_difference"] > 0
    assert [x["step"] for x in c["cosine"]] == [0, 2]
    for x in c["cosine"]:
        assert x["fp32"] > 1 - 1e-6
        assert x["bf16_vs_fp32"] < 1 - 1e-6  # bf16 is visibly coarser than float32
    # control: a 0.1 % change of the weights (far above float32 rounding) shows at update 0
    p = mode_compare.compare_modes(_revnet, batches, recipe, perturb=1e-3)
    assert p["first_difference"] == 0 and p["max_difference"] > 1e-6


def test_the_shipped_results_are_runs_of_the_plan():
    """The committed results file (revlib/harness/results/fmnist_grid.json) holds only runs of
    the plan, each with its history, and the pilot's rule reads it."""
    from importlib.resources import files

    from revlib.harness import grid

    path = files("revlib.harness").joinpath("results/fmnist_grid.json")
    shipped = grid.load(str(path), G.FORMAT, "python -m revlib.harness.fmnist_grid collect")
    plan = G.pilot_jobs() + (
        G.main_jobs(shipped["epochs"]) if shipped.get("epochs") else G.independent_jobs()
    )
    keys = {j.key() for j in plan}
    for run in shipped["runs"]:
        job = G.Run(**{k: run[k] for k in G.Run.__dataclass_fields__})
        assert job.key() in keys
        if run["study"] in ("pilot", "main", "stepsize", "small", "small_length"):
            assert run["history"] and 0 < run["val_acc"] <= 1
    assert G.plateau_epochs(shipped) in (None, *G.PILOT_EPOCHS)


def test_without_a_plateau_the_grid_takes_the_budget_length_once_the_pilot_is_done():
    def pilot(accs):
        return [{"study": "pilot", "epochs": e, "val_acc": a} for e, a in accs.items()]

    rising = dict(zip(G.PILOT_EPOCHS, (0.87, 0.89, 0.91, 0.92, 0.93, 0.94), strict=True))
    assert G.plateau_epochs(pilot(rising)) is None
    assert G.grid_epochs(pilot(rising)) == G.BUDGET_EPOCHS
    unfinished = {e: a for e, a in rising.items() if e != max(rising)}
    assert G.grid_epochs(pilot(unfinished)) is None
    flat = {**rising, 32: 0.9395}  # within 0.3 points of 64 epochs: the rule decides
    assert G.grid_epochs(pilot(flat)) == 32


def test_a_code_path_check_runs_one_job_of_each_kind_capped_and_says_so(tmp_path, monkeypatch):
    """``--quick``: one job of each kind at the asked width, every run capped at
    QUICK_UPDATES on cut splits, and the results file says it is a check."""
    jobs = G.code_path_jobs(G.main_jobs(16, width=1.0))
    kinds = {(j.study, j.mode, j.block_lr) for j in jobs if not j.study.startswith("small")}
    assert kinds == {
        ("main", "autograd", 1.0),
        ("main", "reversible", 1.0),
        ("stepsize", "autograd", 10.0),
        ("modes", "both", 1.0),
        ("baseline", "autograd", 1.0),
    }
    for study in ("small", "small_length"):
        small = [j for j in jobs if j.study == study]
        assert {j.model for j in small} == set(G.SMALL_NETWORKS)
        assert len({(j.seed, j.fraction) for j in small}) == 1
    assert all(j.width == 1.0 for j in jobs)
    assert all(not (j.study == "baseline" and j.fraction == 1) for j in jobs)
    calls = []

    def fake(run, checkpoint, splits=None, **kw):
        calls.append((run, kw, splits))
        return {"test_acc": 0.5}

    monkeypatch.setattr(G, "perform", fake)
    monkeypatch.setattr(G, "quick_splits", lambda: "cut splits")
    out = tmp_path / "quick.json"
    argv = ["--cache", str(tmp_path / "c"), "--out", str(out), "--epochs", "16", "--width", "1"]
    assert G.main(["grid", "--quick", *argv]) == 0
    assert [c[0] for c in calls] == jobs
    assert all(kw["max_updates"] == G.QUICK_UPDATES and kw["device"] == "cpu" for _, kw, _ in calls)
    assert {s for *_, s in calls} == {"cut splits"}
    assert G.main(["collect", "--quick", *argv]) == 0
    result = json.loads(out.read_text())
    assert result["quick"] is True and result["width"] == 1.0 and not result["missing"]
    # control: without --quick the same command plans the whole grid (nothing capped)
    calls.clear()
    G.main(
        [
            "grid",
            "--cache",
            str(tmp_path / "d"),
            "--out",
            str(tmp_path / "x.json"),
            "--epochs",
            "16",
        ]
    )
    assert len(calls) == len(G.main_jobs(16)) and calls[0][1]["max_updates"] is None


def test_a_capped_run_and_mode_comparison_stop_at_the_cap(tiny_splits):
    torch.set_num_threads(1)
    run = G.Run("main", "ResNet-32", 0, 16, width=0.25)
    assert G.recipe_for(run, 55_000, max_updates=2).iterations == 2
    assert G.recipe_for(run, 55_000).iterations == 16 * 430  # control: no cap, the plan's
    r = G.perform(run, None, tiny_splits, max_updates=2)
    assert r["updates"] == 2 and r["history"][-1]["step"] == 2
    m = G.perform(G.Run("modes", "RevNet-38", 0, 0, 0.25, mode="both"), None, tiny_splits,
                  max_updates=2)  # fmt: skip
    assert m["updates"] == 2 and [c["step"] for c in m["cosine"]] == [0]
    here = torch.backends.cpu.get_cpu_capability()
    assert all(x["hardware"].startswith("CPU: ") and x["cpu_capability"] == here for x in (r, m))


def test_a_capped_mode_comparison_is_the_prefix_of_a_longer_one(tiny_splits):
    """Chapter 7 re-runs the first updates of a shipped comparison: a cap keeps the learning rates
    of the uncapped run (the drops stay at 150 and 225 of 300). Control: with drops placed by the
    cap (at 1, 2 of 3 and 2, 3 of 4) the third losses differ."""
    torch.set_num_threads(1)
    job = G.Run("modes", "RevNet-38", 0, 0, 0.25, mode="both")
    three, four = (G.perform(job, None, tiny_splits, max_updates=n) for n in (3, 4))
    for mode in ("autograd", "reversible"):
        assert three[mode]["loss"] == four[mode]["loss"][:3]
    capped = [
        G.mode_compare.compare_modes(
            lambda mode: G.build_network(job.model, job.width, mode),
            lambda: G.data.TensorLoader(tiny_splits.train, G.BATCH, seed=0),
            G.train.Recipe(name="control", iterations=n, batch_size=G.BATCH,
                           milestones=(n // 2, (3 * n) // 4)),
        )["autograd"]["loss"]
        for n in (3, 4)
    ]  # fmt: skip
    assert capped[0][:2] == capped[1][:2] and capped[0][2] != capped[1][2]
