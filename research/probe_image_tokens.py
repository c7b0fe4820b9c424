"""Do the default backbone's frozen image tokens say where the object is? A linear probe.

For seeds 0..N-1 the simulator's first frame is encoded by the default backbone's vision tower
(EfficientNet-Lite0, 7x7 tokens at 224 px, the same map average-pooled to 4x4 = the shipped 16
tokens, and to one averaged token, which keeps no token order). Ridge regression from the flattened
tokens to the object's table position is fitted on the first n seeds (n = 20 ... 300, the penalty
chosen on a fifth of them) and scored on the last 100. If a linear readout locates the object to a
few millimetres from as many images as the policy was trained on, vision features and data size are
not what keeps a policy from finding it.

    python research/probe_image_tokens.py [--env so101 aloha] [--seeds 400] [--train 20 40 80 160 300]
"""

from __future__ import annotations

import argparse
import functools

import numpy as np
import torch
import torch.nn.functional as F

from vla.backbones.loading import load_backbone
from vla.sim import make_env

CAMERA = {"so101": "workspace", "aloha": "top"}
TEST = 100  # the last TEST seeds are the probe's held-out set
PENALTIES = (0.1, 1.0, 10.0, 100.0, 1000.0)


def first_frames(env_name: str, seeds: int, image_size: int) -> tuple[list[np.ndarray], dict[str, np.ndarray]]:
    """The first rendered frame of each seed and the xy of what the policy must find (metres)."""
    frames, targets = [], {}
    with make_env(env_name, cameras=[CAMERA[env_name]], image_size=image_size) as env:
        for seed in range(seeds):
            obs = env.reset(seed=seed)
            frames.append(next(iter(obs["images"].values())))
            if env_name == "so101":
                found = {"cube": env.cube_pos[:2], "goal": env.goal_pos[:2]}
            else:
                found = {"cube": env.cube_pose[:2]}
            for name, xy in found.items():
                targets.setdefault(name, []).append(np.array(xy, dtype=np.float64))
    return frames, {k: np.stack(v) for k, v in targets.items()}


@functools.lru_cache(maxsize=1)
def vision_tower():
    """The default backbone's frozen tower and processor (the same in every build; this one keeps 7x7)."""
    model, processor = load_backbone("default", options={"num_layers": 8, "image_tokens": 49})
    return model.eval().model.vision_tower, processor


@torch.inference_mode()
def image_tokens(frames: list[np.ndarray]) -> dict[int, np.ndarray]:
    """Flattened 49-token (7x7) and 16-token (4x4 pooled) features of each frame, and their average.

    The average (key 1) keeps no token order: if it still locates the object, the position is in what
    each token says, not only in which token says it.
    """
    tower, processor = vision_tower()
    maps = []
    for i in range(0, len(frames), 50):
        pixels = processor.image_processor(frames[i:i + 50], return_tensors="pt")["pixel_values"]
        tokens = tower(pixels).last_hidden_state  # (B, 49, C)
        maps.append(tokens.transpose(1, 2).reshape(len(pixels), -1, 7, 7))
    grid = torch.cat(maps)
    return {49: grid.flatten(1).double().numpy(), 16: F.adaptive_avg_pool2d(grid, 4).flatten(1).double().numpy(),
            1: grid.mean((2, 3)).double().numpy()}


def ridge_predict(X: np.ndarray, Y: np.ndarray, X_new: np.ndarray, penalty: float) -> np.ndarray:
    """Kernel-form ridge regression (n << features), centred on the training set."""
    mx, my = X.mean(0), Y.mean(0)
    Xc = X - mx
    coef = np.linalg.solve(Xc @ Xc.T + penalty * np.eye(len(X)), Y - my)
    return (X_new - mx) @ (Xc.T @ coef) + my


def probe(X: np.ndarray, Y: np.ndarray, n: int) -> float:
    """Held-out mean xy error (metres) of a ridge probe fitted on the first n seeds."""
    X = X / X[:n].std()
    fit, val = slice(0, n - n // 5), slice(n - n // 5, n)
    penalty = min(PENALTIES, key=lambda p: np.linalg.norm(ridge_predict(X[fit], Y[fit], X[val], p) - Y[val], axis=1).mean())
    pred = ridge_predict(X[:n], Y[:n], X[-TEST:], penalty)
    return float(np.linalg.norm(pred - Y[-TEST:], axis=1).mean())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--env", nargs="+", default=["so101", "aloha"], choices=sorted(CAMERA))
    ap.add_argument("--seeds", type=int, default=400, help="initial states encoded (the last 100 are held out)")
    ap.add_argument("--train", type=int, nargs="+", default=[20, 40, 80, 160, 300], help="probe training sizes")
    ap.add_argument("--image-size", type=int, default=128, help="rendered size (the default policy's)")
    args = ap.parse_args()
    if args.seeds <= TEST or max(args.train) > args.seeds - TEST or min(args.train) < 10:
        ap.error(f"--train sizes must be in [10, seeds - {TEST}] (seeds={args.seeds})")
    torch.manual_seed(0)
    print(f"{'env':6s} {'object':5s} {'tokens':>6s} " + " ".join(f"{'n=' + str(n):>7s}" for n in args.train)
          + "   mean-only")
    for env_name in args.env:
        frames, targets = first_frames(env_name, args.seeds, args.image_size)
        features = image_tokens(frames)
        for name, Y in targets.items():
            baseline = np.linalg.norm(Y[-TEST:] - Y[:-TEST].mean(0), axis=1).mean()
            for tokens, X in features.items():
                errs = " ".join(f"{100 * probe(X, Y, n):5.1f}cm" for n in args.train)
                print(f"{env_name:6s} {name:5s} {tokens:6d} {errs}   {100 * baseline:5.1f}cm")


if __name__ == "__main__":
    main()
