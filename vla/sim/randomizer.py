"""Writes sampled scene parameters (vla.sim.randomization) into a MuJoCo model and its renderer's scene."""

from __future__ import annotations

from typing import Any

import numpy as np


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
    """Writes scene parameters into one MuJoCo model (free cameras and distractors are the renderer's).

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
        """Restore the nominal model, then write ``params`` (from ``randomization.sample``) into it."""
        import mujoco

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
