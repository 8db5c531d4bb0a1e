"""The work-in-progress test selection (conftest.WIP_FEATURES, pytest --wip) and the GPU device script
that runs each feature in a process of its own agree: same feature names, each listed for a test file
that has tests of it, and --wip none leaves none of them in."""

from __future__ import annotations

import json
import pathlib
import re
import subprocess
import sys

import pytest

from conftest import WIP_FEATURES

TESTS = pathlib.Path(__file__).resolve().parent
SCRIPT = TESTS.parents[1] / "ci" / "device_kernels.sh"
FILES = {"WIP_GPU": "test_gpu.py", "WIP_MOE": "test_gpu_moe.py"}
if not SCRIPT.exists():
    # The conda package's stored tests copy kernels/tests only; the source tree's run covers this.
    pytest.skip(f"ci/device_kernels.sh is not next to these tests ({SCRIPT})", allow_module_level=True)


def script_lists() -> dict[str, list[str]]:
    text = SCRIPT.read_text()
    return {var: re.search(rf'^{var}="([^"]*)"', text, re.M).group(1).split() for var in FILES}


# One process per test file collects it under each --wip choice (pytest.main once per choice: collection
# only, so the repeated imports are harmless) and prints the node ids of each.
_COLLECT = """
import json, sys, pytest
class Ids:
    def __init__(self): self.ids = []
    def pytest_collection_finish(self, session): self.ids = [i.nodeid for i in session.items]
out = {}
for choice in sys.argv[2:]:
    ids = Ids()
    rc = pytest.main(["--collect-only", "-q", "-p", "no:cacheprovider", f"--wip={choice}", sys.argv[1]], plugins=[ids])
    assert rc in (0, 5), (choice, rc)
    out[choice] = ids.ids
print("IDS" + json.dumps(out))
"""


def collected(path: str, choices: list[str]) -> dict[str, list[str]]:
    r = subprocess.run(
        [sys.executable, "-c", _COLLECT, path, *choices], cwd=TESTS.parent, capture_output=True, text=True, timeout=300
    )
    line = next((x for x in r.stdout.splitlines() if x.startswith("IDS")), None)
    assert r.returncode == 0 and line, r.stdout + r.stderr
    return json.loads(line[3:])


def test_device_script_lists_every_feature_once():
    lists = script_lists()
    names = [f for fs in lists.values() for f in fs]
    assert sorted(names) == sorted(WIP_FEATURES), lists


@pytest.mark.parametrize("var", sorted(FILES))
def test_each_listed_feature_has_tests_in_its_file(var):
    path = f"tests/{FILES[var]}"
    features = script_lists()[var]
    ids = collected(path, ["all", "none", *features])
    for feature in features:
        assert ids[feature], f"{var} lists {feature} but {path} has no test marked wip({feature!r})"
    # The parts partition the file: nothing runs twice, nothing is left out.
    assert sorted(ids["none"] + [i for f in features for i in ids[f]]) == sorted(ids["all"])


def test_unknown_feature_is_a_usage_error():
    r = subprocess.run(
        [sys.executable, "-m", "pytest", "--collect-only", "-q", "-p", "no:cacheprovider", "--wip=wgmma2", "tests"],
        cwd=TESTS.parent,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert r.returncode == 4 and "--wip='wgmma2'" in r.stderr + r.stdout, r.stdout + r.stderr
