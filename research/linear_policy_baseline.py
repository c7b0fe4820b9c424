"""Is 40 demonstrations' worth of frozen image features enough for a closed-loop policy? A ridge policy.

The linear probe (`probe_image_tokens.py`) shows that the frozen vision tower's tokens locate the
cube in the first frame. This asks the closed-loop question without the language model: fit a ridge
regression from the same frozen tokens (16 pooled, as the default policy sees them) of every frame
of the scripted expert's training episodes (seeds 0..N-1, rendered, no video codec) to the expert's
next H actions, then drive the simulator with it on held-out seeds, H actions per prediction, as
`vla eval` does. If this readout solves the task, the features and the data suffice and what fails
is the fine-tuned language model's readout; if it fails too, the data (demonstrations, their
coverage of the states a policy visits) is the limit.

    python research/linear_policy_baseline.py [--env so101] [--episodes 40] [--eval-episodes 30] [--state]
"""

from __future__ import annotations

import argparse

import numpy as np
import torch
import torch.nn.functional as F
from probe_image_tokens import image_tokens
from tqdm import tqdm

from vla.sim import make_env
from vla.sim.generate import rollout_expert

CAMERA = {"so101": "workspace", "aloha": "top"}
VAL_EPISODES = 4  # training episodes held out to choose the ridge penalty


def demonstrations(env_name: str, episodes: int, image_size: int, action_noise: float) -> list[dict]:
    """The scripted expert's successful episodes from seeds 0..N-1 (`vla data generate`'s rollout, not encoded)."""
    out = []
    with make_env(env_name, cameras=[CAMERA[env_name]], image_size=image_size) as env:
        for seed in tqdm(range(episodes), desc="expert episodes"):
            success, episode = rollout_expert(env, seed, action_noise=action_noise)
            if success:
                out.append({"frames": list(next(iter(episode["images"].values()))), "states": episode["states"],
                            "actions": episode["actions"]})
    return out


def chunks(actions: np.ndarray, horizon: int) -> np.ndarray:
    """(T, H*D) the next H actions from every step, the last action repeated past the end (as in training)."""
    padded = np.concatenate([actions, np.repeat(actions[-1:], horizon - 1, axis=0)])
    return np.stack([padded[t:t + horizon].ravel() for t in range(len(actions))])


def features(frames: list[np.ndarray], tokens: int, states: np.ndarray | None) -> np.ndarray:
    """Frozen image tokens (the 7x7 map pooled to tokens = 16, 4 or 1), optionally followed by the state."""
    grid = torch.from_numpy(image_tokens(frames)[49]).reshape(len(frames), -1, 7, 7)
    x = F.adaptive_avg_pool2d(grid, int(tokens ** 0.5)).flatten(1).numpy()
    return x if states is None else np.concatenate([x, states], axis=1)


def ridge(X: np.ndarray, Y: np.ndarray, penalties: list[float]) -> dict[float, tuple]:
    """Per penalty, (x mean, weights, y mean) of a ridge regression centred on the data.

    Solved in the smaller of the two dimensions, with the Gram matrix computed once for all penalties.
    """
    mx, my = X.mean(0), Y.mean(0)
    Xc, Yc = X - mx, Y - my
    primal = Xc.shape[1] <= Xc.shape[0]
    gram, rhs = (Xc.T @ Xc, Xc.T @ Yc) if primal else (Xc @ Xc.T, Yc)
    eye = np.eye(len(gram))
    fits = {}
    for p in penalties:
        coef = np.linalg.solve(gram + p * eye, rhs)
        fits[p] = (mx, coef if primal else Xc.T @ coef, my)
    return fits


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--env", default="so101", choices=sorted(CAMERA))
    ap.add_argument("--episodes", type=int, default=40, help="training seeds 0..N-1 (the default policy's)")
    ap.add_argument("--eval-episodes", type=int, default=30)
    ap.add_argument("--seed-start", type=int, default=100000, help="first held-out evaluation seed")
    ap.add_argument("--horizon", type=int, default=8, help="actions per prediction (H), all executed")
    ap.add_argument("--tokens", type=int, default=16, choices=[1, 4, 16],
                    help="image tokens per frame: EfficientNet's 7x7 map pooled to 4x4 (the default "
                         "policy's), 2x2 or 1")
    ap.add_argument("--action-noise", type=float, default=0.0,
                    help="DART: the robot executes the expert's action plus this much Gaussian noise (in the env's "
                         "noise units) and the clean action is recorded, as `vla data generate --action-noise`")
    ap.add_argument("--state", action="store_true", help="append the robot state to the image features")
    ap.add_argument("--penalties", type=float, nargs="+", default=[1e2, 1e3, 1e4, 1e5, 1e6],
                    help="ridge penalties tried (features standardized); the best on held-out episodes is used")
    ap.add_argument("--image-size", type=int, default=128)
    args = ap.parse_args()
    if args.seed_start < args.episodes:
        ap.error("--seed-start must be past the training seeds")
    torch.manual_seed(0)

    demos = demonstrations(args.env, args.episodes, args.image_size, args.action_noise)
    X = [features(d["frames"], args.tokens, d["states"] if args.state else None) for d in demos]
    Y = [chunks(d["actions"], args.horizon) for d in demos]
    # every feature standardized over the training frames, so image and state columns weigh alike
    stacked = np.concatenate(X)
    centre, spread = stacked.mean(0), np.maximum(stacked.std(0), 1e-6)
    X = [(x - centre) / spread for x in X]
    fit_x, fit_y = np.concatenate(X[:-VAL_EPISODES]), np.concatenate(Y[:-VAL_EPISODES])
    val_x, val_y = np.concatenate(X[-VAL_EPISODES:]), np.concatenate(Y[-VAL_EPISODES:])
    errors = {p: np.abs((val_x - mx) @ w + my - val_y).mean()
              for p, (mx, w, my) in ridge(fit_x, fit_y, args.penalties).items()}
    penalty = min(errors, key=errors.get)
    all_x, all_y = np.concatenate(X), np.concatenate(Y)
    mx, weights, my = ridge(all_x, all_y, [penalty])[penalty]
    print(f"{args.env}: {len(all_x)} frames from {len(demos)} successful expert episodes of {args.episodes}, "
          f"{all_x.shape[1]} features; "
          f"penalty {penalty} (held-out action L1 {errors[penalty]:.3f}, predicting the mean "
          f"{np.abs(val_y - fit_y.mean(0)).mean():.3f})")

    successes, stages, lengths, diverged = 0, [], [], 0
    with make_env(args.env, cameras=[CAMERA[args.env]], image_size=args.image_size) as env:
        for seed in tqdm(range(args.seed_start, args.seed_start + args.eval_episodes), desc="closed loop"):
            obs = env.reset(seed=seed)
            while not env.done:
                frame = [next(iter(obs["images"].values()))]
                x = (features(frame, args.tokens, env.state()[None] if args.state else None) - centre) / spread
                chunk = ((x - mx) @ weights + my).reshape(args.horizon, -1)
                obs, _, _ = env.step_chunk(chunk)  # clipped to the action range by the env
            successes += env.success
            diverged += env.diverged  # an unstable physics step ends the episode as a failure
            stages.append(env.stage_reached)
            lengths.append(env.steps)
    stages = np.asarray(stages)
    names = getattr(env, "stages", ())
    reached = " · ".join(f"{name} {(stages >= i + 1).sum()}/{len(stages)}" for i, name in enumerate(names))
    print(f"closed loop on seeds {args.seed_start}..{args.seed_start + args.eval_episodes - 1}: "
          f"{successes}/{args.eval_episodes} succeeded, {reached}, mean length {np.mean(lengths):.0f}"
          + (f", {diverged} ended by unstable physics" if diverged else ""))


if __name__ == "__main__":
    main()
