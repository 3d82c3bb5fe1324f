"""Several seeds of one online run in one process (``seeds=[1,2,3]``): S independent runs that
share one batched agent (``MBDPO(cfg, seeds)``: one action plans for all S, one update steps
all S).

Each seed is an ordinary ``OnlineTrainer`` (its lane) with its own run folder
(``<work_dir>/<task>/<seed>/<exp_name>``), environments, replay, logger, checkpoints and
evaluation, run in a greenlet of its own (``Lanes``). The lanes' agent is a stand-in that
meets the other lanes at every call (an action, an update, the episode diagnostics, a check of
the stop flag) and makes the call once for all of them. The lanes run the same loop in
lockstep: with episodes of a fixed length (the suites' tasks, except those that may terminate
early) every seed reaches the same calls in the same order, as its single run would. Why lanes
and a meeting point rather than one loop over S × N environments: the single-seed loop
(seeding, bursts, evaluations, checkpoints, resume, Ctrl-C) then serves every seed unchanged.
With environments in worker processes (``num_envs`` > 1, ``eval_episodes`` > 1) every seed's
workers step at the same time (``LaneTrainer.sent``).

A seed's checkpoint holds that seed's part of the agent (``agent.one_seed``) and its random
stream: it loads as a single run of that seed (``evaluate.py``, ``plot.py``, fine-tuning).
"""
from __future__ import annotations

import copy
import os

import greenlet
import torch

from mbdpo import checkpoint as ckpt
from mbdpo.agent import MBDPO, one_seed
from mbdpo.config import ConfigError, run_dir
from mbdpo.trainers.base import StopRequested, StopWhileCompiling
from mbdpo.trainers.online import OnlineTrainer


class _LaneLeft(Exception):
    """Another lane left (it stopped or failed): this one stops too."""


class Lanes:
    """The meeting point of S lanes, each a greenlet of this thread: ``call(lane, kind,
    payload)`` hands the call to the hub (``run``), which resumes the lanes in turn until
    every lane has made a call of the same kind, runs it once for all (``_run``) and hands
    each lane its part. A lane that ends (it stopped, failed or finished) while others wait
    at a call releases them with ``_LaneLeft``.

    Why greenlets rather than threads: the lanes' Python runs one lane at a time in any case
    (the GIL). Free-running threads hand the GIL over at every operation that releases it
    (each torch op, each MuJoCo step), and threads that take turns pay an OS wake-up per
    hand-over: with act and update as stand-ins (``benchmarks/host_loop.py``, walker-walk,
    2-core CPU) four seeds' host time per step was 5.2-7.2x one seed's with free threads,
    5.3-6.3x with turns, 3.8-4.4x with greenlets, which switch only at a meeting."""

    def __init__(self, seeds: list[int], stop: StopRequested):
        self.seeds, self.S, self.stop = seeds, len(seeds), stop
        self.agent: MBDPO | None = None
        self.hub = greenlet.getcurrent()

    def make_agent(self, cfg) -> MBDPO:
        if self.agent is None:
            self.agent = MBDPO(cfg, self.seeds)
        return self.agent

    def call(self, lane: int, kind, payload=None):
        if greenlet.getcurrent() is self.hub:
            raise RuntimeError(f"seed {self.seeds[lane]}'s agent was called outside its lane")
        left, value = self.hub.switch((kind, payload))
        if left:
            raise _LaneLeft from value
        return value

    def run(self, bodies: list) -> None:
        """Run ``bodies`` (functions of no argument that return nothing and raise nothing),
        one lane each, until all have ended. An error of the hub itself (a second Ctrl-C)
        first ends the lanes that wait, with ``_LaneLeft``, then comes out."""
        lanes = [greenlet.greenlet(body) for body in bodies]
        answers: list = [()] * self.S  # what each lane gets back at its next switch
        try:
            while True:
                calls = {}
                for i, g in enumerate(lanes):
                    if not g.dead:
                        out = g.switch(*answers[i])
                        if not g.dead:
                            calls[i] = out
                if not calls:
                    return
                if len(calls) < self.S:  # a lane ended: the others stop too
                    answers = [((True, None),)] * self.S
                    continue
                kinds = {k for k, _ in calls.values()}
                try:
                    if len(kinds) > 1:
                        raise RuntimeError(f"the seeds' runs went out of step ({kinds}): "
                                           "their episodes must have the same lengths")
                    results = self._run(kinds.pop(), [calls[i][1] for i in range(self.S)])
                    answers = [((False, r),) for r in results]
                except BaseException as err:  # every lane raises it
                    answers = [((True, err),)] * self.S
        finally:
            for g in lanes:
                if not g.dead and g:  # started, waiting at a call
                    g.throw(_LaneLeft)

    def _run(self, kind, payloads: list) -> list:
        agent, S = self.agent, self.S
        if kind == "stop":  # one answer for every lane, so that all stop at the same point
            return [bool(self.stop)] * S
        if kind[0] == "act":
            _, eval_mode, stream = kind
            obs = torch.cat([p[0] for p in payloads])
            t0 = torch.cat([p[1] for p in payloads])
            task = None if payloads[0][2] is None else torch.cat([p[2] for p in payloads])
            a = agent.act(obs, t0, task, eval_mode=eval_mode, stream=stream)
            return [a[i:i + 1] for i in range(S)]
        if kind == "update":
            batch = {k: (torch.cat([p[k] for p in payloads]) if torch.is_tensor(payloads[0][k])
                         else payloads[0][k]) for k in payloads[0]}
            out = agent.update(batch)
            return [{k: v[i:i + 1] for k, v in out.items()} for i in range(S)]
        if kind == "diagnostics":
            cols = [torch.stack([torch.as_tensor(p[j]) for p in payloads]) for j in range(4)]
            return agent.diagnostics_per_seed(*cols, payloads[0][4])
        if kind == "load":
            agent.load_state_dict(stack_states(payloads))
            return [None] * S
        if kind in ("saved", "sent"):  # every seed's new unit is written; actions sent
            return [None] * S
        raise ValueError(f"unknown call {kind!r}")


def stack_states(states: list[dict]) -> dict:
    """One-seed agent states (``one_seed``, in seed order) -> the batched agent's state."""
    from mbdpo.world_model import SHARED
    first = states[0]

    def cat(ts):
        return torch.cat(list(ts))
    model = {k: (v if k.rsplit(".", 1)[-1] in SHARED else cat(s["model"][k] for s in states))
             for k, v in first["model"].items()}

    def optim(name):
        st = first[name]
        return {**st, "state": {k: {n: (v if n == "step" else cat(
            s[name]["state"][k][n] for s in states)) for n, v in group.items()}
            for k, group in st["state"].items()}}
    scale = {k: (cat(s["scale"][k] for s in states) if k == "value" else v)
             for k, v in first["scale"].items()}
    warm = {k: cat(s["warm"][k] for s in states) for k in first["warm"]
            if all(k in s["warm"] for s in states)}
    return {"model": model, "optim": optim("optim"), "pi_optim": optim("pi_optim"),
            "scale": scale, "warm": warm, "seeds": [s["seeds"][0] for s in states],
            "noise": [s["stream"] for s in states] if all("stream" in s for s in states)
            else []}


class _LaneStop:
    """A lane's view of Ctrl-C / SIGTERM: every lane asks at the same point of its loop and
    gets the same answer."""

    def __init__(self, lanes: Lanes, lane: int):
        self.lanes, self.lane = lanes, lane

    def __bool__(self):
        return self.lanes.call(self.lane, "stop")


class _LaneAgent:
    """What a lane's trainer holds as its agent: seed ``lane`` of the shared batched agent."""

    def __init__(self, lanes: Lanes, lane: int, agent: MBDPO):
        self.lanes, self.lane, self.batched = lanes, lane, agent
        self.device, self.model, self.paths = agent.device, agent.model, agent.paths
        self.S = 1

    def act(self, obs, t0, task=None, eval_mode=False, stream="train"):
        return self.lanes.call(self.lane, ("act", eval_mode, stream), (obs, t0, task))

    def update(self, batch):
        return self.lanes.call(self.lane, "update", batch)

    def diagnostics(self, obs, action, reward, terminated, task=None):
        return self.lanes.call(self.lane, "diagnostics", (obs, action, reward, terminated,
                                                          task))

    def state_dict(self) -> dict:
        # the agent changes only when every lane meets it: while this lane saves, no other
        # lane can move it on
        return one_seed(self.batched.state_dict(), self.lane)

    def load_state_dict(self, state: dict) -> None:
        self.lanes.call(self.lane, "load", state)

    def unmade_moments(self) -> tuple[int, int]:
        return self.batched.unmade_moments()  # per seed


class LaneTrainer(OnlineTrainer):
    """One seed's online run, its agent the shared one (``_LaneAgent``)."""

    several = True

    def sent(self) -> None:
        # the lanes run one at a time: with worker processes (num_envs > 1, eval_episodes
        # > 1) each lane sends its actions, then waits for its workers once every lane has
        # sent theirs
        self.lanes.call(self.lane, "sent")

    def __init__(self, cfg, lanes: Lanes, lane: int):
        self.lanes, self.lane = lanes, lane
        self.show_bars = lane == 0
        super().__init__(cfg)

    def make_agent(self):
        return _LaneAgent(self.lanes, self.lane, self.lanes.make_agent(self.cfg))

    def checkpoint_state(self, step: int) -> dict:
        state = super().checkpoint_state(step)
        stream = state["agent"].get("stream")
        if stream is not None and self.agent.device.type == "cpu":
            # a single run of this seed would resume from its default generator: this stream
            state["rng"] = {**state["rng"], "torch": stream}
        return state

    # -- checkpoints: the seeds' units move on together ---------------------------------------
    def save(self, step: int, names=(), marked: bool = False) -> str:
        """Write this seed's unit as a single run does, keeping the previous one (under
        previous.pt) until every seed has written its new unit: a kill between two seeds'
        saves leaves each seed a unit at the step they share (``reconcile`` goes back to it)."""
        latest = os.path.join(self.model_dir, "latest.pt")
        previous = os.path.join(self.model_dir, "previous.pt")
        if os.path.exists(latest):
            ckpt.atomic_link(latest, previous)
        path = super().save(step, names, marked)
        self.lanes.call(self.lane, "saved")
        if os.path.exists(previous):
            os.remove(previous)
        self.remove_leftovers()
        return path

    def _latest_files(self) -> set | None:
        files = super()._latest_files()
        previous = os.path.join(self.model_dir, "previous.pt")
        if files is not None and os.path.exists(previous):
            try:
                files |= set(ckpt.load(previous).get("files", {}).values())
            except ckpt.CheckpointError:
                pass
        return files

    def run_loop(self, what: str):
        from mbdpo.config import human, num_params
        m = self.agent.model
        self.logger.tag = f" seed {self.cfg.seed}"
        if self.lane == 0:
            print(f"MBDPO {what}: {len(self.lanes.seeds)} seeds {self.lanes.seeds} in one "
                  f"agent, {human((num_params(m) - num_params(m.Qs_target)) // self.lanes.S)}"
                  f" learnable parameters each, device {self.cfg.device}", flush=True)
        try:
            return self._loop(_LaneStop(self.lanes, self.lane))
        except _LaneLeft as err:
            if isinstance(err.__cause__, StopWhileCompiling):  # every lane saves its mark
                self.interrupted()
            raise
        finally:
            self.logger.finish()


def seed_configs(cfg) -> list:
    """The config of each seed's run: ``cfg`` with ``seed`` set, ``seeds`` cleared."""
    out = []
    for s in cfg.seeds:
        c = copy.deepcopy(cfg)
        c.seed, c.seeds = int(s), None
        out.append(c)
    return out


def _progress(path: str):
    """Where a seed's unit stands: (step, step of its last evaluation, updates), or None
    without one. Two units of one step can differ: a stop inside the evaluation at step t
    saves step t before that evaluation, the next save at t after it."""
    if not os.path.exists(path):
        return None
    state = ckpt.load(path)
    return (state["step"], state.get("last_eval_step", -1),
            state.get("counters", {}).get("updates", 0))


def reconcile(cfgs: list) -> None:
    """Before a resume: the seeds' runs continue together, from the unit every seed has. A
    kill between two seeds' saves leaves some seeds a save ahead; they go back to the unit
    they kept (previous.pt), or, when that is the start, to no checkpoint."""
    folders = [os.path.join(run_dir(c), "models") for c in cfgs]
    latest = [_progress(os.path.join(f, "latest.pt")) for f in folders]
    target = None if None in latest else min(latest)

    def where(p):
        return "the start" if p is None else f"step {p[0]:,}" + (
            f" (evaluated at step {p[1]:,})" if p[1] >= 0 else "")
    for c, folder, at in zip(cfgs, folders, latest):
        previous = os.path.join(folder, "previous.pt")
        if at != target:
            if target is None and _progress(previous) is None:
                os.remove(os.path.join(folder, "latest.pt"))  # its first save: redone
            elif _progress(previous) == target:
                os.replace(previous, os.path.join(folder, "latest.pt"))
            else:
                listed = ", ".join(f"seed {x.seed}: {'none' if v is None else where(v)}"
                                   for x, v in zip(cfgs, latest))
                raise ConfigError(
                    f"The seeds' checkpoints are at different points ({listed}) and seed "
                    f"{c.seed} kept no checkpoint of the point they share: resume the seeds "
                    "one by one (seed=N resume=true), or start anew with overwrite=true.")
            print(f"seed {c.seed}: back to its checkpoint of {where(target)}, the point "
                  "every seed saved.", flush=True)
        elif os.path.exists(previous):
            os.remove(previous)


def train_seeds(cfg):
    """Train ``cfg.seeds`` together; returns the last evaluation of each seed (a list)."""
    cfgs = seed_configs(cfg)
    if cfg.resume:
        reconcile(cfgs)
    with StopRequested() as stop:
        lanes = Lanes([c.seed for c in cfgs], stop)
        trainers = [LaneTrainer(c, lanes, i) for i, c in enumerate(cfgs)]
        try:
            # refusals (a folder that holds a run, a disk too small for all the seeds'
            # checkpoints together: their folders share work_dir's disk) before anything runs
            others = 0
            for t in trainers:
                others += t.claim_dir(others)
            results, errors = [None] * len(trainers), [None] * len(trainers)

            def body(i):
                def run():
                    try:
                        results[i] = trainers[i].train()
                    except _LaneLeft as err:
                        errors[i] = err.__cause__
                    except BaseException as err:  # SystemExit of a stop, a refusal, a failure
                        errors[i] = err
                return run
            lanes.run([body(i) for i in range(len(trainers))])
        finally:
            for t in trainers:
                t.close()
    real = [e for e in errors if e is not None and not isinstance(e, SystemExit)]
    if real:
        raise real[0]
    stopped = [e for e in errors if isinstance(e, SystemExit)]
    if stopped:
        raise stopped[0]
    return results
