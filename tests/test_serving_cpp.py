"""The C++ example (serving/cpp) builds against the wheel's libtorch and passes the
bundle's test vectors (~25 s: cmake + one translation unit on 2 cores)."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest
import torch
import torch.utils

SOURCE = Path(__file__).resolve().parents[1] / "serving" / "cpp"

pytestmark = pytest.mark.skipif(
    shutil.which("cmake") is None or shutil.which("c++") is None,
    reason="needs cmake and a C++ compiler",
)


@pytest.fixture(scope="module")
def check_bundle(tmp_path_factory) -> Path:
    build = tmp_path_factory.mktemp("cpp_build")
    configure = [
        "cmake",
        "-S",
        str(SOURCE),
        "-B",
        str(build),
        "-DCMAKE_BUILD_TYPE=Release",
        f"-DCMAKE_PREFIX_PATH={torch.utils.cmake_prefix_path}",
    ]
    for cmd in (configure, ["cmake", "--build", str(build), "-j2"]):
        proc = subprocess.run(cmd, capture_output=True, text=True)
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return build / "check_bundle"


def test_cpp_loader_passes_the_test_vectors(check_bundle, bundle):
    proc = subprocess.run([str(check_bundle), str(bundle)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "all test vectors pass" in proc.stdout
    for name in ("user_tower", "ranker"):
        assert f"ok   {name} ({name}.pt)" in proc.stdout
        assert f"ok   {name}: wrong dtype" in proc.stdout
    assert "ok   retrieval: top 10 of " in proc.stdout
    assert " 0 hold another corpus row, 0 another raw id" in proc.stdout


def test_cpp_loader_fails_on_a_mismatch(check_bundle, bundle, tmp_path):
    copy = tmp_path / "bundle"
    shutil.copytree(bundle, copy)
    vectors = torch.load(copy / "test_vectors.pt", weights_only=True)
    vectors["artifacts"]["ranker"]["output"] = vectors["artifacts"]["ranker"]["output"] + 1e-3
    torch.save(vectors, copy / "test_vectors.pt")
    proc = subprocess.run([str(check_bundle), str(copy), "ranker"], capture_output=True, text=True)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "FAIL ranker" in proc.stdout


@pytest.mark.parametrize("wrong", ["item_ids", "rows", "scores"])
def test_cpp_retrieval_fails_on_a_wrong_case(check_bundle, bundle, tmp_path, wrong):
    copy = tmp_path / "bundle"
    shutil.copytree(bundle, copy)
    vectors = torch.load(copy / "test_vectors.pt", weights_only=True)
    case = vectors["retrieval"]
    if wrong == "rows":  # two far-apart places of the first query swap rows
        assert case["scores"][0, 0] - case["scores"][0, 9] > 1e-3
        case["rows"][0, [0, 9]] = case["rows"][0, [9, 0]].clone()
    else:
        case[wrong] = case[wrong] + (1 if wrong == "item_ids" else 1e-2)
    torch.save(vectors, copy / "test_vectors.pt")
    proc = subprocess.run(
        [str(check_bundle), str(copy), "retrieval"], capture_output=True, text=True
    )
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "FAIL retrieval" in proc.stdout
    if wrong == "rows":
        moved = re.search(r" (\d+) hold another corpus row, 0 another raw id", proc.stdout)
        assert moved and int(moved.group(1)) >= 1, proc.stdout
    if wrong == "item_ids":
        assert " 0 hold another corpus row, " in proc.stdout
        assert " 0 another raw id" not in proc.stdout
