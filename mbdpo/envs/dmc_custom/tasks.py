"""The 11 custom DMControl tasks (TD-MPC2's variants), as dm_control ``Task`` subclasses.

Each reuses the standard domain's model, initial-state distribution and observations, and
replaces the reward (the three-link reacher also replaces the model). Every reward is in
[0, 1] per simulator step. Speeds and heights are the ones TD-MPC2's variants use, so that
our rewards are on the scale of the published datasets and curves:

* walker-{walk,run}-backwards: the walker's standing term times a speed term that rewards
  moving in -x at >= 1 m/s (walk) or >= 8 m/s (run).
* cheetah-run-backwards: speed in -x, linear up to 8 m/s.
* cheetah-run-front / cheetah-run-back: run forwards (>= 6 m/s) while balanced on the front
  / back legs, i.e. with the torso and the other foot (back / front) lifted to 1.2 m.
* cheetah-jump: stay in place with the torso and both feet high (>= 1.2 m on average).
* hopper-hop-backwards: upright (torso 0.6-2 m above the foot) times hopping in -x at
  >= 1 m/s.
* reacher-three-{easy,hard}: reacher with a third link, target radius 0.05 / 0.015.
* cup-spin: the ball starts in the cup (90% of episodes); reward keeping it out of the cup,
  far from the cup's centre and moving fast (>= 6 m/s).
* pendulum-spin: the pole's angular speed, full reward at >= 9 rad/s in either direction.
"""
from __future__ import annotations

import math
import os


from dm_control.rl import control
from dm_control.suite import ball_in_cup, base, cheetah, common, hopper, pendulum, reacher, walker

_INF = float("inf")
_HERE = os.path.dirname(os.path.abspath(__file__))


def tolerance(x: float, lower: float, upper: float, margin: float = 0.0,
              sigmoid: str = "gaussian", value_at_margin: float = 0.1) -> float:
    """Scalar ``dm_control.utils.rewards.tolerance`` for the gaussian and linear sigmoids.

    1 inside ``[lower, upper]``; outside, a sigmoid of the distance to the bounds in units
    of ``margin`` that equals ``value_at_margin`` at one margin (0 outside if margin is 0).
    Pure python: ~20x faster than the array version, which matters at one call per step.
    """
    if lower <= x <= upper:
        return 1.0
    if margin <= 0.0:
        return 0.0
    d = ((lower - x) if x < lower else (x - upper)) / margin
    if sigmoid == "gaussian":
        scale = math.sqrt(-2.0 * math.log(value_at_margin))
        return math.exp(-0.5 * (d * scale) ** 2)
    if sigmoid == "linear":
        v = d * (1.0 - value_at_margin)
        return 1.0 - v if v < 1.0 else 0.0
    raise ValueError(f"unsupported sigmoid {sigmoid!r}")


# ----------------------------------------------------------------------------- walker
class WalkerBackwards(walker.PlanarWalker):
    """Planar walker that must move in -x at ``speed`` m/s while staying upright."""

    def __init__(self, speed: float, random=None):
        super().__init__(move_speed=speed, random=random)
        self._speed = float(speed)

    def get_reward(self, physics):
        height = tolerance(float(physics.torso_height()), walker._STAND_HEIGHT, _INF,
                           margin=walker._STAND_HEIGHT / 2)
        upright = (1.0 + float(physics.torso_upright())) / 2.0
        stand = (3.0 * height + upright) / 4.0
        backwards = tolerance(-float(physics.horizontal_velocity()), self._speed, _INF,
                              margin=self._speed / 2, sigmoid="linear", value_at_margin=0.5)
        return stand * (5.0 * backwards + 1.0) / 6.0


# ---------------------------------------------------------------------------- cheetah
_CHEETAH_HIGH = 1.2        # height (m) above which a body counts as fully lifted
_CHEETAH_RUN = cheetah._RUN_SPEED  # 10 m/s


class _CheetahBase(cheetah.Cheetah):
    """Cheetah with cached body ids for fast height lookups."""

    def initialize_episode(self, physics):
        name2id = physics.model.name2id
        self._ids = {b: name2id(b, "body") for b in ("torso", "ffoot", "bfoot")}
        super().initialize_episode(physics)

    def _z(self, physics, body: str) -> float:
        return float(physics.data.xpos[self._ids[body], 2])


class CheetahRunBackwards(_CheetahBase):
    """Run in -x; linear reward reaching 1 at 8 m/s."""

    SPEED = 0.8 * _CHEETAH_RUN

    def get_reward(self, physics):
        return tolerance(-float(physics.speed()), self.SPEED, _INF, margin=self.SPEED,
                         sigmoid="linear", value_at_margin=0.0)


class CheetahRunOnLegs(_CheetahBase):
    """Run forwards balanced on one pair of legs: the other foot and the torso are high.

    ``lifted`` is the foot that must be in the air: 'bfoot' for running on the front legs
    (cheetah-run-front), 'ffoot' for running on the back legs (cheetah-run-back).
    """

    SPEED = 0.6 * _CHEETAH_RUN

    def __init__(self, lifted: str, random=None):
        super().__init__(random=random)
        if lifted not in ("ffoot", "bfoot"):
            raise ValueError(lifted)
        self._lifted = lifted

    def get_reward(self, physics):
        torso_up = tolerance(self._z(physics, "torso"), _CHEETAH_HIGH, _INF,
                             margin=_CHEETAH_HIGH / 2)
        foot_up = tolerance(self._z(physics, self._lifted), _CHEETAH_HIGH, _INF,
                            margin=_CHEETAH_HIGH / 2)
        pose = (3.0 * foot_up + 2.0 * torso_up) / 5.0
        run = tolerance(float(physics.speed()), self.SPEED, _INF, margin=self.SPEED,
                        sigmoid="linear", value_at_margin=0.0)
        return pose * (5.0 * run + 1.0) / 6.0


class CheetahJump(_CheetahBase):
    """Jump in place: the torso and each foot high, little horizontal motion."""

    STILL = 0.5  # |speed| (m/s) below which the cheetah counts as in place

    def get_reward(self, physics):
        torso = self._z(physics, "torso")
        still = tolerance(float(physics.speed()), -self.STILL, self.STILL, margin=self.STILL,
                          sigmoid="linear", value_at_margin=0.0)
        total = 0.0
        for foot in ("ffoot", "bfoot"):
            high = tolerance((torso + self._z(physics, foot)) / 2.0, _CHEETAH_HIGH, _INF,
                             margin=_CHEETAH_HIGH / 2)
            total += (5.0 * high + still) / 6.0
        return total / 2.0


# ----------------------------------------------------------------------------- hopper
class HopperHopBackwards(hopper.Hopper):
    """Hop in -x: upright (torso 0.6-2 m above the foot) times backwards speed >= 1 m/s."""

    SPEED = hopper._HOP_SPEED / 2

    def __init__(self, random=None):
        super().__init__(hopping=True, random=random)

    def get_reward(self, physics):
        upright = tolerance(float(physics.height()), hopper._STAND_HEIGHT, 2.0)
        backwards = tolerance(-float(physics.speed()), self.SPEED, _INF, margin=self.SPEED / 2,
                              sigmoid="linear", value_at_margin=0.5)
        return upright * backwards


# ---------------------------------------------------------------------------- reacher
def _reacher_three_physics():
    with open(os.path.join(_HERE, "reacher_three.xml")) as f:
        xml = f.read()
    return reacher.Physics.from_xml_string(xml, common.ASSETS)


# -------------------------------------------------------------------------------- cup
class CupSpin(ball_in_cup.BallInCup):
    """Swing the ball out of the cup and around it, far from the cup and fast."""

    FAR = 0.5           # ball-to-cup-centre distance (m) for full distance reward
    FAST = 6.0          # ball speed (m/s) for full speed reward
    P_START_IN_CUP = 0.9

    def initialize_episode(self, physics):
        name2id = physics.model.name2id
        self._ball = name2id("ball", "body")
        self._target = name2id("target", "site")
        self._ball_dofs = [physics.model.jnt_dofadr[name2id(j, "joint")]
                           for j in ("ball_x", "ball_z")]
        start_in_cup = self.random.uniform() < self.P_START_IN_CUP
        while True:  # rejection-sample a collision-free ball position
            physics.named.data.qpos["ball_x"] = self.random.uniform(-.2, .2)
            physics.named.data.qpos["ball_z"] = self.random.uniform(.2, .5)
            physics.after_reset()
            if physics.data.ncon == 0 and (physics.in_target() or not start_in_cup):
                break
        base.Task.initialize_episode(self, physics)

    def get_reward(self, physics):
        if physics.in_target():
            return 0.0
        d = physics.data.site_xpos[self._target] - physics.data.xpos[self._ball]
        dist = math.hypot(float(d[0]), float(d[2]))
        qvel = physics.data.qvel
        speed = math.hypot(float(qvel[self._ball_dofs[0]]), float(qvel[self._ball_dofs[1]]))
        far = tolerance(dist, self.FAR, _INF, margin=self.FAR / 2, sigmoid="linear",
                        value_at_margin=0.5)
        fast = tolerance(speed, self.FAST, _INF, margin=self.FAST / 2, sigmoid="linear",
                         value_at_margin=0.5)
        return (far + 2.0 * fast) / 3.0


# --------------------------------------------------------------------------- pendulum
class PendulumSpin(pendulum.SwingUp):
    """Spin the pole: reward its angular speed, full at >= 9 rad/s (either direction)."""

    FAST = 9.0

    def get_reward(self, physics):
        speed = abs(float(physics.data.qvel[0]))
        return tolerance(speed, self.FAST, _INF, margin=self.FAST / 2, sigmoid="linear",
                         value_at_margin=0.5)


# --------------------------------------------------------------------------- builders
def _env(physics, task, time_limit, control_timestep=None, environment_kwargs=None):
    kw = dict(environment_kwargs or {})
    if control_timestep is not None:
        kw["control_timestep"] = control_timestep
    return control.Environment(physics, task, time_limit=time_limit, **kw)


def _walker(speed):
    def build(random=None, time_limit=_INF, environment_kwargs=None):
        physics = walker.Physics.from_xml_string(*walker.get_model_and_assets())
        return _env(physics, WalkerBackwards(speed, random=random), time_limit,
                    walker._CONTROL_TIMESTEP, environment_kwargs)
    return build


def _cheetah(make_task):
    def build(random=None, time_limit=_INF, environment_kwargs=None):
        physics = cheetah.Physics.from_xml_string(*cheetah.get_model_and_assets())
        return _env(physics, make_task(random), time_limit, None, environment_kwargs)
    return build


def _hopper_hop_backwards(random=None, time_limit=_INF, environment_kwargs=None):
    physics = hopper.Physics.from_xml_string(*hopper.get_model_and_assets())
    return _env(physics, HopperHopBackwards(random=random), time_limit,
                hopper._CONTROL_TIMESTEP, environment_kwargs)


def _reacher_three(target_size):
    def build(random=None, time_limit=_INF, environment_kwargs=None):
        return _env(_reacher_three_physics(), reacher.Reacher(target_size, random=random),
                    time_limit, None, environment_kwargs)
    return build


def _cup_spin(random=None, time_limit=_INF, environment_kwargs=None):
    physics = ball_in_cup.Physics.from_xml_string(*ball_in_cup.get_model_and_assets())
    return _env(physics, CupSpin(random=random), time_limit, ball_in_cup._CONTROL_TIMESTEP,
                environment_kwargs)


def _pendulum_spin(random=None, time_limit=_INF, environment_kwargs=None):
    physics = pendulum.Physics.from_xml_string(*pendulum.get_model_and_assets())
    return _env(physics, PendulumSpin(random=random), time_limit, None, environment_kwargs)


# task name -> builder(random=None, time_limit=inf, environment_kwargs=None)
BUILDERS = {
    "walker-walk-backwards": _walker(walker._WALK_SPEED),
    "walker-run-backwards": _walker(walker._RUN_SPEED),
    "cheetah-run-backwards": _cheetah(lambda r: CheetahRunBackwards(random=r)),
    "cheetah-run-front": _cheetah(lambda r: CheetahRunOnLegs("bfoot", random=r)),
    "cheetah-run-back": _cheetah(lambda r: CheetahRunOnLegs("ffoot", random=r)),
    "cheetah-jump": _cheetah(lambda r: CheetahJump(random=r)),
    "hopper-hop-backwards": _hopper_hop_backwards,
    "reacher-three-easy": _reacher_three(reacher._BIG_TARGET),
    "reacher-three-hard": _reacher_three(reacher._SMALL_TARGET),
    "cup-spin": _cup_spin,
    "pendulum-spin": _pendulum_spin,
}
