"""A real local Ray cluster for the slow tests: `ray start --head`, token auth, `ray stop`."""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class RayCluster:
    """Addresses and environment of a running cluster, plus helpers to drive it."""

    gcs: str
    dashboard: str
    env: dict[str, str]

    def run(self, *args: str, timeout: float = 600, cwd: Path = REPO) -> subprocess.CompletedProcess:
        return subprocess.run(args, env=self.env, capture_output=True, text=True, timeout=timeout, cwd=cwd)

    def _grid_cmd(self, args: tuple[str, ...]) -> tuple[list[str], dict[str, str]]:
        cmd = [sys.executable, "orchestration/grid.py", "--progress-interval", "5", *args]
        return cmd, {**self.env, "RAY_ADDRESS": self.gcs}

    def grid(self, *args: str, timeout: float = 900) -> subprocess.CompletedProcess:
        """Run orchestration/grid.py to the end, joining this cluster through RAY_ADDRESS."""
        cmd, env = self._grid_cmd(args)
        return subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout)

    def grid_popen(self, *args: str) -> subprocess.Popen:
        cmd, env = self._grid_cmd(args)
        return subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)

    def _actors(self, options: str = "") -> list[dict]:
        """Class name, state and pid of this cluster's actors (alive or dead), from Ray's state API.

        ``options``: extra ``list_actors`` keyword arguments, as Python source."""
        code = ("import json; from ray.util.state import list_actors;"
                f"print(json.dumps([{{'class_name': a.class_name, 'state': a.state, 'pid': a.pid}} "
                f"for a in list_actors(address={self.dashboard!r}, limit=10000, {options})]))")
        out = self.run(sys.executable, "-c", code)
        assert out.returncode == 0, out.stderr[-2000:]
        return json.loads(out.stdout.strip().splitlines()[-1])

    def actor_counts(self) -> dict[str, int]:
        """How many actors of each class this cluster has run (alive or dead)."""
        return dict(Counter(a["class_name"] for a in self._actors()))

    def alive_actor_pids(self, class_name: str) -> list[int]:
        """Process ids of this cluster's live actors of one class."""
        alive = f"filters=[('class_name', '=', {class_name!r}), ('state', '=', 'ALIVE')]"
        return [a["pid"] for a in self._actors(alive)]

    def add_node(self, cpus: int = 1) -> subprocess.Popen:
        """A second node on this machine; terminating the returned process stops that node."""
        return subprocess.Popen(
            [str(BIN / "ray"), "start", f"--address={self.gcs}", f"--num-cpus={cpus}",
             '--resources={"node2": 1}', "--block", "--disable-usage-stats"],
            env=self.env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )


def start_cluster(cache_dir: Path) -> Iterator[RayCluster]:
    """Start a 2-CPU head node; always `ray stop` it afterwards."""
    # The job's `python` comes from the PATH `ray start` ran with: put the venv first.
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}", "RAY_AUTH_MODE": "token",
           "TOYNET_CACHE": str(cache_dir), "RAY_USAGE_STATS_ENABLED": "0"}
    env.pop("RAY_ADDRESS", None)
    port, dash = free_port(), free_port()
    subprocess.run([str(BIN / "ray"), "get-auth-token", "--generate"], env=env, check=True, capture_output=True)
    start = subprocess.run(
        [str(BIN / "ray"), "start", "--head", f"--port={port}", "--dashboard-host=127.0.0.1",
         f"--dashboard-port={dash}", "--num-cpus=2", "--disable-usage-stats"],
        env=env, capture_output=True, text=True,
    )
    try:
        assert start.returncode == 0, start.stdout + start.stderr
        found = re.search(r"--address='([^']+)'", start.stdout + start.stderr)
        yield RayCluster(found.group(1) if found else f"127.0.0.1:{port}", f"http://127.0.0.1:{dash}", env)
    finally:
        subprocess.run([str(BIN / "ray"), "stop"], env=env, capture_output=True)
