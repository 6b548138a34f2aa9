"""1,000 devices hold ~1,010 descriptors: roomd raises its soft limit when it can, and says so
in the log when it cannot or when use nears the limit."""

from __future__ import annotations

import subprocess
import sys

SCRIPT = """
import logging, resource, sys, types
logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s", stream=sys.stdout)
resource.setrlimit(resource.RLIMIT_NOFILE, (int(sys.argv[1]), int(sys.argv[2])))
from roomd.daemon.housekeeping import Housekeeping, raise_descriptor_limit
print("problem:", raise_descriptor_limit(int(sys.argv[3])))
print("soft:", resource.getrlimit(resource.RLIMIT_NOFILE)[0])
stub = types.SimpleNamespace(_fd_warned=False)
files = [open("/dev/null") for _ in range(int(sys.argv[4]))]
Housekeeping.check_descriptors(stub)  # type: ignore[arg-type]
Housekeeping.check_descriptors(stub)  # type: ignore[arg-type]
for f in files:
    f.close()
Housekeeping.check_descriptors(stub)  # type: ignore[arg-type]
"""


def run(*args: int) -> str:
    out = subprocess.run(
        [sys.executable, "-c", SCRIPT, *map(str, args)], capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 0, out.stderr
    return out.stdout


def test_the_soft_limit_is_raised_up_to_the_hard_one() -> None:
    out = run(256, 8192, 1000, 0)
    assert "problem: None" in out and "soft: 2128" in out


def test_a_hard_limit_too_low_is_named_and_near_use_is_logged_once_each_way() -> None:
    out = run(256, 512, 1000, 450)
    assert "problem: 1000 devices need about 1064 file descriptors but the limit is 512" in out
    assert "set LimitNOFILE=" in out
    warnings = [line for line in out.splitlines() if line.startswith("WARNING")]
    assert len(warnings) == 1 and "of 512 file descriptors in use" in warnings[0]
    assert "INFO file descriptors back to" in out
