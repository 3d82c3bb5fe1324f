"""DMControl environments (mbdpo/envs/dmcontrol.py, mbdpo/envs/dmc_custom/) and the generic
wrappers (mbdpo/envs/wrappers.py).

Full episodes of every task (state and pixels) are in test_all_tasks.py.
"""
from __future__ import annotations

import math

import gymnasium as gym
import numpy as np
import pytest

pytest.importorskip("dm_control")

from mbdpo.envs import dmcontrol  # noqa: E402  (sets MUJOCO_GL before dm_control loads)
from mbdpo.envs.dmc_custom import CUSTOM_TASKS  # noqa: E402
from mbdpo.envs.dmc_custom.tasks import tolerance  # noqa: E402
from mbdpo.envs.wrappers import ActionRepeat, PixelStack, TimeLimit  # noqa: E402
from mbdpo.tasks import DMCONTROL, DMCONTROL_CUSTOM, get_task  # noqa: E402

REPEAT = 2
EPISODE = 500


def make(name, obs_type="state", seed=0):
    return dmcontrol.make(get_task(name), obs_type=obs_type, seed=seed)


def random_actions(env, n, seed=0):
    rng = np.random.default_rng(seed)
    shape = env.action_space.shape
    return rng.uniform(-1.0, 1.0, size=(n,) + shape).astype(np.float32)


def check_spaces(env, obs):
    assert isinstance(env.action_space, gym.spaces.Box)
    assert env.action_space.dtype == np.float32
    assert np.all(env.action_space.low == -1.0) and np.all(env.action_space.high == 1.0)
    assert env.action_space.shape == (env.unwrapped.physics.model.nu,)
    assert obs.dtype == np.float32
    assert obs.shape == env.observation_space.shape
    assert obs.ndim == 1 and obs.shape[0] > 0
    assert np.all(np.isfinite(obs))


# ----------------------------------------------------------------------------- names
def test_registry_covers_39_tasks_and_11_custom():
    assert len(DMCONTROL) == 39
    assert set(CUSTOM_TASKS) == set(DMCONTROL_CUSTOM)
    assert len(CUSTOM_TASKS) == 11


@pytest.mark.parametrize("name,expected", [
    ("cup-catch", ("ball_in_cup", "catch")),
    ("cartpole-balance-sparse", ("cartpole", "balance_sparse")),
    ("finger-turn-easy", ("finger", "turn_easy")),
    ("pendulum-swingup", ("pendulum", "swingup")),
    ("dog-trot", ("dog", "trot")),
    ("cup-spin", ("ball_in_cup", "spin")),
    ("reacher-three-hard", ("reacher", "three_hard")),
])
def test_suite_name(name, expected):
    assert dmcontrol.suite_name(name) == expected


def test_standard_names_exist_in_dm_control():
    from dm_control import suite
    for name in DMCONTROL:
        if name not in DMCONTROL_CUSTOM:
            assert dmcontrol.suite_name(name) in suite.ALL_TASKS, name


def test_wrong_suite_and_obs_type_rejected():
    with pytest.raises(ValueError):
        dmcontrol.make(get_task("mw-reach"))
    with pytest.raises(ValueError):
        make("cartpole-balance", obs_type="depth")


# ------------------------------------------------------------------------ fast: envs
@pytest.mark.parametrize("name", ["cartpole-balance"] + DMCONTROL_CUSTOM)
def test_make_reset_step(name):
    env = make(name, seed=1)
    obs, info = env.reset()
    assert info == {}
    check_spaces(env, obs)
    for a in random_actions(env, 20):
        obs, reward, terminated, truncated, info = env.step(a)
        check_spaces(env, obs)
        assert isinstance(reward, float) and math.isfinite(reward)
        assert 0.0 <= reward <= REPEAT
        assert terminated is False and truncated is False
        assert isinstance(info, dict)


@pytest.mark.parametrize("name", [
    "walker-walk-backwards", "walker-run-backwards", "cheetah-run-backwards",
    "cheetah-run-front", "cheetah-run-back", "cheetah-jump", "cup-spin", "pendulum-spin"])
def test_custom_reward_varies_under_random_actions(name):
    env = make(name, seed=0)
    env.reset()
    rewards = np.array([env.step(a)[1] for a in random_actions(env, 50)])
    assert np.all(np.isfinite(rewards))
    assert rewards.std() > 1e-4, f"{name}: constant reward {rewards[0]} over 50 steps"


def test_reacher_three_differs_from_reacher():
    three, two = make("reacher-three-easy"), make("reacher-easy")
    obs3, _ = three.reset()
    obs2, _ = two.reset()
    # position (3) + to_target (2) + velocity (3) vs 2 + 2 + 2
    assert obs3.shape == (8,) and obs2.shape == (6,)
    assert three.action_space.shape == (3,) and two.action_space.shape == (2,)
    hard = make("reacher-three-hard")
    hard.reset()
    sizes = [e.unwrapped.physics.named.model.geom_size["target", 0] for e in (three, hard)]
    assert sizes == pytest.approx([0.05, 0.015])


def test_episode_length_and_truncation():
    env = make("cartpole-balance")
    env.reset()
    truncs = []
    for a in random_actions(env, EPISODE):
        _, _, terminated, truncated, _ = env.step(a)
        assert terminated is False
        truncs.append(truncated)
    assert truncs[-1] is True
    assert not any(truncs[:-1])
    assert sum(truncs) == 1
    # a new episode starts counting again
    env.reset()
    assert env.step(env.action_space.sample())[3] is False
    # 500 agent steps of 2 x 0.01 s simulator steps: 10 s of simulated time
    assert env.unwrapped.physics.data.time == pytest.approx(2 * 0.01)


def test_simulated_time_per_agent_step():
    env = make("walker-walk")  # control timestep 0.025 s
    env.reset()
    t0 = env.unwrapped.physics.data.time
    for a in random_actions(env, 10):
        env.step(a)
    assert env.unwrapped.physics.data.time - t0 == pytest.approx(10 * REPEAT * 0.025)


@pytest.mark.parametrize("name", ["cartpole-swingup", "hopper-hop", "cheetah-jump"])
def test_matches_dm_control_environment_step(name):
    """Our stepping (observation only after the last repeat) == dm_control's env.step x2."""
    env = make(name, seed=5)
    obs, _ = env.reset()
    ref = dmcontrol.load_dm_env(name, seed=5)
    ts = ref.reset()
    np.testing.assert_array_equal(obs, dmcontrol.DMControlEnv._flatten(ts.observation))
    for a in random_actions(env, 30, seed=3):
        obs, reward, *_ = env.step(a)
        total = 0.0
        for _ in range(REPEAT):
            ts = ref.step(a.astype(np.float64))
            total += ts.reward
        np.testing.assert_array_equal(obs, dmcontrol.DMControlEnv._flatten(ts.observation))
        assert reward == pytest.approx(total, abs=1e-12)


def test_seeding():
    a, b, c = make("reacher-easy", seed=3), make("reacher-easy", seed=3), make("reacher-easy", seed=4)
    oa, ob, oc = a.reset()[0], b.reset()[0], c.reset()[0]
    np.testing.assert_array_equal(oa, ob)
    assert not np.array_equal(oa, oc)
    # reset(seed=...) reseeds the task: the same initial state as a fresh env of that seed
    np.testing.assert_array_equal(c.reset(seed=3)[0], oa)
    # and trajectories are deterministic given the actions
    acts = random_actions(a, 10)
    ta = [a.step(x)[0] for x in acts]
    tb = [b.step(x)[0] for x in acts]
    np.testing.assert_array_equal(np.stack(ta), np.stack(tb))


def test_action_rescaling_quadruped():
    env = make("quadruped-walk")
    env.reset()
    base = env.unwrapped
    lo, hi = base.physics.model.actuator_ctrlrange.T
    assert not (np.all(lo == -1) and np.all(hi == 1))  # the case that needs rescaling
    n = env.action_space.shape[0]
    env.step(np.ones(n, np.float32))
    np.testing.assert_allclose(base.physics.data.ctrl, hi)
    env.step(-np.ones(n, np.float32))
    np.testing.assert_allclose(base.physics.data.ctrl, lo)
    env.step(np.zeros(n, np.float32))
    np.testing.assert_allclose(base.physics.data.ctrl, (lo + hi) / 2)
    env.step(5 * np.ones(n, np.float32))  # clipped
    np.testing.assert_allclose(base.physics.data.ctrl, hi)


def test_camera_ids():
    assert make("quadruped-run").unwrapped.camera_id == 2
    assert make("cartpole-balance").unwrapped.camera_id == 0


# ------------------------------------------------------------------ custom rewards
@pytest.mark.parametrize("x,lo,hi,margin,sigmoid,vam", [
    (0.3, 1.2, math.inf, 0.6, "gaussian", 0.1),
    (2.0, 1.2, math.inf, 0.6, "gaussian", 0.1),
    (-3.0, -math.inf, -8.0, 8.0, "linear", 0.0),
    (5.0, 8.0, math.inf, 8.0, "linear", 0.0),
    (-20.0, 8.0, math.inf, 8.0, "linear", 0.0),
    (4.0, 9.0, math.inf, 4.5, "linear", 0.5),
    (0.7, -0.5, 0.5, 0.5, "linear", 0.0),
    (0.5, 0.6, 2.0, 0.0, "gaussian", 0.1),
    (1.0, 0.6, 2.0, 0.0, "gaussian", 0.1),
])
def test_tolerance_matches_dm_control(x, lo, hi, margin, sigmoid, vam):
    from dm_control.utils import rewards
    ref = float(rewards.tolerance(x, bounds=(lo, hi), margin=margin, sigmoid=sigmoid,
                                  value_at_margin=vam))
    assert tolerance(x, lo, hi, margin, sigmoid, vam) == pytest.approx(ref, abs=1e-12)


def reward_in_state(env, qpos=None, qvel=None):
    """The task's per-simulator-step reward in a state set by joint name."""
    base = env.unwrapped
    physics = base.physics
    with physics.reset_context():
        for k, v in (qpos or {}).items():
            physics.named.data.qpos[k] = v
        for k, v in (qvel or {}).items():
            physics.named.data.qvel[k] = v
    r = base.task.get_reward(physics)
    assert 0.0 <= r <= 1.0
    return r


def test_pendulum_spin_rewards_angular_speed():
    env = make("pendulum-spin")
    env.reset()
    r = {w: reward_in_state(env, qvel={"hinge": w}) for w in (0.0, 4.5, -4.5, 9.0, -12.0)}
    assert r[0.0] == pytest.approx(0.0)
    assert r[4.5] == pytest.approx(0.5) and r[-4.5] == pytest.approx(0.5)
    assert r[9.0] == pytest.approx(1.0) and r[-12.0] == pytest.approx(1.0)


def test_cheetah_run_backwards_rewards_negative_speed():
    env = make("cheetah-run-backwards")
    env.reset()
    assert reward_in_state(env, qvel={"rootx": -8.0}) == pytest.approx(1.0)
    assert reward_in_state(env, qvel={"rootx": -4.0}) == pytest.approx(0.5)
    assert reward_in_state(env, qvel={"rootx": 8.0}) == pytest.approx(0.0)


@pytest.mark.parametrize("speed", [1.0, 8.0])
def test_walker_backwards_rewards_negative_speed(speed):
    env = make("walker-walk-backwards" if speed == 1.0 else "walker-run-backwards")
    env.reset()
    # qpos = 0: standing upright at full height, so the stand term is 1
    assert reward_in_state(env, qvel={"rootx": -speed}) == pytest.approx(1.0)
    assert reward_in_state(env, qvel={"rootx": speed}) == pytest.approx(1 / 6)
    assert reward_in_state(env, qvel={"rootx": 0.0}) < reward_in_state(
        env, qvel={"rootx": -speed / 2})


def test_hopper_hop_backwards():
    env = make("hopper-hop-backwards")
    env.reset()
    # qpos = 0: upright, torso ~1 m above the foot
    assert reward_in_state(env, qvel={"rootx": -1.0}) == pytest.approx(1.0)
    assert reward_in_state(env, qvel={"rootx": -0.75}) == pytest.approx(0.75)
    assert reward_in_state(env, qvel={"rootx": 1.0}) == pytest.approx(0.0)
    # lying down (torso level with the foot) earns nothing however fast
    assert reward_in_state(env, qpos={"rooty": 1.57}, qvel={"rootx": -2.0}) == 0.0


def test_cheetah_jump_and_run_on_legs():
    jump, front, back = make("cheetah-jump"), make("cheetah-run-front"), make("cheetah-run-back")
    for e in (jump, front, back):
        e.reset()
    # whole body 1 m up, at rest: full jump reward
    assert reward_in_state(jump, qpos={"rootz": 1.2}) == pytest.approx(1.0, abs=1e-6)
    assert reward_in_state(jump, qpos={"rootz": 0.0}) < 0.3
    assert reward_in_state(jump, qpos={"rootz": 1.2}, qvel={"rootx": 1.0}) < 0.9
    # lifted and running at 6 m/s: full reward for both; standing still: 1/6 of it
    for e in (front, back):
        assert reward_in_state(e, qpos={"rootz": 1.2}, qvel={"rootx": 6.0}) == pytest.approx(
            1.0, abs=1e-6)
        assert reward_in_state(e, qpos={"rootz": 1.2}) == pytest.approx(1 / 6, abs=1e-6)
        assert reward_in_state(e, qvel={"rootx": 6.0}) < 0.3  # on the ground
    # pitched nose-down (rooty > 0): the back foot is up -> on the front legs
    for pitch, better, worse in ((0.6, front, back), (-0.6, back, front)):
        state = dict(qpos={"rootz": 0.5, "rooty": pitch}, qvel={"rootx": 6.0})
        assert reward_in_state(better, **state) > reward_in_state(worse, **state) + 0.05


def test_cup_spin_rewards_ball_out_far_and_fast():
    env = make("cup-spin")
    env.reset()
    in_cup = reward_in_state(env, qpos={"ball_x": 0.0, "ball_z": 0.35},
                             qvel={"ball_x": 6.0})
    assert env.unwrapped.physics.in_target() == 1.0 and in_cup == 0.0
    out_still = reward_in_state(env, qpos={"ball_x": 0.25, "ball_z": 0.4})
    out_fast = reward_in_state(env, qpos={"ball_x": 0.25, "ball_z": 0.4},
                               qvel={"ball_x": 3.0, "ball_z": -6.0})
    assert 0.0 < out_still < 0.3 < 0.6 < out_fast <= 1.0


def test_cup_spin_mostly_starts_in_cup():
    env = make("cup-spin", seed=0)
    starts = []
    for _ in range(20):
        env.reset()
        starts.append(env.unwrapped.physics.in_target())
    assert 12 <= sum(starts) <= 20


def test_reacher_three_reward_at_target():
    env = make("reacher-three-easy")
    env.reset()
    physics = env.unwrapped.physics
    task = env.unwrapped.task
    finger = physics.named.data.geom_xpos["finger", :2].copy()
    physics.named.model.geom_pos["target", :2] = finger
    physics.forward()
    assert task.get_reward(physics) == pytest.approx(1.0)
    physics.named.model.geom_pos["target", :2] = -finger
    physics.forward()
    assert task.get_reward(physics) < 0.1
    # the arm reaches 0.27 m: every target (<= 0.2 m from the base) is reachable
    with physics.reset_context():
        pass
    assert np.linalg.norm(physics.named.data.geom_xpos["finger", :2]) == pytest.approx(0.27)


# --------------------------------------------------------------------------- pixels
def test_pixels():
    env = make("cartpole-swingup", obs_type="rgb")
    assert env.observation_space.shape == (9, 64, 64)
    assert env.observation_space.dtype == np.uint8
    obs, _ = env.reset()
    assert obs.shape == (9, 64, 64) and obs.dtype == np.uint8
    # on reset the first frame fills all three slots
    np.testing.assert_array_equal(obs[0:3], obs[3:6])
    np.testing.assert_array_equal(obs[3:6], obs[6:9])
    assert obs.std() > 1.0  # not a blank image
    frames = [obs]
    for a in np.ones((4, 1), np.float32):  # push the cart hard one way
        obs, reward, terminated, truncated, _ = env.step(a)
        assert obs.shape == (9, 64, 64) and obs.dtype == np.uint8
        assert 0.0 <= reward <= REPEAT and not terminated and not truncated
        frames.append(obs)
    last = frames[-1]
    assert not np.array_equal(last[0:3], last[6:9])     # the stacked frames differ
    assert not np.array_equal(frames[0], last)
    # the stack shifts: the newest frame of step t is the middle one of step t+1
    np.testing.assert_array_equal(frames[-2][6:9], last[3:6])
    np.testing.assert_array_equal(frames[-2][3:6], last[0:3])
    # returned observations are copies, not views of the internal buffer
    assert not np.shares_memory(frames[-2], last)


def test_render_for_videos():
    env = make("cartpole-swingup")
    env.reset()
    frame = env.render()
    assert frame.shape == (384, 384, 3) and frame.dtype == np.uint8
    assert env.render(width=96, height=48).shape == (48, 96, 3)


# ------------------------------------------------------------------ generic wrappers
class _Counter(gym.Env):
    """Obs = step count; reward 1 per step; terminates at step ``end``."""

    def __init__(self, end=100):
        self.end = end
        self.t = 0
        self.observation_space = gym.spaces.Box(0, np.inf, (1,), np.float32)
        self.action_space = gym.spaces.Box(-1, 1, (1,), np.float32)
        self.frames = 0

    def reset(self, *, seed=None, options=None):
        self.t = 0
        return np.array([0.0], np.float32), {}

    def step(self, action):
        self.t += 1
        return np.array([self.t], np.float32), 1.0, self.t >= self.end, False, {"t": self.t}

    def render(self, width=8, height=8):
        self.frames += 1
        return np.full((height, width, 3), self.t, np.uint8)


def test_action_repeat_wrapper():
    env = ActionRepeat(_Counter(end=5), 2)
    env.reset()
    obs, r, term, trunc, info = env.step(np.zeros(1))
    assert obs[0] == 2 and r == 2.0 and not term
    env.step(np.zeros(1))
    obs, r, term, trunc, info = env.step(np.zeros(1))  # stops after 1 repeat: terminated
    assert obs[0] == 5 and r == 1.0 and term and info["t"] == 5
    with pytest.raises(ValueError):
        ActionRepeat(_Counter(), 0)


def test_time_limit_wrapper():
    env = TimeLimit(_Counter(), 3)
    env.reset()
    assert [env.step(np.zeros(1))[3] for _ in range(3)] == [False, False, True]
    env.reset()
    assert env.elapsed_steps == 0 and env.step(np.zeros(1))[3] is False


def test_pixel_stack_wrapper():
    env = PixelStack(_Counter(), num_frames=3, size=8)
    obs, _ = env.reset()
    assert obs.shape == (9, 8, 8) and np.all(obs == 0)
    for _ in range(4):
        obs, *_ = env.step(np.zeros(1))
    # oldest first: frames of steps 2, 3, 4
    assert [int(obs[3 * i, 0, 0]) for i in range(3)] == [2, 3, 4]
    assert env.render(width=4, height=2).shape == (2, 4, 3)  # kwargs pass through
