"""Is 40 demonstrations' worth of frozen image features enough for a closed-loop policy? A ridge policy.

The linear probe (`probe_image_tokens.py`) shows that the frozen vision tower's tokens locate the
cube in the first frame. This asks the closed-loop question without the language model: fit a ridge
regression from the same frozen tokens (16 pooled, as the default policy sees them) of every frame
of the scripted expert's training episodes (seeds 0..N-1, rendered, no video codec) to the expert's
next H actions, then drive the simulator with it on held-out seeds, H actions per prediction, as
`vla eval` does. If this readout solves the task, the features and the data suffice and what fails
is the fine-tuned language model's readout; if it fails too, the data (demonstrations, their
coverage of the states a policy visits) is the limit.

    python scripts/linear_policy_baseline.py [--env so101] [--episodes 40] [--eval-episodes 30] [--state]
"""

from __future__ import annotations

import argparse

import numpy as np
import torch
from probe_image_tokens import PENALTIES, image_tokens, ridge_predict
from tqdm import tqdm

from vla.sim import make_env

CAMERA = {"so101": "workspace", "aloha": "top"}
VAL_EPISODES = 4  # training episodes held out to choose the ridge penalty


def demonstrations(env_name: str, episodes: int, image_size: int) -> list[dict]:
    """Per training seed: rendered frames, states and the expert's actions along its own trajectory."""
    out = []
    with make_env(env_name, cameras=[CAMERA[env_name]], image_size=image_size) as env:
        for seed in tqdm(range(episodes), desc="expert episodes"):
            obs = env.reset(seed=seed)
            frames, states, actions = [], [], []
            while not env.done:
                frames.append(next(iter(obs["images"].values())))
                states.append(env.state())
                actions.append(env.expert_action())
                obs, _, _ = env.step(actions[-1])
            out.append({"frames": frames, "states": np.stack(states), "actions": np.stack(actions)})
    return out


def chunks(actions: np.ndarray, horizon: int) -> np.ndarray:
    """(T, H*D) the next H actions from every step, the last action repeated past the end (as in training)."""
    padded = np.concatenate([actions, np.repeat(actions[-1:], horizon - 1, axis=0)])
    return np.stack([padded[t:t + horizon].ravel() for t in range(len(actions))])


def features(frames: list[np.ndarray], states: np.ndarray | None, state_scale: np.ndarray | None) -> np.ndarray:
    x = image_tokens(frames)[16]
    return x if states is None else np.concatenate([x, states / state_scale], axis=1)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--env", default="so101", choices=sorted(CAMERA))
    ap.add_argument("--episodes", type=int, default=40, help="training seeds 0..N-1 (the default policy's)")
    ap.add_argument("--eval-episodes", type=int, default=30)
    ap.add_argument("--seed-start", type=int, default=100000, help="first held-out evaluation seed")
    ap.add_argument("--horizon", type=int, default=8, help="actions per prediction (H), all executed")
    ap.add_argument("--state", action="store_true", help="append the robot state to the image features")
    ap.add_argument("--image-size", type=int, default=128)
    args = ap.parse_args()
    if args.seed_start < args.episodes:
        ap.error("--seed-start must be past the training seeds")
    torch.manual_seed(0)

    demos = demonstrations(args.env, args.episodes, args.image_size)
    states = np.concatenate([d["states"] for d in demos])
    state_scale = np.maximum(states.std(0), 1e-6) if args.state else None
    X = [features(d["frames"], d["states"] if args.state else None, state_scale) for d in demos]
    Y = [chunks(d["actions"], args.horizon) for d in demos]
    scale = np.concatenate(X).std()
    fit_x, fit_y = np.concatenate(X[:-VAL_EPISODES]) / scale, np.concatenate(Y[:-VAL_EPISODES])
    val_x, val_y = np.concatenate(X[-VAL_EPISODES:]) / scale, np.concatenate(Y[-VAL_EPISODES:])
    errors = {p: np.abs(ridge_predict(fit_x, fit_y, val_x, p) - val_y).mean() for p in PENALTIES}
    penalty = min(errors, key=errors.get)
    all_x, all_y = np.concatenate(X) / scale, np.concatenate(Y)
    mx, my = all_x.mean(0), all_y.mean(0)
    coef = np.linalg.solve((all_x - mx) @ (all_x - mx).T + penalty * np.eye(len(all_x)), all_y - my)
    weights = (all_x - mx).T @ coef  # primal weights: one matrix product per prediction
    print(f"{args.env}: {len(all_x)} frames from {args.episodes} episodes, {all_x.shape[1]} features; "
          f"penalty {penalty} (held-out action L1 {errors[penalty]:.3f}, predicting the mean "
          f"{np.abs(val_y - fit_y.mean(0)).mean():.3f})")

    successes, stages, lengths = 0, [], []
    with make_env(args.env, cameras=[CAMERA[args.env]], image_size=args.image_size) as env:
        spec = env.embodiment_spec
        low, high = np.asarray(spec.action_low), np.asarray(spec.action_high)
        for seed in tqdm(range(args.seed_start, args.seed_start + args.eval_episodes), desc="closed loop"):
            obs = env.reset(seed=seed)
            while not env.done:
                frame = [next(iter(obs["images"].values()))]
                x = features(frame, env.state()[None] if args.state else None, state_scale) / scale
                chunk = ((x - mx) @ weights + my).reshape(args.horizon, -1)
                obs, _, _ = env.step_chunk(np.clip(chunk, low, high))
            successes += env.success
            stages.append(env.stage_reached)
            lengths.append(env.steps)
    stages = np.asarray(stages)
    names = getattr(env, "stages", ())
    reached = " · ".join(f"{name} {(stages >= i + 1).sum()}/{len(stages)}" for i, name in enumerate(names))
    print(f"closed loop on seeds {args.seed_start}..{args.seed_start + args.eval_episodes - 1}: "
          f"{successes}/{args.eval_episodes} succeeded, {reached}, mean length {np.mean(lengths):.0f}")


if __name__ == "__main__":
    main()
