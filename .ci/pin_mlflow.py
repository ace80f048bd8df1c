"""Install ``mlflow==VERSION`` into the running environment (the tox matrix's mlflow envs).

mlflow pins its sibling packages exactly (``mlflow-skinny``, ``mlflow-tracing``). When the package
index lacks one of them (mlflow-tracing 3.18.0 is missing from the index this project's machines
use), mlflow and mlflow-skinny VERSION are laid over the installed ones without dependencies: the
skinny package carries every module the tracing one does, so the ``mlflow`` package that results is
VERSION's. That is said on stderr, so a run's log shows how the version got there.
"""

from __future__ import annotations

import subprocess
import sys


def main(version: str) -> int:
    pip = [sys.executable, "-m", "pip", "install", "--quiet"]
    if subprocess.run([*pip, f"mlflow=={version}"], check=False).returncode == 0:
        return 0
    print(
        f"pin_mlflow: mlflow {version} is not installable with its dependencies from this index; "
        f"installing mlflow and mlflow-skinny {version} without dependencies over the installed ones",
        file=sys.stderr,
    )
    return subprocess.run([*pip, "--no-deps", f"mlflow=={version}", f"mlflow-skinny=={version}"]).returncode


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
