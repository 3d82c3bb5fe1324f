"""The task registry: every task name users may pass as ``task=NAME``.

Each entry says which suite runs it, how many agent steps an episode lasts, how often an
action is repeated in the simulator, and whether the task reports success. The task sets
(mt30, mt80, ...) are ordered lists: the offline datasets index tasks by position in them.

``python -m mbdpo.tasks`` prints the registry grouped by suite.
"""
from __future__ import annotations

import difflib
import importlib.util
from dataclasses import dataclass

DMCONTROL = [
    "walker-stand", "walker-walk", "walker-run", "cheetah-run", "reacher-easy", "reacher-hard",
    "acrobot-swingup", "pendulum-swingup", "cartpole-balance", "cartpole-balance-sparse",
    "cartpole-swingup", "cartpole-swingup-sparse", "cup-catch", "finger-spin", "finger-turn-easy",
    "finger-turn-hard", "fish-swim", "hopper-stand", "hopper-hop", "walker-walk-backwards",
    "walker-run-backwards", "cheetah-run-backwards", "cheetah-run-front", "cheetah-run-back",
    "cheetah-jump", "hopper-hop-backwards", "reacher-three-easy", "reacher-three-hard",
    "cup-spin", "pendulum-spin", "quadruped-walk", "quadruped-run", "humanoid-walk",
    "humanoid-run", "humanoid-stand", "dog-walk", "dog-run", "dog-stand", "dog-trot",
]
# The 11 variants defined by TD-MPC2 on top of the standard domains (our own definitions).
DMCONTROL_CUSTOM = [
    "walker-walk-backwards", "walker-run-backwards", "cheetah-run-backwards", "cheetah-run-front",
    "cheetah-run-back", "cheetah-jump", "hopper-hop-backwards", "reacher-three-easy",
    "reacher-three-hard", "cup-spin", "pendulum-spin",
]
METAWORLD = [
    "mw-assembly", "mw-basketball", "mw-button-press-topdown", "mw-button-press-topdown-wall",
    "mw-button-press", "mw-button-press-wall", "mw-coffee-button", "mw-coffee-pull",
    "mw-coffee-push", "mw-dial-turn", "mw-disassemble", "mw-door-open", "mw-door-close",
    "mw-drawer-close", "mw-drawer-open", "mw-faucet-open", "mw-faucet-close", "mw-hammer",
    "mw-handle-press-side", "mw-handle-press", "mw-handle-pull-side", "mw-handle-pull",
    "mw-lever-pull", "mw-peg-insert-side", "mw-peg-unplug-side", "mw-pick-out-of-hole",
    "mw-pick-place", "mw-pick-place-wall", "mw-plate-slide", "mw-plate-slide-side",
    "mw-plate-slide-back", "mw-plate-slide-back-side", "mw-push-back", "mw-push", "mw-push-wall",
    "mw-reach", "mw-reach-wall", "mw-shelf-place", "mw-soccer", "mw-stick-push", "mw-stick-pull",
    "mw-sweep-into", "mw-sweep", "mw-window-open", "mw-window-close", "mw-bin-picking",
    "mw-box-close", "mw-door-lock", "mw-door-unlock", "mw-hand-insert",
]
MANISKILL2 = ["lift-cube", "pick-cube", "stack-cube", "pick-ycb", "turn-faucet"]
MYOSUITE = [
    "myo-reach", "myo-reach-hard", "myo-pose", "myo-pose-hard", "myo-obj-hold",
    "myo-obj-hold-hard", "myo-key-turn", "myo-key-turn-hard", "myo-pen-twirl",
    "myo-pen-twirl-hard",
]
LOCOMOTION = ["dog-walk", "dog-run", "dog-stand", "dog-trot", "humanoid-walk", "humanoid-run",
              "humanoid-stand"]
VISUAL = ["acrobot-swingup", "cheetah-run", "finger-spin", "finger-turn-easy", "finger-turn-hard",
          "quadruped-walk", "reacher-easy", "reacher-hard", "walker-run", "walker-walk"]

MT30 = DMCONTROL[:30]
MT80 = MT30 + METAWORLD
# The paper's held-out fine-tuning tasks and the seen task whose embedding each starts from.
FINETUNE_SOURCE = {
    "walker-run": "walker-walk", "cheetah-run": "cheetah-run-backwards",
    "hopper-hop": "hopper-stand", "pendulum-swingup": "pendulum-spin",
    "reacher-hard": "reacher-easy", "mw-bin-picking": "mw-pick-place",
    "mw-box-close": "mw-assembly", "mw-door-lock": "mw-door-open",
    "mw-door-unlock": "mw-door-open", "mw-hand-insert": "mw-sweep-into",
}
MT70 = [t for t in MT80 if t not in FINETUNE_SOURCE]

TASK_SETS = {
    "mt30": MT30, "mt70": MT70, "mt80": MT80, "dmcontrol": DMCONTROL, "metaworld": METAWORLD,
    "maniskill2": MANISKILL2, "myosuite": MYOSUITE, "locomotion": LOCOMOTION, "visual": VISUAL,
}

# The python module whose presence makes a suite runnable, and the pip extra that installs it.
SUITE_MODULE = {"dmcontrol": "dm_control", "metaworld": "metaworld",
                "maniskill2": "mani_skill2", "myosuite": "myosuite"}
# Suites whose tasks can be observed from pixels here (ManiSkill2: state only).
PIXEL_SUITES = ("dmcontrol", "metaworld", "myosuite")
SUITE_EXTRA = {"dmcontrol": None, "metaworld": "metaworld", "maniskill2": "maniskill2",
               "myosuite": "myosuite"}


@dataclass(frozen=True)
class TaskSpec:
    name: str
    suite: str
    episode_length: int   # agent steps per episode
    action_repeat: int    # simulator steps per agent step
    has_success: bool     # reports info['success']
    episodic: bool = False  # may terminate early (needs the termination head)


def _build_registry() -> dict[str, TaskSpec]:
    reg = {}
    for n in DMCONTROL:
        reg[n] = TaskSpec(n, "dmcontrol", 500, 2, False)
    for n in METAWORLD:
        reg[n] = TaskSpec(n, "metaworld", 100, 2, True)
    for n in MANISKILL2:
        reg[n] = TaskSpec(n, "maniskill2", 100, 2, True)
    for n in MYOSUITE:
        reg[n] = TaskSpec(n, "myosuite", 100, 1, True)
    return reg


TASKS: dict[str, TaskSpec] = _build_registry()


class UnknownTaskError(ValueError):
    pass


def closest_names(name: str, n: int = 3) -> list[str]:
    pool = list(TASKS) + list(TASK_SETS)
    return difflib.get_close_matches(name, pool, n=n, cutoff=0.4)


def get_task(name: str) -> TaskSpec:
    """The spec of a single task; an unknown name is explained with the closest known ones."""
    if name in TASKS:
        return TASKS[name]
    close = closest_names(name)
    hint = f" Did you mean {', '.join(close)}?" if close else ""
    raise UnknownTaskError(
        f"Unknown task '{name}'.{hint} Run `python -m mbdpo.tasks` to list every task.")


def resolve_tasks(name: str) -> list[str]:
    """A task-set name to its ordered list; a single task name to a list of one."""
    if name in TASK_SETS:
        return list(TASK_SETS[name])
    get_task(name)
    return [name]


def num_settings() -> int:
    """The paper's count of task settings: every name once, plus the locomotion and visual
    settings, which repeat DMControl tasks (121)."""
    return len(TASKS) + len(LOCOMOTION) + len(VISUAL)


def suite_installed(suite: str) -> bool:
    return importlib.util.find_spec(SUITE_MODULE[suite]) is not None


def main() -> None:
    suites: dict[str, list[str]] = {}
    for spec in TASKS.values():
        suites.setdefault(spec.suite, []).append(spec.name)
    for suite, names in suites.items():
        mark = "installed" if suite_installed(suite) else (
            f"not installed: pip install -e '.[{SUITE_EXTRA[suite]}]'")
        if suite == "maniskill2":
            mark += ("; its own environment, scripts/setup_maniskill2.sh; needs a Vulkan "
                     "device, and downloaded assets for pick-ycb and turn-faucet")
        print(f"{suite} ({len(names)} tasks, {mark})")
        for spec in (TASKS[n] for n in names):
            extra = " success" if spec.has_success else ""
            print(f"  {spec.name:32s} {spec.episode_length} steps, repeat {spec.action_repeat}{extra}")
    print(f"locomotion ({len(LOCOMOTION)} settings, DMControl tasks): {' '.join(LOCOMOTION)}")
    print(f"visual ({len(VISUAL)} settings, DMControl tasks with obs=rgb): {' '.join(VISUAL)}")
    print("task sets: " + ", ".join(f"{k} ({len(v)})" for k, v in TASK_SETS.items()))
    print(f"{len(TASKS)} distinct task names, {num_settings()} settings counting locomotion "
          "and pixels")


if __name__ == "__main__":
    main()
