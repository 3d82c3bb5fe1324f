"""Speed benchmark: act and update latency, environment steps/s of a short online run, and how
close the planner runs to the machine's matrix-multiply throughput.

    python benchmarks/speed.py                         # model sizes 1 and 5, default planner
    python benchmarks/speed.py sizes=5,19 device=cuda  # on a GPU
    python benchmarks/speed.py sizes=1 diffusion_num_samples=128 diffusion_steps=10

Prints a table and writes benchmarks/results/speed.json (``out=PATH`` writes elsewhere).
Other key=value pairs are config overrides (any key of cfgs/config.yaml).
"""
from __future__ import annotations

import json
import os
import platform
import sys
import time

import numpy as np
import torch
from torch.utils.flop_counter import FlopCounterMode

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from mbdpo.agent import MBDPO  # noqa: E402
from mbdpo.config import num_params  # noqa: E402
from mbdpo.envs import make_env  # noqa: E402
from mbdpo.replay import EpisodeReplay  # noqa: E402
from mbdpo.trainers.online import fill_env_dims  # noqa: E402


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def timed(fn, device, reps: int, warmup: int = 5) -> float:
    """Median seconds of ``fn()`` over ``reps`` runs, after ``warmup`` runs (CUDA graphs are
    captured on the fourth call)."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(reps):
        sync(device)
        t = time.perf_counter()
        fn()
        sync(device)
        times.append(time.perf_counter() - t)
    return sorted(times)[len(times) // 2]


def matmul_gflops(device, n: int = 2048, reps: int = 5) -> float:
    a, b = torch.randn(n, n, device=device), torch.randn(n, n, device=device)
    return 2 * n ** 3 / timed(lambda: a @ b, device, reps) / 1e9


def make_cfg(overrides):
    from hydra import compose, initialize_config_dir

    from mbdpo.config import parse_cfg
    with initialize_config_dir(config_dir=os.path.join(ROOT, "cfgs"), version_base=None):
        return parse_cfg(compose(config_name="config", overrides=overrides))


def bench_size(size: int, overrides: list[str], online_steps: int) -> dict:
    cfg = make_cfg([f"model_size={size}"] + overrides)
    device = torch.device(cfg.device)
    env = make_env(cfg)
    fill_env_dims(cfg, env)
    torch.manual_seed(0)
    agent = MBDPO(cfg)
    params = num_params(agent.model) - num_params(agent.model.Qs_target)

    # replay with a few random episodes for realistic batches
    L = cfg.episode_lengths[0]
    buf = EpisodeReplay(3 * (L + 1), cfg.obs_shape, cfg.action_dim)
    for _ in range(2):
        obs = [env.reset()[0]]
        acts, rews = [torch.full((cfg.action_dim,), float("nan"))], [float("nan")]
        for _ in range(L):
            a = env.action_space.sample()
            o, r, *_ = env.step(a)
            obs.append(o)
            acts.append(torch.as_tensor(a))
            rews.append(r)
        buf.add_episode(torch.as_tensor(np.stack(obs)), torch.stack(acts), torch.tensor(rews))

    obs0 = torch.as_tensor(env.reset()[0]).unsqueeze(0)
    t0 = torch.tensor([False])
    act_s = timed(lambda: agent.act(obs0, t0), device, reps=5)
    eager, agent.plan_fn = agent.plan_fn, agent._plan  # count on the eager planner: a
    with FlopCounterMode(display=False) as fc:         # CUDA-graph replay dispatches no ops
        agent.act(obs0, t0)
    agent.plan_fn = eager
    act_flops = fc.get_total_flops()
    batch = buf.sample(cfg.batch_size, cfg.horizon)
    update_s = timed(lambda: agent.update(batch), device, reps=5)

    # a short online run: act, step the env, sample, update
    o = obs0
    sync(device)
    t = time.perf_counter()
    for i in range(online_steps):
        a = agent.act(o, torch.tensor([i == 0])).squeeze(0).cpu().numpy()
        ob, *_ = env.step(a)
        o = torch.as_tensor(ob).unsqueeze(0)
        agent.update(buf.sample(cfg.batch_size, cfg.horizon))
    sync(device)
    online_sps = online_steps / (time.perf_counter() - t)
    return {"model_size": size, "params": params, "act_ms": 1e3 * act_s,
            "update_ms": 1e3 * update_s, "env_steps_per_s": online_sps,
            "act_gflop": act_flops / 1e9, "planner_gflops": act_flops / act_s / 1e9,
            "K": cfg.diffusion_num_samples, "N": cfg.diffusion_steps,
            "batch_size": cfg.batch_size, "device": str(device)}


def main():
    sizes, overrides, online_steps = [1, 5], [], 20
    out = os.path.join(ROOT, "benchmarks", "results", "speed.json")
    for a in sys.argv[1:]:
        k, _, v = a.partition("=")
        if k == "sizes":
            sizes = [int(s) for s in v.strip("[]").split(",")]
        elif k == "online_steps":
            online_steps = int(v)
        elif k == "out":
            out = os.path.abspath(v)
        else:
            overrides.append(a)
    if not any(o.startswith("task=") for o in overrides):
        overrides.append("task=cartpole-balance")
    cfg = make_cfg(overrides)
    device = torch.device(cfg.device)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    gflops = matmul_gflops(device)
    rows = [bench_size(s, overrides, online_steps) for s in sizes]
    proc = (torch.cuda.get_device_name(device) if device.type == "cuda"
            else platform.processor() or platform.machine())
    print(f"\ndevice {device} ({proc}, "
          f"{torch.get_num_threads()} threads), fp32 matmul {gflops:.0f} GFLOP/s, "
          f"task {cfg.task}, planner K={rows[0]['K']} N={rows[0]['N']}, "
          f"batch {rows[0]['batch_size']}")
    head = (f"{'size':>5} {'params':>9} {'act ms':>9} {'update ms':>10} {'env steps/s':>12} "
            f"{'GFLOP/act':>10} {'planner GFLOP/s':>16} {'% of matmul':>12}")
    print(head)
    print("-" * len(head))
    for r in rows:
        print(f"{r['model_size']:>5} {r['params'] / 1e6:>8.2f}M {r['act_ms']:>9.1f} "
              f"{r['update_ms']:>10.1f} {r['env_steps_per_s']:>12.2f} {r['act_gflop']:>10.2f} "
              f"{r['planner_gflops']:>16.1f} {100 * r['planner_gflops'] / gflops:>11.0f}%")
    os.makedirs(os.path.dirname(out), exist_ok=True)
    with open(out, "w") as f:
        json.dump({"matmul_gflops": gflops, "device": str(device), "torch": torch.__version__,
                   "processor": proc,
                   "overrides": overrides,
                   "threads": torch.get_num_threads(), "rows": rows}, f, indent=1)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
