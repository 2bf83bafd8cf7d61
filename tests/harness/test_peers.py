"""revlib.harness.peers: every adapter computes the same function, PyPI's revlib loads without
shadowing this one, and the checks catch what they claim to catch (controls that need torch
only)."""

from __future__ import annotations

import copy
import sys

import pytest
import torch

import revlib
from revlib.core.memory import saved_tensor_bytes
from revlib.harness import peer_checks, peers

SHAPE = (8, 6, 6)


def available(key: str) -> None:
    reason = peers.missing(key)
    if reason is not None:
        pytest.skip(reason)


def stack_pairs(seed: int = 0) -> list[tuple[torch.nn.Module, torch.nn.Module]]:
    torch.manual_seed(seed)
    return [(peers.preact_half(4).double(), peers.preact_half(4).double()) for _ in range(2)]


@pytest.mark.parametrize("key", peers.LIBRARIES)
def test_every_library_computes_the_coupling_stack(key):
    available(key)
    pairs = stack_pairs()
    x = torch.randn(3, *SHAPE, dtype=torch.float64)
    reference = peers.build("autograd", copy.deepcopy(pairs), SHAPE).eval()
    model = peers.build(key, copy.deepcopy(pairs), SHAPE).eval()
    with torch.no_grad():
        torch.testing.assert_close(model(x.clone()), reference(x), rtol=0, atol=1e-12)


@pytest.mark.parametrize("key", peers.LIBRARIES)
def test_the_adapter_wraps_the_modules_it_is_given(key):
    """Gradients are read from the F and G objects handed to build: they must be the ones the
    library trains."""
    available(key)
    pairs = stack_pairs()
    model = peers.build(key, pairs, SHAPE).train()
    own = {id(p) for f, g in pairs for m in (f, g) for p in m.parameters()}
    assert {id(p) for p in model.parameters()} == own


def test_revlib_passes_every_case_but_compile():
    """This library's promise: autograd's gradients (and statistics updated once) in each case."""
    for case in peer_checks.CASES:
        if case != "compile":
            assert peer_checks.check("revlib", case).status == "pass", case


def test_the_checks_catch_a_second_running_statistics_update_and_a_second_hook_call():
    """Control: plain torch.utils.checkpoint recomputes BatchNorm in train mode and reruns the
    hooks, which the checks must report."""
    bn = peer_checks.check("checkpoint", "batchnorm")
    assert bn.status == "fail" and "counted 2 batches, autograd 1" in bn.detail
    hook = peer_checks.check("checkpoint", "hook")
    assert hook.status == "fail" and "ran 2x per block" in hook.detail
    assert peer_checks.check("checkpoint", "dropout").status == "pass"


def test_the_checks_catch_a_gradient_that_differs(monkeypatch):
    """Control: a 'library' whose recomputation draws new dropout masks."""
    real_build = peers.build

    def no_rng_replay(key, pairs, shape):
        if key != "revlib":
            return real_build(key, pairs, shape)
        blocks = [revlib.AdditiveCoupling(f, g) for f, g in pairs]
        return revlib.ReversibleSequence(blocks, preserve_rng_state=False)

    monkeypatch.setattr(peer_checks, "build", no_rng_replay)
    verdict = peer_checks.check("revlib", "dropout")
    assert verdict.status == "fail"
    assert "gradients differ" in verdict.detail
    assert "not even the gradient of the masks its forward drew" in verdict.detail


def test_an_unavailable_library_is_na_with_the_reason(monkeypatch):
    monkeypatch.setattr(peer_checks, "missing", lambda key, install=True: "not installed here")
    verdict = peer_checks.check("memcnn", "plain")
    assert verdict.status == "n/a" and verdict.detail == "not installed here"
    assert str(verdict) == "n/a: not installed here"


def test_an_exception_is_an_error_verdict(monkeypatch):
    def broken(key, pairs, shape):
        raise ValueError("cannot split\nsecond line")

    monkeypatch.setattr(peer_checks, "missing", lambda key, install=True: None)
    peer_checks.check("autograd", "plain")  # the reference, built before build breaks
    monkeypatch.setattr(peer_checks, "build", broken)
    verdict = peer_checks.check("revtorch", "plain")
    assert verdict == peer_checks.Verdict("error", "ValueError: cannot split")


def test_pypi_revlib_loads_under_its_own_name_without_shadowing_this_one():
    available("revlib_pypi")
    ours = sys.modules["revlib"]
    other = peers.load_revlib_pypi()
    assert other.__name__ == "revlib_pypi_core"
    assert other.__version__ == peers.PINNED["revlib"]
    assert sys.modules["revlib"] is ours and revlib.__version__ != other.__version__
    assert hasattr(other, "ReversibleSequential") and not hasattr(revlib, "ReversibleSequential")
    assert not any(str(peers.peers_folder()) in p for p in sys.path)


def test_pypi_revlib_unavailable_offline(tmp_path, monkeypatch):
    monkeypatch.delitem(sys.modules, "revlib_pypi_core", raising=False)
    with pytest.raises(peers.PeerUnavailable, match="not installed"):
        peers.load_revlib_pypi(install=False, folder=tmp_path)


def test_a_wrong_version_is_refused(monkeypatch):
    available("revtorch")
    import importlib.metadata

    monkeypatch.setattr(importlib.metadata, "version", lambda name: "0.0.1")
    with pytest.raises(peers.PeerUnavailable, match="0.0.1 is installed"):
        peers.load("revtorch")


def test_held_bytes_sees_what_a_library_keeps_on_its_node():
    """The allocator's count: autograd keeps the activations, revlib only the output (and a few
    bytes); checkpoint keeps every block's input. The output is part of the count."""
    pairs = stack_pairs()
    x = torch.randn(3, *SHAPE, dtype=torch.float64, requires_grad=True)
    out_bytes = x.numel() * x.element_size()
    held = {
        key: peers.held_bytes(peers.build(key, copy.deepcopy(pairs), SHAPE).train(), x)
        for key in ("autograd", "revlib", "checkpoint")
    }
    assert out_bytes <= held["revlib"] < out_bytes + 1024
    assert held["checkpoint"] >= 2 * out_bytes  # the second block's input and the output
    assert held["autograd"] > 5 * held["revlib"]


def test_every_case_is_described_and_the_pins_are_the_peers_versions():
    for case in peer_checks.CASES.values():
        assert case.question.endswith("?") and case.title
    for key in ("memcnn", "revtorch", "revlib_pypi", "freia"):
        peer = peers.PEERS[key]
        assert peers.PINNED[peer.distribution] == peer.version
        assert peer.version in peer.label
    requirements = (peers.Path(__file__).resolve().parents[2] / "requirements.txt").read_text()
    for name in ("memcnn", "revtorch", "FrEIA"):
        assert f"{name}=={peers.PINNED[name]}" in requirements.splitlines()
    assert not any(line.startswith("revlib==") for line in requirements.splitlines())


def fake_pip(written: list[str]):
    """A stand-in for ``pip install --target DIR``: writes revlib/core.py and a dist-info."""

    def run(cmd, **kwargs):
        target = peers.Path(cmd[cmd.index("--target") + 1])
        (target / "revlib").mkdir(parents=True)
        (target / "revlib" / "core.py").write_text("MARK = 1\n")
        (target / f"revlib-{peers.PINNED['revlib']}.dist-info").mkdir()
        written.append(str(target))
        return peers.subprocess.CompletedProcess(cmd, 0, "", "")

    return run


def test_the_private_install_is_renamed_into_place_whole(tmp_path, monkeypatch):
    written: list[str] = []
    monkeypatch.setattr(peers.subprocess, "run", fake_pip(written))
    target = tmp_path / "revlib-x"
    peers._install_into(target, "revlib==x")
    assert (target / "revlib" / "core.py").exists() and written[0] != str(target)
    # a second process that finishes later keeps the first one's copy
    (target / "revlib" / "core.py").write_text("MARK = 'first'\n")
    peers._install_into(target, "revlib==x")
    assert (target / "revlib" / "core.py").read_text() == "MARK = 'first'\n"
    assert [p.name for p in tmp_path.iterdir()] == ["revlib-x"]  # no staging left


def test_a_failed_private_install_is_unavailable_with_pips_last_line(tmp_path, monkeypatch):
    def offline(cmd, **kwargs):
        return peers.subprocess.CompletedProcess(cmd, 1, "", "Collecting\nERROR: no network")

    monkeypatch.setattr(peers.subprocess, "run", offline)
    with pytest.raises(peers.PeerUnavailable, match="pip: ERROR: no network"):
        peers._install_into(tmp_path / "revlib-x", "revlib==x")
    assert not (tmp_path / "revlib-x").exists()


def test_held_bytes_sees_memcnns_node_attributes():
    """MemCNN keeps its tensors on its autograd node, where saved-tensor hooks do not look: the
    allocator's count has the output and one generator state per block; its input is freed."""
    available("memcnn")
    pairs = stack_pairs()
    model = peers.build("memcnn", pairs, SHAPE).train()
    x = torch.randn(3, *SHAPE, dtype=torch.float64, requires_grad=True)
    state = torch.get_rng_state().numel()
    assert peers.held_bytes(model, x) == x.numel() * x.element_size() + 2 * state
    assert saved_tensor_bytes(model, x.detach().clone().requires_grad_()) == 0
    assert x.untyped_storage().nbytes() > 0  # held_bytes works on a copy
