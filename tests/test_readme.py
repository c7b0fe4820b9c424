"""The README's quickstarts run as written (filled in: ports, the robot's camera frame, the data, and the
size of runs and evaluations)."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from servers import free_port, stop_server, wait_ready

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


def test_quickstart_3_clients_talk_to_a_real_server(default_server, tmp_path):
    pytest.importorskip("json_numpy")
    url = default_server
    port = url.rsplit(":", 1)[1]
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


def _lines(section: str) -> list[str]:
    """The block's commands without their trailing comments (options appended later must not be commented out)."""
    return [re.sub(r"\s+#.*$", "", line) for line in block(section, "bash").splitlines() if line.strip()]


def _env(cwd: Path) -> dict:
    import os

    # the commands as a user types them: `vla` from this interpreter's environment
    return {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}", "BENTOML_HOME": str(cwd / "bentoml")}


def _run(line: str, cwd: Path, timeout: int = 600) -> str:
    out = subprocess.run(["bash", "-euo", "pipefail", "-c", line], cwd=cwd, capture_output=True, text=True,
                         timeout=timeout, env=_env(cwd))
    assert out.returncode == 0, f"{line}\n{out.stdout[-2000:]}\n{out.stderr[-3000:]}"
    return out.stdout


# Filled in below: the dataset (an RLDS file in RT-1's layout stands in for Bridge), the port, and
# the size of the run (2 layers, 2 steps) and of the evaluations (1 episode each).
FAST_RUN = (" --model.base_options '{num_layers: 2, image_tokens: 16}' --train.steps 2 --train.batch_size 2"
            " --eval.every 0 --checkpoint.every 0 --log.progress false")


def test_quickstart_2_converts_fine_tunes_and_serves(tmp_path):
    from vla.data.synthetic import write_rlds

    (tmp_path / "my_rlds_dir").mkdir()
    write_rlds(tmp_path / "my_rlds_dir" / "robot.tfrecord", episodes=4, lengths=[20] * 4, image_size=(64, 64))
    convert, info, doctor, plan, train, serve = _lines("Quickstart 2")
    _run(convert.replace("--mapping bridge", "--mapping fractal20220817_data"), tmp_path)
    assert "LeRobot v3.0" in _run(info, tmp_path)
    assert "round trip (auto normalization" in _run(doctor, tmp_path)
    assert "peak RSS" in _run(plan + FAST_RUN, tmp_path)
    _run(train + FAST_RUN, tmp_path)
    port = serve.rsplit(" ", 1)[1]
    proc, url, log = _start_line(serve.replace(port, str(free_port())), tmp_path)
    try:
        wait_ready(proc, url, log)
        from vla.serving import VLAClient

        meta = VLAClient(url).metadata()
        assert list(meta["embodiments"]) == ["mybot"]
    finally:
        stop_server(proc)


def test_quickstart_4_evaluates_through_a_server_in_process_and_with_the_expert(default_server, tmp_path):
    from vla.evaluation.testing import make_tiny_env_checkpoint

    make_tiny_env_checkpoint(tmp_path / "runs" / "mybot", "metaworld", task="reach-v3")
    server_eval, model_eval, expert_eval = (line.split("#")[0].strip().replace("--episodes 20", "--episodes 1")
                                            .replace("--episodes 10", "--episodes 1").replace("--episodes 5", "--episodes 1")
                                            for line in _lines("Quickstart 4"))
    assert "so101" in _run(server_eval.replace("http://127.0.0.1:3000", default_server) + " --no-progress", tmp_path)
    assert "push-v3" in _run(model_eval + " --no-progress", tmp_path)
    assert "transfer-cube" in _run(expert_eval + " --no-progress", tmp_path)


def _start_line(line: str, cwd: Path):
    url = f"http://127.0.0.1:{line.rsplit(' ', 1)[1]}"
    log = cwd / "serve.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(["bash", "-c", "exec " + line], cwd=cwd, stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True, env=_env(cwd))
    return proc, url, log
