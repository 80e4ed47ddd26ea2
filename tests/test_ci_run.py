"""``.ci/run`` installs Chromium on a machine without it, or stops: never a silent skip as root.

The script runs with stand-ins on PATH (``id`` says root, ``apt-get`` logs its calls, ``python3``
marks that the script went on to the test suite), so nothing is installed or run for real.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def run_ci(
    tmp_path: Path, apt_get: str, present: tuple[str, ...] = ()
) -> subprocess.CompletedProcess[str]:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for tool in ("dirname", "mktemp", "cat"):
        found = shutil.which(tool)
        assert found is not None
        (bin_dir / tool).symlink_to(found)
    stand_ins = {
        "id": "echo 0",
        "apt-get": f'echo "apt-get $* DEBIAN_FRONTEND=${{DEBIAN_FRONTEND:-}}" >> {tmp_path}/log\n'
        + apt_get,
        "python3": f"echo python3 >> {tmp_path}/log; exit 3",
        **{tool: "exit 0" for tool in present},
    }
    for name, body in stand_ins.items():
        script = bin_dir / name
        script.write_text(f"#!/bin/sh\n{body}\n")
        script.chmod(0o755)
    env = {"PATH": str(bin_dir), "HOME": str(tmp_path)}
    return subprocess.run(
        ["/bin/bash", str(ROOT / ".ci/run")], env=env, capture_output=True, text=True, timeout=30
    )


@pytest.mark.skipif(not Path("/bin/bash").exists(), reason="needs /bin/bash")
def test_ci_run_installs_chromium_non_interactively_after_apt_get_update(tmp_path: Path) -> None:
    result = run_ci(tmp_path, "exit 0")  # "installs", but no chromium appears on PATH
    log = (tmp_path / "log").read_text().splitlines()
    assert log[0].startswith("apt-get update")
    assert log[1].startswith("apt-get install -y") and " chromium " in log[1]
    assert log[1].endswith("DEBIAN_FRONTEND=noninteractive")
    # No chromium after the install: stop loudly, before the test suite (which would skip).
    assert result.returncode != 0
    assert "python3" not in log
    assert "chromium" in result.stderr


@pytest.mark.skipif(not Path("/bin/bash").exists(), reason="needs /bin/bash")
def test_ci_run_stops_when_the_install_fails(tmp_path: Path) -> None:
    result = run_ci(tmp_path, "echo 'E: Unable to locate package chromium' >&2; exit 100")
    assert result.returncode == 100
    assert "Unable to locate package chromium" in result.stderr
    assert "python3" not in (tmp_path / "log").read_text()


@pytest.mark.skipif(not Path("/bin/bash").exists(), reason="needs /bin/bash")
def test_ci_run_installs_redis_server_for_the_cluster_tests(tmp_path: Path) -> None:
    result = run_ci(tmp_path, "exit 0", present=("chromium",))  # no redis-server appears
    log = (tmp_path / "log").read_text().splitlines()
    assert log[0].startswith("apt-get update")
    assert log[1].startswith("apt-get install -y") and " redis-server " in log[1]
    assert log[1].endswith("DEBIAN_FRONTEND=noninteractive")
    assert result.returncode != 0  # still missing: stop before the suite, which would fail
    assert "python3" not in log
    assert "redis-server" in result.stderr
