"""The README's quickstarts run as written (only the port and the robot's camera frame are filled in)."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from servers import start_server, stop_server, wait_ready

REPO = Path(__file__).resolve().parents[1]
README = (REPO / "README.md").read_text()


def block(section: str, lang: str) -> str:
    """The first ``lang`` code block under the README heading that starts with ``section``."""
    part = README.split(f"## {section}", 1)[1].split("\n## ", 1)[0]
    match = re.search(rf"```{lang}\n(.*?)```", part, re.S)
    assert match, f"no {lang} block under {section!r}"
    return match.group(1)


def test_readme_opens_with_the_two_commands_and_stays_a_front_page():
    first = README.split("```bash\n", 1)[1].split("```", 1)[0]
    assert first.startswith("make demo") and "\nmake test" in first
    assert len(README.splitlines()) < 180
    for link in re.findall(r"\]\(([^)#]+)\)", README):
        assert link.startswith("http") or (REPO / link).exists(), link


def test_quickstart_1_predicts_with_the_default_policy():
    out = subprocess.run([sys.executable, "-c", block("Quickstart 1", "python")], cwd=REPO, capture_output=True,
                         text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.startswith("(8, 4) ['delta_x', 'delta_y', 'delta_z', 'grasp'] 10.0"), out.stdout


def test_quickstart_3_clients_talk_to_a_real_server(tmp_path):
    pytest.importorskip("json_numpy")
    proc, url, log = start_server(None, tmp_path)
    port = url.rsplit(":", 1)[1]
    try:
        wait_ready(proc, url, log)
        rgb = np.random.default_rng(0).integers(0, 256, (128, 128, 3), dtype=np.uint8)
        Image.fromarray(rgb).save(tmp_path / "frame.png")
        shell = block("Quickstart 3", "bash").split("\n", 1)[1].replace("3000", port)  # the server runs already
        out = subprocess.run(["bash", "-euo", "pipefail", "-c", shell], cwd=tmp_path, capture_output=True, text=True,
                             timeout=120)
        assert out.returncode == 0 and '"actions"' in out.stdout and '"embodiments"' in out.stdout, out.stderr
        python = block("Quickstart 3", "python").replace("3000", port)
        scope: dict = {"rgb": rgb}
        exec(compile(python + "\nresult = chunk\n", "README quickstart 3", "exec"), scope)  # noqa: S102
        assert scope["result"].actions.shape == (8, 4)
    finally:
        stop_server(proc)
