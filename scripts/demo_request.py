"""Send one simulator-rendered observation to a running server and print the action chunk.

    python scripts/demo_request.py --url http://127.0.0.1:3000 [--env so101] [--seed 100000]
"""

from __future__ import annotations

import argparse

from vla.client import VLAClient

ROBOT_TO_ENV = {"sawyer": "metaworld", "aloha": "aloha", "so101": "so101"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--url", default="http://127.0.0.1:3000")
    parser.add_argument("--env", choices=sorted(ROBOT_TO_ENV.values()), default=None,
                        help="simulator to render (default: the first one the server's policy knows)")
    parser.add_argument("--seed", type=int, default=100_000, help="scene seed (far from training seeds)")
    parser.add_argument("--token", default=None)
    args = parser.parse_args()

    client = VLAClient(args.url, token=args.token)
    meta = client.metadata()
    known = {ROBOT_TO_ENV[name]: name for name in meta["embodiments"] if name in ROBOT_TO_ENV}
    if not known:
        raise SystemExit(f"the served policy knows {sorted(meta['embodiments'])}, none of which is simulated here")
    env_name = args.env or next(iter(known))
    if env_name not in known:
        raise SystemExit(f"the served policy has no embodiment for {env_name!r}; it knows {sorted(meta['embodiments'])}")
    embodiment = meta["embodiments"][known[env_name]]

    from vla.sim import make_env  # heavy (MuJoCo): only after the server answered

    cameras = [c.removeprefix("observation.images.") for c in embodiment["cameras"]]
    size = embodiment["image_size"] or [128, 128]
    env = make_env(env_name, cameras=cameras, image_size=tuple(size))
    obs = env.reset(seed=args.seed)
    state = obs["state"] if embodiment["state_dim"] else None
    chunk = client.predict(obs["images"], env.instruction, known[env_name], state=state)
    print(f"{env_name} (seed {args.seed}): \"{env.instruction}\" -> {chunk.horizon} actions for "
          f"{chunk.embodiment} @ {chunk.control_hz:g} Hz  [server {chunk.timings.get('server_ms', float('nan')):.0f} ms, "
          f"model {chunk.timings.get('model_ms', float('nan')):.0f} ms]")
    print("step " + " ".join(f"{n:>9.9}" for n in chunk.action_names))
    for i, row in enumerate(chunk.actions):
        print(f"{i:>4} " + " ".join(f"{v:>9.4f}" for v in row))


if __name__ == "__main__":
    main()
