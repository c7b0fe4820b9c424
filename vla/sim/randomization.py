"""Domain randomization: seeded visual and dynamics factors applied to a MuJoCo scene.

A *config* maps factor -> {param: value}; every robot has defaults (``DEFAULTS``), a YAML/JSON file
overrides them. :func:`sample` draws one episode's *scene parameters* from the config and the
episode seed (same seed, same scene; each factor has its own random stream, so a factor's draw
does not depend on which other factors are on). :class:`SceneRandomizer` writes them into the
stock MuJoCo model fields (``light_dir``/``light_diffuse``, ``geom_rgba``, ``cam_pos``/``cam_quat``,
``geom_friction``, ``body_mass``/``body_inertia``, ``dof_damping``, ``actuator_gainprm``/``biasprm``)
after restoring the nominal values, so factors never accumulate across episodes.

Factors (visual, then dynamics):

==============  ==================================================================================
light           every light's direction tilted by up to ``direction_deg``; diffuse x ``intensity``
color           one RGB shift in [-shift, shift] per group: table/scene, task objects, robot
camera          the view moved by up to ``position_m`` per axis and turned by up to ``angle_deg``
distractors     ``count`` visual-only boxes/spheres/cylinders (no collisions) of ``size_m`` on the table
friction        sliding friction of every geom x ``scale``
mass            mass and inertia of the task objects x ``scale``
damping         robot joint damping x ``scale`` + ``add`` (N m s/rad)
gain            position-actuator stiffness (kp in gainprm and biasprm) x ``scale``
action_noise    Gaussian noise of std up to ``std`` (the robot's action unit) on executed actions
latency         each command is executed ``steps`` control steps late (the robot holds until then)
==============  ==================================================================================
"""

from __future__ import annotations

import zlib
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import ConfigError

VISUAL = ("light", "color", "camera", "distractors")
DYNAMICS = ("friction", "mass", "damping", "gain", "action_noise", "latency")
FACTORS = VISUAL + DYNAMICS

# Parameter kinds: "range" = [lo, hi] around a nominal 1 (a multiplier); "max" = one value >= 0 (nominal
# 0, sampled in [-max, max] or [0, max]); "count" = [lo, hi] integers >= 0 (nominal 0); "add" = [lo, hi] >= 0.
PARAMS: dict[str, dict[str, str]] = {
    "light": {"direction_deg": "max", "intensity": "range"},
    "color": {"shift": "max"},
    "camera": {"position_m": "max", "angle_deg": "max"},
    "distractors": {"count": "count", "size_m": "max"},
    "friction": {"scale": "range"},
    "mass": {"scale": "range"},
    "damping": {"scale": "range", "add": "add"},
    "gain": {"scale": "range"},
    "action_noise": {"std": "max"},
    "latency": {"steps": "count"},
}

_COMMON = {
    "light": {"direction_deg": 30.0, "intensity": [0.6, 1.4]},
    "color": {"shift": 0.15},
    "camera": {"position_m": 0.02, "angle_deg": 3.0},
    "distractors": {"count": [0, 3], "size_m": 0.025},
    "friction": {"scale": [0.7, 1.3]},
    "mass": {"scale": [0.7, 1.5]},
    "damping": {"scale": [0.8, 1.2], "add": [0.0, 0.0]},
    "gain": {"scale": [0.8, 1.2]},
}
# Per robot: action noise in its action unit (Meta-World 1 cm, SO-101 2.5 cm, ALOHA 1 rad), latency in
# its control steps (80, 10 and 50 Hz), and what the expert was measured to tolerate (benchmarks/README.md).
DEFAULTS: dict[str, dict[str, dict[str, Any]]] = {
    "metaworld": {**_COMMON, "action_noise": {"std": 0.1}, "latency": {"steps": [0, 2]}},
    "so101": {**_COMMON, "action_noise": {"std": 0.05}, "latency": {"steps": [0, 1]}},
    "aloha": {**_COMMON, "damping": {"scale": [1.0, 1.0], "add": [0.0, 0.5]},  # its joints have no damping
              "action_noise": {"std": 0.01}, "latency": {"steps": [0, 2]}},
}
# Ranges narrowed for data generation because the scripted expert fails beyond them (measured with
# research/expert_under_randomization.py); `vla eval --perturb` still tests a policy at the full DEFAULTS.
# SO-101: its phase-based controller misses the cube with one step (100 ms) of latency (11 of 100 seeds).
BOUNDED: dict[str, dict[str, dict[str, Any]]] = {"so101": {"latency": {"steps": [0, 0]}}}
# Where distractors stand: (x range, y range, table height) in the scene's world frame (metres).
DISTRACTOR_AREA = {"metaworld": ((-0.35, 0.35), (0.45, 0.85), 0.0), "so101": ((0.05, 0.35), (-0.2, 0.2), 0.0),
                   "aloha": ((-0.35, 0.35), (0.3, 0.8), 0.0)}
_SHAPES = ("box", "sphere", "cylinder")
_DIGITS = 6  # sampled values are rounded, so the parameters stored in a dataset rebuild the scene exactly


def _fail(msg: str) -> None:
    raise ConfigError(msg)


def _check_param(factor: str, param: str, value: Any) -> Any:
    kind = PARAMS[factor][param]
    where = f"randomization {factor}.{param}"
    if kind == "max":
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not np.isfinite(value) or value < 0:
            _fail(f"{where} must be a number >= 0, got {value!r}")
        return float(value)
    if not (isinstance(value, (list, tuple)) and len(value) == 2
            and all(isinstance(v, (int, float)) and not isinstance(v, bool) and np.isfinite(v) for v in value)):
        _fail(f"{where} must be a [low, high] pair of numbers, got {value!r}")
    lo, hi = value
    if lo > hi:
        _fail(f"{where} must have low <= high, got {value!r}")
    if kind == "range" and lo <= 0:
        _fail(f"{where} is a multiplier: both ends must be > 0, got {value!r}")
    if kind in ("count", "add") and lo < 0:
        _fail(f"{where} must be >= 0, got {value!r}")
    if kind == "count":
        if int(lo) != lo or int(hi) != hi:
            _fail(f"{where} must be whole numbers, got {value!r}")
        return [int(lo), int(hi)]
    return [float(lo), float(hi)]


def defaults(env_name: str, bounded: bool = True) -> dict[str, dict[str, Any]]:
    """The default ranges of every factor for a robot (a fresh copy); ``bounded``: with the expert's bounds."""
    if env_name not in DEFAULTS:
        _fail(f"no randomization defaults for environment {env_name!r}; known: {sorted(DEFAULTS)}")
    table = {**DEFAULTS[env_name], **(BOUNDED.get(env_name, {}) if bounded else {})}
    return {f: {k: (list(v) if isinstance(v, list) else v) for k, v in table[f].items()} for f in FACTORS}


def _read(source: str | Path | dict) -> dict:
    if isinstance(source, dict):
        return source
    path = Path(source)
    if not path.is_file():
        _fail(f"randomization config {path} does not exist; pass a YAML or JSON file (see docs/evaluation.md)")
    import yaml

    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        raise ConfigError(f"randomization config {path} is not valid YAML/JSON: {e}") from e
    if not isinstance(data, dict):
        _fail(f"randomization config {path} must be a mapping of factor -> parameters, got {type(data).__name__}")
    return data


def load_config(env_name: str, overrides: str | Path | dict | None = None) -> dict[str, dict[str, Any]]:
    """The robot's defaults (with the expert's BOUNDED ranges) and ``overrides`` (a file or dict: factor ->
    {param: value}, or ``off``) applied.

    Every key is checked: an unknown factor or parameter, or a bad value, raises ConfigError naming it.
    """
    config: dict[str, Any] = defaults(env_name)
    for factor, params in _read(overrides or {}).items():
        if factor not in PARAMS:
            from .base import pick

            pick(factor, FACTORS, "randomization factor")
        if params in (False, None, "off"):
            config.pop(factor, None)
            continue
        if not isinstance(params, dict):
            _fail(f"randomization {factor} must be a mapping of parameters ({sorted(PARAMS[factor])}) or 'off', "
                  f"got {params!r}")
        for param, value in params.items():
            if param not in PARAMS[factor]:
                _fail(f"unknown randomization parameter {factor}.{param}; {factor} takes {sorted(PARAMS[factor])}")
            config[factor][param] = value
    for factor, params in config.items():
        for param, value in params.items():
            params[param] = _check_param(factor, param, value)
    return config


def parse_perturbation(text: str) -> tuple[str, float]:
    """``FACTOR`` or ``FACTOR=LEVEL`` -> (factor, level); LEVEL scales the default deviation (1 = defaults)."""
    from .base import pick

    name, _, level_text = str(text).partition("=")
    name = pick(name.strip(), FACTORS, "perturbation factor")
    if not level_text:
        return name, 1.0
    try:
        level = float(level_text)
    except ValueError:
        level = float("nan")
    if not np.isfinite(level) or level <= 0:
        _fail(f"perturbation level of {name!r} must be a number > 0 (1 = the default range, 2 = twice as far from "
              f"nominal), got {level_text!r}")
    return name, level


def perturbation_config(env_name: str, factor: str, level: float = 1.0) -> dict[str, dict[str, Any]]:
    """A config with only ``factor`` on, its default deviation from nominal (unbounded) scaled by ``level``."""
    params = {}
    for param, value in defaults(env_name, bounded=False)[factor].items():
        kind = PARAMS[factor][param]
        if kind == "max":
            params[param] = float(value) * level
        elif kind == "range":
            params[param] = [max(1e-3, 1 + (v - 1) * level) for v in value]
        elif kind == "count":
            params[param] = [int(round(v * level)) for v in value]
        else:
            params[param] = [float(v) * level for v in value]
    return {factor: {k: _check_param(factor, k, v) for k, v in params.items()}}


def _rng(seed: int, factor: str) -> np.random.Generator:
    return np.random.default_rng([int(seed), zlib.crc32(factor.encode())])


def _r(x) -> Any:
    return np.round(np.asarray(x, dtype=np.float64), _DIGITS).tolist()


def _direction(rng: np.random.Generator) -> list[float]:
    v = rng.standard_normal(3)
    return _r(v / np.linalg.norm(v))


def sample(config: dict[str, dict[str, Any]], seed: int, env_name: str) -> dict[str, dict[str, Any]]:
    """One episode's scene parameters (JSON-ready) for the factors in ``config``, drawn from ``seed``."""
    out: dict[str, dict[str, Any]] = {}
    for factor in FACTORS:
        if factor not in config:
            continue
        c, rng = config[factor], _rng(seed, factor)
        if factor == "light":
            p = {"axis": _direction(rng), "angle_deg": _r(rng.uniform(0, c["direction_deg"])),
                 "intensity": _r(rng.uniform(*c["intensity"]))}
        elif factor == "color":
            p = {g: _r(rng.uniform(-c["shift"], c["shift"], 3)) for g in ("table", "object", "robot")}
        elif factor == "camera":
            p = {"offset_m": _r(rng.uniform(-c["position_m"], c["position_m"], 3)), "axis": _direction(rng),
                 "angle_deg": _r(rng.uniform(0, c["angle_deg"]))}
        elif factor == "distractors":
            (x0, x1), (y0, y1), _ = DISTRACTOR_AREA[env_name]
            n = int(rng.integers(c["count"][0], c["count"][1] + 1))
            p = {"objects": [{"shape": _SHAPES[int(rng.integers(len(_SHAPES)))],
                              "xy": _r([rng.uniform(x0, x1), rng.uniform(y0, y1)]),
                              "size_m": _r(rng.uniform(0.5, 1.0) * c["size_m"]),
                              "rgba": _r([*rng.uniform(0.05, 0.95, 3), 1.0])} for _ in range(n)]}
        elif factor in ("friction", "mass", "gain"):
            p = {"scale": _r(rng.uniform(*c["scale"]))}
        elif factor == "damping":
            p = {"scale": _r(rng.uniform(*c["scale"])), "add": _r(rng.uniform(*c["add"]))}
        elif factor == "action_noise":
            p = {"std": _r(rng.uniform(0, c["std"])), "seed": int(rng.integers(2**31))}
        else:  # latency
            p = {"steps": int(rng.integers(c["steps"][0], c["steps"][1] + 1))}
        out[factor] = p
    return out


def _axis_angle_quat(axis, degrees: float) -> np.ndarray:
    import mujoco

    q = np.zeros(4)
    mujoco.mju_axisAngle2Quat(q, np.asarray(axis, dtype=np.float64), np.deg2rad(float(degrees)))
    return q


def _rotate(axis, degrees: float, vectors: np.ndarray) -> np.ndarray:
    import mujoco

    mat = np.zeros(9)
    mujoco.mju_quat2Mat(mat, _axis_angle_quat(axis, degrees))
    return vectors @ mat.reshape(3, 3).T


def _fix_static_target_cameras(model) -> None:
    """Turn world cameras that aim at a world-fixed body into fixed cameras with the same pose.

    MuJoCo orients a ``targetbody`` camera from its position; for one looking straight down (ALOHA's
    ``top``) a 1 cm shift then spins the image by tens of degrees. As fixed cameras they render the same
    frame and jitter by exactly the sampled offset and angle.
    """
    import mujoco

    data = mujoco.MjData(model)
    mujoco.mj_forward(model, data)
    for c in range(model.ncam):
        target = model.cam_targetbodyid[c]
        if model.cam_mode[c] in (3, 4) and model.cam_bodyid[c] == 0 and target >= 0 and model.body_weldid[target] == 0:
            q = np.zeros(4)
            mujoco.mju_mat2Quat(q, data.cam_xmat[c])
            model.cam_pos[c], model.cam_quat[c], model.cam_mode[c] = data.cam_xpos[c], q, mujoco.mjtCamLight.mjCAMLIGHT_FIXED


_FIELDS = ("light_dir", "light_diffuse", "geom_rgba", "cam_pos", "cam_quat", "geom_friction", "body_mass",
           "body_inertia", "dof_damping", "actuator_gainprm", "actuator_biasprm")


class SceneRandomizer:
    """Writes scene parameters into one MuJoCo model (and its renderer's free cameras).

    ``robot_roots``: the robot's root bodies, by name or id (their subtrees are "robot"); ``objects``: the
    task objects' bodies (with their subtrees). Every other body with geoms is "table" (the scene).
    """

    def __init__(self, model, robot_roots: list[str | int], objects: list[str | int]):
        self.model = model
        _fix_static_target_cameras(model)
        self.nominal = {f: getattr(model, f).copy() for f in _FIELDS}
        self.headlight = (model.vis.headlight.diffuse.copy(), model.vis.headlight.ambient.copy())
        def subtree(bodies: list[str | int]) -> set[int]:
            top = {b if isinstance(b, (int, np.integer)) else model.body(b).id for b in bodies}
            out = set()
            for b in range(model.nbody):  # a body is in the subtree when one of its ancestors is listed
                a = b
                while a not in top and a != 0:
                    a = model.body_parentid[a]
                if a in top:
                    out.add(b)
            return out

        self.robot_bodies, self.object_bodies = subtree(robot_roots), subtree(objects)
        group = np.array(["object" if b in self.object_bodies else "robot" if b in self.robot_bodies else "table"
                          for b in model.geom_bodyid])
        self.geom_groups = {g: np.flatnonzero(group == g) for g in ("table", "object", "robot")}
        # The colour a geom shows: its material's unless its own rgba was set (MuJoCo's rule: rgba != default)
        base = self.nominal["geom_rgba"].copy()
        for g in range(model.ngeom):
            mat = model.geom_matid[g]
            if mat >= 0 and np.allclose(base[g], [0.5, 0.5, 0.5, 1.0]):
                base[g] = model.mat_rgba[mat]
        self.shown_rgba = base
        robot_joints = [j for j in range(model.njnt) if model.jnt_bodyid[j] in self.robot_bodies]
        self.robot_dofs = np.array([model.jnt_dofadr[j] + k for j in robot_joints
                                    for k in range({0: 6, 1: 3}.get(int(model.jnt_type[j]), 1))], dtype=int)
        # position servos: gain kp and bias -kp (their velocity term untouched)
        self.position_actuators = np.flatnonzero(np.isclose(model.actuator_biasprm[:, 1], -model.actuator_gainprm[:, 0])
                                                 & (model.actuator_gainprm[:, 0] > 0))

    def apply(self, params: dict[str, dict[str, Any]]) -> None:
        """Restore the nominal model, then write ``params`` (from :func:`sample`) into it."""
        m = self.model
        for f, v in self.nominal.items():
            getattr(m, f)[:] = v
        m.vis.headlight.diffuse[:], m.vis.headlight.ambient[:] = self.headlight
        if "light" in params:
            p = params["light"]
            m.light_dir[:] = _rotate(p["axis"], p["angle_deg"], self.nominal["light_dir"])
            m.light_diffuse[:] = np.clip(self.nominal["light_diffuse"] * p["intensity"], 0, 1)
            m.vis.headlight.diffuse[:] = np.clip(self.headlight[0] * p["intensity"], 0, 1)
            m.vis.headlight.ambient[:] = np.clip(self.headlight[1] * p["intensity"], 0, 1)
        if "color" in params:
            for g, idx in self.geom_groups.items():
                rgba = self.shown_rgba[idx].copy()
                rgba[:, :3] = np.clip(rgba[:, :3] + np.asarray(params["color"][g]), 0.0, 1.0)
                m.geom_rgba[idx] = rgba
        if "camera" in params and m.ncam:
            p = params["camera"]
            m.cam_pos[:] = self.nominal["cam_pos"] + np.asarray(p["offset_m"])
            turn = _axis_angle_quat(p["axis"], p["angle_deg"])
            for c in range(m.ncam):
                import mujoco

                q = np.zeros(4)
                mujoco.mju_mulQuat(q, self.nominal["cam_quat"][c], turn)  # turned about the camera's own axes
                m.cam_quat[c] = q
        if "friction" in params:
            m.geom_friction[:, 0] = self.nominal["geom_friction"][:, 0] * params["friction"]["scale"]
        if "mass" in params:
            idx = sorted(self.object_bodies)
            m.body_mass[idx] = self.nominal["body_mass"][idx] * params["mass"]["scale"]
            m.body_inertia[idx] = self.nominal["body_inertia"][idx] * params["mass"]["scale"]
        if "damping" in params and self.robot_dofs.size:
            p = params["damping"]
            m.dof_damping[self.robot_dofs] = self.nominal["dof_damping"][self.robot_dofs] * p["scale"] + p["add"]
        if "gain" in params and self.position_actuators.size:
            a, s = self.position_actuators, params["gain"]["scale"]
            m.actuator_gainprm[a, 0] = self.nominal["actuator_gainprm"][a, 0] * s
            m.actuator_biasprm[a, 1] = self.nominal["actuator_biasprm"][a, 1] * s


def free_camera_jitter(view, params: dict[str, Any], nominal: dict[str, Any]) -> None:
    """Jitter a free (virtual) MjvCamera: its target moves by the offset, its azimuth/elevation turn by the angle."""
    axis = np.asarray(params["axis"])
    view.lookat[:] = np.asarray(nominal["lookat"]) + np.asarray(params["offset_m"])
    view.azimuth = nominal["azimuth"] + params["angle_deg"] * axis[2]
    view.elevation = nominal["elevation"] + params["angle_deg"] * axis[1]


def draw_distractors(scene, objects: list[dict[str, Any]], table_z: float) -> None:
    """Add the distractors to a scene as visual-only geoms standing on the table."""
    import mujoco

    kinds = {"box": mujoco.mjtGeom.mjGEOM_BOX, "sphere": mujoco.mjtGeom.mjGEOM_SPHERE,
             "cylinder": mujoco.mjtGeom.mjGEOM_CYLINDER}
    for o in objects:
        if scene.ngeom >= scene.maxgeom:
            return
        s = float(o["size_m"])
        mujoco.mjv_initGeom(scene.geoms[scene.ngeom], kinds[o["shape"]], np.array([s, s, s]),
                            np.array([o["xy"][0], o["xy"][1], table_z + s]), np.eye(3).ravel(),
                            np.asarray(o["rgba"], dtype=np.float32))
        scene.ngeom += 1


def summarize_scene(scene: dict[str, dict[str, Any]]) -> str:
    """One line per episode for `vla data info`: ``light 8.0deg x0.90 · camera 2.2cm 2.8deg · latency 2 ...``."""
    parts = []
    for f, p in scene.items():
        if f == "light":
            parts.append(f"light {p['angle_deg']:.1f}deg x{p['intensity']:.2f}")
        elif f == "color":
            parts.append("color " + "/".join(f"{g}{np.abs(p[g]).max():+.2f}".replace("+", "±") for g in p))
        elif f == "camera":
            parts.append(f"camera {100 * np.abs(p['offset_m']).max():.1f}cm {p['angle_deg']:.1f}deg")
        elif f == "distractors":
            parts.append(f"distractors {len(p['objects'])}")
        elif f == "damping":
            parts.append(f"damping x{p['scale']:.2f}+{p['add']:.2f}")
        elif f == "action_noise":
            parts.append(f"action_noise {p['std']:.3f}")
        elif f == "latency":
            parts.append(f"latency {p['steps']}")
        else:
            parts.append(f"{f} x{p['scale']:.2f}")
    return " · ".join(parts) or "nominal"


def describe(config: dict[str, dict[str, Any]]) -> str:
    """``light(direction_deg=30, intensity=[0.6, 1.4]) · ...`` for reports and `vla data info`."""
    return " · ".join(f"{f}(" + ", ".join(f"{k}={v}" for k, v in config[f].items()) + ")"
                      for f in FACTORS if f in config) or "none"


__all__ = ["DEFAULTS", "DYNAMICS", "FACTORS", "PARAMS", "VISUAL", "SceneRandomizer", "defaults", "describe",
           "load_config", "parse_perturbation", "perturbation_config", "sample"]
