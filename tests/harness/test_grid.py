"""revlib.harness.grid: job names, shards, the cache, results files; and a grid run that resumes."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

from revlib.harness import fmnist_grid, grid


@dataclass(frozen=True)
class Toy(grid.Job):
    name: str
    seed: int
    rate: float = 0.1


def test_keys_differ_and_shards_are_disjoint_and_cover_the_grid():
    jobs = [Toy(n, s, r) for n in ("a", "b") for s in range(5) for r in (0.1, 0.01)]
    assert len({j.key() for j in jobs}) == len(jobs)
    shards = [grid.shard(jobs, i, 3) for i in range(3)]
    assert sorted(j.key() for s in shards for j in s) == sorted(j.key() for j in jobs)
    assert not set(shards[0]) & set(shards[1])
    assert grid.parse_shard("1/2") == (1, 2)
    for bad in ("2/2", "x", "1-2"):
        with pytest.raises(ValueError, match="grid"):
            grid.parse_shard(bad)


def test_run_skips_what_the_cache_holds_and_collect_lists_the_rest(tmp_path):
    calls = []

    def perform(job, checkpoint):
        calls.append(job)
        return {"acc": job.seed / 10}

    jobs = [Toy("a", s) for s in range(4)]
    assert grid.run(jobs[:2], tmp_path, perform, log=lambda _: None) == 2
    assert grid.run(jobs, tmp_path, perform, log=lambda _: None) == 2
    assert calls == [jobs[0], jobs[1], jobs[2], jobs[3]]
    out = grid.collect([*jobs, Toy("b", 0)], tmp_path, "toy/1", note="x")
    assert out["format"] == "toy/1" and out["note"] == "x" and len(out["runs"]) == 4
    assert out["missing"] == [Toy("b", 0).fields()]
    assert [r["seed"] for r in grid.select(out, name="a")] == [0, 1, 2, 3]
    path = tmp_path / "results.json"
    path.write_text(json.dumps(out))
    assert grid.load(path, "toy/1", "make it")["runs"] == out["runs"]
    with pytest.raises(ValueError, match="not a other/1 results file"):
        grid.load(path, "other/1", "make it")
    with pytest.raises(FileNotFoundError, match="make it"):
        grid.load(tmp_path / "absent.json", "toy/1", "make it")


def test_processes_sharing_a_cache_skip_a_job_another_holds_and_take_it_once_freed(tmp_path):
    """A job held by another process is skipped (and said so); once its holder ends, even
    killed, the job is free. Control: the same grid with no hold performs every job."""
    import subprocess
    import sys

    calls, lines = [], []

    def perform(job, checkpoint):
        calls.append(job)
        return {"acc": 0.0}

    jobs = [Toy("a", s) for s in range(3)]
    lock = tmp_path / "claims" / f"{jobs[1].key()}.lock"
    lock.parent.mkdir(parents=True)
    holder = subprocess.Popen(  # another process: takes the lock, says so, and waits
        [sys.executable, "-c", "import fcntl, sys, time; f = open(sys.argv[1], 'w'); "
         "fcntl.flock(f, fcntl.LOCK_EX); print('held', flush=True); time.sleep(60)", str(lock)],
        stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        assert grid.run(jobs, tmp_path, perform, log=lines.append) == 2
        assert calls == [jobs[0], jobs[2]] and "another process holds it" in lines[1]
    finally:
        holder.kill()
        holder.wait()
    assert grid.run(jobs, tmp_path, perform, log=lines.append) == 1  # freed by its end
    assert calls[-1] == jobs[1]
    control = []
    grid.run(jobs, tmp_path / "control", lambda j, c: control.append(j) or {}, log=print)
    assert control == jobs


def test_a_stopped_run_resumes_to_the_result_of_an_unstopped_one(tiny_splits, tmp_path):
    torch.set_num_threads(1)
    run = fmnist_grid.Run("main", "ResNet-32", 0, 2, width=0.25)  # 3 updates an epoch, 6 in all
    whole = fmnist_grid.perform(run, None, tiny_splits)
    ckpt = tmp_path / "run.pt"
    assert fmnist_grid.perform(run, ckpt, tiny_splits, stop_at=4) is None  # inside epoch 2
    assert ckpt.exists()
    saved = torch.load(ckpt, weights_only=True)
    resumed = fmnist_grid.perform(run, ckpt, tiny_splits)
    for key in ("val_acc", "test_acc", "test_loss"):
        assert resumed[key] == whole[key], key
    losses = [r["train_loss"] for r in resumed["history"]]
    assert losses == [r["train_loss"] for r in whole["history"]]
    # control: the same resume from weights changed by 0.1 % ends elsewhere, so equality has teeth
    for name, w in saved["model"].items():
        if w.is_floating_point() and "weight" in name:
            w.mul_(1.001)
    torch.save(saved, ckpt)
    nudged = fmnist_grid.perform(run, ckpt, tiny_splits)
    assert nudged["test_loss"] != whole["test_loss"]


def test_a_results_file_restores_the_cache_it_was_collected_from(tmp_path):
    jobs = [Toy("a", s) for s in range(3)]
    grid.run(jobs[:2], tmp_path / "one", lambda job, ckpt: {"acc": 0.5}, log=lambda _: None)
    shipped = grid.collect(jobs, tmp_path / "one", "toy/1")
    assert grid.restore(jobs, shipped, tmp_path / "two") == 2
    assert grid.restore(jobs, shipped, tmp_path / "two") == 0  # already there
    again = grid.collect(jobs, tmp_path / "two", "toy/1")
    assert again["runs"] == shipped["runs"] and again["missing"] == [jobs[2].fields()]


def test_the_shipped_results_file_loads_from_the_installed_package():
    """What chapter 7 reads where no checkout is (Colab): the package's copy, the committed file."""
    shipped = fmnist_grid.load_results()
    assert shipped["format"] == fmnist_grid.FORMAT and shipped["runs"]
    repo = Path(__file__).resolve().parents[2]
    committed = fmnist_grid.load_results(repo / "revlib/harness/results/fmnist_grid.json")
    assert shipped == committed


def test_a_missing_or_foreign_results_file_names_what_makes_it(tmp_path):
    with pytest.raises(FileNotFoundError, match="fmnist_grid collect"):
        fmnist_grid.load_results(tmp_path / "absent.json")
    with pytest.raises(FileNotFoundError, match="revlib.harness/results/absent.json"):
        grid.load(None, "toy/1", "make it", packaged="results/absent.json")
    (tmp_path / "other.json").write_text(json.dumps({"format": "toy/1"}))
    with pytest.raises(ValueError, match="is not a revlib.harness.fmnist_grid/1"):
        fmnist_grid.load_results(tmp_path / "other.json")
