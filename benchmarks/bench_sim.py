"""Simulation benchmark: demonstration generation per robot, and our render/step path vs the stock one.

Part 1: ``generate_dataset`` wall time per episode (expert rollout + rendering + H.264 encoding)
at 128 and 224 px, default camera of each robot.
Part 2, same run: time per control step with images at 224 px, ours vs each library's own path:
  Meta-World  gymnasium MujocoRenderer (``render_mode="rgb_array"``, default quality) vs ours
  ALOHA       gym-aloha ``AlohaEnv.step`` (renders three 640x480 cameras each step) vs ours (one camera)
  SO-101      the env's own ``render()`` (model's quality settings) vs ours
Part 3, same run: ``generate_dataset`` seconds per frame without and with ``randomize`` (the robot's
default domain randomization), same seeds, interleaved, best of ``--repeats`` (noise on shared CPUs);
and rendering alone: median ms per frame of the same states, nominal and randomized scenes interleaved.

    .venv/bin/python benchmarks/bench_sim.py            # ~3-4 min on 2 busy cores
    .venv/bin/python benchmarks/bench_sim.py --quick    # 1 episode per robot
    .venv/bin/python benchmarks/bench_sim.py --only-randomization   # part 3 alone
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np

import vla.sim  # noqa: F401  (headless GL before any mujoco import)
from vla.sim import make_env
from vla.sim.generate import generate_dataset
from vla.sim.randomization import load_config
from vla.precision import cpu_name

ROBOTS = {"metaworld": "pick-place-v3", "aloha": "transfer-cube", "so101": "pick-place"}


def bench_generation(episodes: dict[str, int], sizes: list[int]) -> list[tuple]:
    rows = []
    tmp = Path(tempfile.mkdtemp(prefix="bench_sim_"))
    try:
        for px in sizes:
            for env_name, task in ROBOTS.items():
                out = tmp / f"{env_name}_{px}"
                r = generate_dataset(env_name, [task], episodes[env_name], 0, px, out, progress=False)
                rows.append((env_name, task, px, r.episodes_written, r.episodes_attempted, r.frames,
                             r.seconds_per_episode, r.frames / r.seconds, r.bytes / max(r.episodes_written, 1)))
                print(f"  {env_name:9s} {px:3d}px  {r.seconds_per_episode:6.2f} s/episode  "
                      f"{r.frames / r.seconds:6.1f} frames/s  ({r.episodes_written}/{r.episodes_attempted} ok)", flush=True)
                shutil.rmtree(out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return rows


def _time_steps(step, n: int) -> float:
    step()  # warm-up (first render builds the GL context)
    t = time.perf_counter()
    for _ in range(n):
        step()
    return (time.perf_counter() - t) / n


def bench_vs_stock(n: int, px: int = 224) -> list[tuple]:
    rows = []
    # Stock envs stay referenced until the end: a gymnasium renderer garbage-collected after
    # close() frees its MjrContext in whatever GL context is current, corrupting a live renderer
    # of ours (its frames turn to garbage and "render" in 0.1 ms). Measured here, not guessed.
    keep = []
    # Meta-World: the stock gymnasium renderer vs ours, same env, same expert actions.
    from metaworld.env_dict import ENV_CLS_MAP

    stock = ENV_CLS_MAP["pick-place-v3"](render_mode="rgb_array", camera_name="corner2", width=px, height=px)
    ours = make_env("metaworld", task="pick-place-v3", image_size=px)
    for env in (stock, ours._env):
        env._freeze_rand_vec, env.seeded_rand_vec, env._set_task_called = False, True, True
        env.seed(0)
        env.reset()
    a = np.zeros(4, np.float32)

    def stock_step():
        stock.step(a)
        stock.render()

    ours.reset(seed=0)
    t_stock = _time_steps(stock_step, n)
    t_ours = _time_steps(lambda: (ours._env.step(a), ours.observation()), n)
    rows.append(("metaworld", "gymnasium MujocoRenderer", t_stock, t_ours))
    keep += [stock, ours]

    # ALOHA: gym-aloha's AlohaEnv (3 x 640x480 renders per step) vs ours (1 camera at px).
    from gym_aloha.env import AlohaEnv

    ours = make_env("aloha", image_size=px)
    ours.reset(seed=0)
    plan = ours.plan_expert()
    stock = AlohaEnv("transfer_cube", obs_type="pixels_agent_pos")
    stock.reset(seed=0)
    i = [0]

    def aloha_stock():
        stock.step(plan[i[0] % 100])
        i[0] += 1

    t_stock = _time_steps(aloha_stock, n)
    ours.reset(seed=0)
    j = [0]

    def aloha_ours():
        ours.step(plan[j[0] % 100])
        j[0] += 1

    t_ours = _time_steps(aloha_ours, n)
    rows.append(("aloha", "gym-aloha AlohaEnv.step", t_stock, t_ours))
    keep += [stock, ours]

    # SO-101: the env's own render() (model quality: 8x multisampling, shadows) vs ours.
    from lerobot_env_so101 import GymRenderingSpec, SO101PickPlaceGymEnv

    stock = SO101PickPlaceGymEnv(random_block_position=True, action_scale=0.025,
                                 render_spec=GymRenderingSpec(height=px, width=px))
    stock.reset(seed=0)
    ours = make_env("so101", cameras=["front"], image_size=px)
    ours.reset(seed=0)
    hold = np.array([0, 0, 0, 1.0], np.float32)
    t_stock = _time_steps(lambda: (stock.step(hold), stock.render()), max(n // 4, 3))
    t_ours = _time_steps(lambda: (ours._env.step(hold), ours.observation()), max(n // 4, 3))
    rows.append(("so101", "lerobot_env_so101 render()", t_stock, t_ours))
    keep += [stock, ours]
    for env in keep:
        env.close()
    return rows


def render_times(env_name: str, task: str, px: int, repeats: int, seeds: int = 4, frames: int = 5) -> dict:
    """Median seconds per rendered frame of reset states, nominal vs randomized scenes, interleaved."""
    env = make_env(env_name, task, image_size=px)
    times: dict[str, list[float]] = {"nominal": [], "randomized": []}
    for _ in range(repeats):
        for seed in range(seeds):
            for label, cfg in (("nominal", None), ("randomized", load_config(env_name))):
                env.set_randomization(cfg)
                env.reset(seed, render=False)
                env.observation()  # warm-up
                t = time.perf_counter()
                for _ in range(frames):
                    env.observation()
                times[label].append((time.perf_counter() - t) / frames)
    env.close()
    return {k: float(np.median(v)) for k, v in times.items()}


def bench_randomization(episodes: int, px: int, repeats: int, robots: list[str] | None = None) -> list[tuple]:
    """Seconds per generated frame, nominal vs randomized, per robot (expert + render + encode)."""
    rows = []
    tmp = Path(tempfile.mkdtemp(prefix="bench_dr_"))
    try:
        for env_name, task in ROBOTS.items():
            if robots and env_name not in robots:
                continue
            best = {"nominal": float("inf"), "randomized": float("inf")}
            frames = {}
            for _ in range(repeats):
                for label, cfg in (("nominal", None), ("randomized", load_config(env_name))):
                    out = tmp / f"{env_name}_{label}"
                    r = generate_dataset(env_name, [task], episodes, 0, px, out, randomize=cfg, progress=False,
                                         overwrite=True)
                    best[label] = min(best[label], r.seconds / r.frames)
                    frames[label] = r.frames
                    shutil.rmtree(out)
            render = render_times(env_name, task, px, repeats)
            rows.append((env_name, task, px, frames["nominal"], frames["randomized"], best["nominal"], best["randomized"],
                         render["nominal"], render["randomized"]))
            print(f"  {env_name:9s} {px}px  generation {best['nominal'] * 1e3:.2f} -> {best['randomized'] * 1e3:.2f} "
                  f"ms/frame, render {render['nominal'] * 1e3:.2f} -> {render['randomized'] * 1e3:.2f} ms/frame", flush=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="1 episode per robot, fewer timed steps")
    p.add_argument("--sizes", type=int, nargs="+", default=[128, 224])
    p.add_argument("--only-randomization", action="store_true", help="part 3 alone")
    p.add_argument("--repeats", type=int, default=2, help="part 3: interleaved repetitions (best is kept)")
    p.add_argument("--robots", nargs="+", choices=list(ROBOTS), default=None, help="part 3: only these robots")
    args = p.parse_args()
    warnings.simplefilter("ignore")
    episodes = {"metaworld": 1, "aloha": 1, "so101": 1} if args.quick else {"metaworld": 5, "aloha": 3, "so101": 3}
    n = 10 if args.quick else 40

    print(f"GL backend: {vla.sim.GL_BACKEND}; CPU: {cpu_name()}")
    if args.only_randomization:
        print_randomization(bench_randomization(episodes["aloha"], args.sizes[0], args.repeats, args.robots))
        return
    print("Part 1: generate_dataset (expert + render + H.264), default camera")
    gen = bench_generation(episodes, args.sizes)
    print("\nPart 2: seconds per control step with images at 224 px, stock path vs ours")
    cmp_rows = bench_vs_stock(n)

    print("\n| robot | task | px | episodes ok | frames | s/episode | frames/s | MB/episode |")
    print("|---|---|---|---|---|---|---|---|")
    for env_name, task, px, ok, att, frames, spe, fps, bpe in gen:
        print(f"| {env_name} | {task} | {px} | {ok}/{att} | {frames} | {spe:.2f} | {fps:.1f} | {bpe / 1e6:.3f} |")
    print("\n| robot | stock path | stock ms/step | ours ms/step | speed-up |")
    print("|---|---|---|---|---|")
    for env_name, what, t_stock, t_ours in cmp_rows:
        print(f"| {env_name} | {what} | {t_stock * 1e3:.1f} | {t_ours * 1e3:.1f} | {t_stock / t_ours:.2f}x |")
    print("\nPart 3: generation per frame, nominal vs --randomize")
    print_randomization(bench_randomization(episodes["aloha"], args.sizes[0], args.repeats))


def print_randomization(rows: list[tuple]) -> None:
    print("\n| robot | task | px | frames nominal / randomized | generation ms/frame nominal -> randomized | change "
          "| render ms/frame nominal -> randomized (median) | change |")
    print("|---|---|---|---|---|---|---|---|")
    for env_name, task, px, fn, fr, tn, tr, rn, rr in rows:
        print(f"| {env_name} | {task} | {px} | {fn} / {fr} | {tn * 1e3:.1f} -> {tr * 1e3:.1f} | {tr / tn - 1:+.0%} | "
              f"{rn * 1e3:.1f} -> {rr * 1e3:.1f} | {rr / rn - 1:+.0%} |")


if __name__ == "__main__":
    main()
