"""Meta-World environments (mbdpo/envs/metaworld.py).

Full episodes of every task are in test_all_tasks.py. The pixel test renders only a few frames (a
Meta-World frame costs 20-50 ms at 64×64 without shadows, ~0.2 s at 384×384 on this CPU).
"""
from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys

import numpy as np
import pytest

# Not importorskip: importing metaworld loads mujoco, whose GL backend must be chosen first.
if importlib.util.find_spec("metaworld") is None:
    pytest.skip("metaworld is not installed", allow_module_level=True)

from mbdpo.envs import metaworld as mw  # noqa: E402  (sets MUJOCO_GL before mujoco loads)
from mbdpo.tasks import METAWORLD, get_task  # noqa: E402

OBS_DIM = 39
ACTION_DIM = 4
EPISODE = 100
REPEAT = 2
REPRESENTATIVE = ["mw-reach", "mw-pick-place", "mw-door-open", "mw-assembly", "mw-stick-pull"]


def make(name, obs_type="state", seed=0, **kwargs):
    return mw.make(get_task(name), obs_type=obs_type, seed=seed, **kwargs)


def random_actions(n, seed=0):
    return np.random.default_rng(seed).uniform(-1.0, 1.0, (n, ACTION_DIM)).astype(np.float32)


def check_step(obs, reward, terminated, info):
    assert obs.dtype == np.float32 and obs.shape == (OBS_DIM,)
    assert np.all(np.isfinite(obs))
    assert isinstance(reward, float) and np.isfinite(reward)
    assert terminated is False
    assert isinstance(info["success"], float) and info["success"] in (0.0, 1.0)


# ----------------------------------------------------------------------------- names
def test_all_50_names_map_to_installed_v3_envs():
    from metaworld.env_dict import ALL_V3_ENVIRONMENTS_GOAL_OBSERVABLE
    names = mw.all_env_names()
    assert len(METAWORLD) == 50 and len(names) == 50
    assert mw.METAWORLD_VERSION == "v3"
    for task, name in names.items():
        assert name == task[len("mw-"):] + "-v3"   # no renaming needed in metaworld 3.0.0
        assert f"{name}-goal-observable" in ALL_V3_ENVIRONMENTS_GOAL_OBSERVABLE, name
    assert len(set(names.values())) == 50
    assert mw.env_name("mw-peg-insert-side") == "peg-insert-side-v3"


def test_bad_arguments():
    with pytest.raises(ValueError):
        mw.make(get_task("cartpole-balance"))
    with pytest.raises(ValueError):
        make("mw-reach", obs_type="depth")
    with pytest.raises(ValueError):
        make("mw-reach", goals="fixed")
    with pytest.raises(ValueError):
        mw.env_name("reach")


# ----------------------------------------------------------------------------- contract
@pytest.mark.parametrize("name", REPRESENTATIVE)
def test_make_reset_step(name):
    env = make(name, seed=1)
    assert env.observation_space.shape == (OBS_DIM,) and env.observation_space.dtype == np.float32
    assert env.action_space.shape == (ACTION_DIM,) and env.action_space.dtype == np.float32
    assert np.all(env.action_space.low == -1.0) and np.all(env.action_space.high == 1.0)
    assert env.unwrapped.action_repeat == REPEAT
    obs, info = env.reset()
    assert obs.dtype == np.float32 and obs.shape == (OBS_DIM,) and np.all(np.isfinite(obs))
    assert isinstance(info, dict)
    for action in random_actions(10):
        obs, reward, terminated, truncated, info = env.step(action)
        check_step(obs, reward, terminated, info)
        assert truncated is False
    # Out-of-range actions are clipped, not rejected.
    obs, reward, terminated, _, info = env.step(np.full(ACTION_DIM, 5.0, np.float32))
    check_step(obs, reward, terminated, info)
    env.close()


def test_action_repeat_sums_two_sim_steps():
    env = make("mw-push", seed=0)
    env.reset(seed=0)
    raw = env.unwrapped.mw_env
    steps0 = raw.curr_path_length
    action = np.array([0.3, -0.2, 0.1, 0.5], np.float32)
    _, reward, *_ = env.step(action)
    assert raw.curr_path_length - steps0 == REPEAT
    # The same two steps taken on the raw env from the same state give the same sum.
    ref = make("mw-push", seed=0)
    ref.reset(seed=0)
    ref_raw = ref.unwrapped.mw_env
    expected = sum(float(ref_raw.step(action.copy())[1]) for _ in range(REPEAT))
    assert reward == pytest.approx(expected, rel=1e-9)


def test_episode_is_100_agent_steps_and_env_limit_is_lifted():
    env = make("mw-reach", seed=0)
    env.reset()
    actions = random_actions(260)
    for t, action in enumerate(actions[:EPISODE]):
        _, _, terminated, truncated, _ = env.step(action)
        assert terminated is False
        assert truncated is (t == EPISODE - 1)
    # Meta-World's own 500-simulator-step limit (raises ValueError) must not interfere.
    for action in actions[EPISODE:]:
        env.step(action)
    assert env.unwrapped.mw_env.curr_path_length == 260 * REPEAT
    # And a reset starts a new episode of 100 steps.
    env.reset()
    assert env.elapsed_steps == 0


# ----------------------------------------------------------------------------- seeding
def test_seeding_is_deterministic():
    a, b = make("mw-pick-place", seed=7), make("mw-pick-place", seed=7)
    obs_a, obs_b = a.reset()[0], b.reset()[0]
    np.testing.assert_array_equal(obs_a, obs_b)
    actions = random_actions(5)
    for action in actions:
        np.testing.assert_array_equal(a.step(action)[0], b.step(action)[0])
    # reset(seed=s) reproduces, whatever came before; make(seed=s) + reset() is reset(seed=s).
    np.testing.assert_array_equal(a.reset(seed=7)[0], obs_a)
    c = make("mw-pick-place", seed=0)
    np.testing.assert_array_equal(c.reset(seed=7)[0], obs_a)
    # A different seed, or the next reset, gives another goal (new positions every reset).
    goal = obs_a[36:39]
    assert not np.allclose(c.reset(seed=8)[0][36:39], goal)
    assert not np.allclose(a.reset()[0][36:39], goal)
    assert not np.allclose(make("mw-pick-place", seed=8).reset()[0][36:39], goal)


def test_goal_is_observed_and_is_the_target():
    env = make("mw-reach", seed=3)
    obs, _ = env.reset()
    np.testing.assert_allclose(obs[36:39], env.unwrapped.mw_env._target_pos, atol=1e-6)


def test_mt1_goals_come_from_the_task_set():
    import pickle
    env = make("mw-reach", seed=3, goals="mt1")
    rand_vecs = np.array([pickle.loads(t.data)["rand_vec"] for t in env.unwrapped._tasks])
    assert rand_vecs.shape == (50, 6)
    for _ in range(3):
        obs, _ = env.reset()
        assert np.abs(rand_vecs[:, 3:] - obs[36:39]).max(axis=1).min() < 1e-6
    again = make("mw-reach", seed=3, goals="mt1")
    np.testing.assert_array_equal(again.reset()[0], env.reset(seed=3)[0])


# ----------------------------------------------------------------------------- success
def test_scripted_reach_succeeds():
    """A P-controller moving the fingertips onto the goal turns info['success'] to 1."""
    env = make("mw-reach", seed=0)
    for seed in (0, 1):
        obs, _ = env.reset(seed=seed)
        raw = env.unwrapped.mw_env
        tip_offset = obs[0:3] - raw.tcp_center   # obs[0:3] is the hand, success uses the tcp
        successes, truncated = [], False
        while not truncated:
            target = obs[36:39] + tip_offset
            action = np.zeros(ACTION_DIM, np.float32)
            action[:3] = np.clip(10.0 * (target - obs[0:3]), -1.0, 1.0)
            obs, reward, _, truncated, info = env.step(action)
            successes.append(info["success"])
        assert successes[0] == 0.0
        assert successes[-1] == 1.0 and sum(successes) > 50
        assert np.linalg.norm(raw.tcp_center - obs[36:39]) < 0.05


def test_make_env_entry_point():
    from omegaconf import OmegaConf

    from mbdpo.envs import make_env
    env = make_env(OmegaConf.create({"task": "mw-door-open", "obs": "state", "seed": 1}))
    obs, _ = env.reset()
    assert obs.shape == (OBS_DIM,)
    assert env.unwrapped.name == "door-open-v3"


# ----------------------------------------------------------------------------- pixels
def test_pixels_and_render():
    env = make("mw-reach", obs_type="rgb", seed=0)
    assert env.observation_space.shape == (9, 64, 64)
    obs, _ = env.reset()
    assert obs.dtype == np.uint8 and obs.shape == (9, 64, 64)
    np.testing.assert_array_equal(obs[:3], obs[6:])       # first frame fills the stack
    assert obs.std() > 10                                  # a scene, not a blank image
    obs2, reward, terminated, truncated, info = env.step(np.array([1, 1, 0, 0], np.float32))
    assert obs2.shape == (9, 64, 64) and obs2.dtype == np.uint8
    np.testing.assert_array_equal(obs2[:6], obs[3:])      # stack shifted by one frame
    assert np.isfinite(reward) and info["success"] in (0.0, 1.0)
    frame = env.render(width=80, height=48)
    assert frame.shape == (48, 80, 3) and frame.dtype == np.uint8
    env.close()


PROBE = """
import json, os, sys
children = []
sys.addaudithook(lambda event, args: children.append(list(args[1])) if event == "subprocess.Popen"
                 else None)
if sys.argv[1] == "mbdpo":
    from mbdpo.envs import metaworld  # noqa: F401
else:
    import metaworld  # noqa: F401
import glfw.library
print(json.dumps({"children": children, "library": glfw.library.glfw._name,
                  "env": os.environ.get("PYGLFW_LIBRARY")}))
"""


@pytest.mark.parametrize("gl", ["egl", "glfw"])
def test_importing_the_suite_starts_no_child_unless_glfw_renders(gl):
    """pyglfw (imported by gymnasium's MuJoCo renderer) finds its library by starting a Python
    child that reads a file name from a pipe: a run killed then left that child to print an
    EOFError traceback (seen once in CI). Unless MUJOCO_GL=glfw, mbdpo names the bundled
    library and no child starts; metaworld imported by itself still starts one."""
    def probe(first):
        env = {k: v for k, v in os.environ.items() if k != "PYGLFW_LIBRARY"}
        out = subprocess.run([sys.executable, "-c", PROBE, first], env={**env, "MUJOCO_GL": gl},
                             capture_output=True, text=True, timeout=120)
        assert out.returncode == 0, out.stderr
        return json.loads(out.stdout.strip().splitlines()[-1])

    ours, plain = probe("mbdpo"), probe("metaworld")
    assert plain["children"] and plain["children"][0][1] == "-c", plain
    assert plain["env"] is None and plain["library"].endswith("libglfw.so")
    if gl == "glfw":  # glfw renders: its own search, untouched
        assert ours["env"] is None and len(ours["children"]) == len(plain["children"]), ours
    else:
        assert ours["children"] == [], ours
        assert ours["env"] == ours["library"] == plain["library"], (ours, plain)
