"""Speed benchmark: act and update latency, environment steps/s of a short online run (act,
environment step, replay sample, update, in a loop; with 1 and with N environments acting
through one planner call), top-level aten operations per action (a
CPU-measurable stand-in for GPU kernel launches), and how close the planner runs to the
machine's fp32 and bf16 matrix-multiply throughput, for each model size and each variant.

    python benchmarks/speed.py                         # sizes 1 and 5, default planner
    python benchmarks/speed.py sizes=5,19 device=cuda  # on a GPU
    python benchmarks/speed.py sizes=1 diffusion_num_samples=128 diffusion_steps=10
    python benchmarks/speed.py variants=fp32,bf16+compile num_envs=1,4
    python benchmarks/speed.py sizes=5 variants=default seeds=1,4   # S seeds in one process

A variant is the update's precision (fp32 | bf16), with ``+bf16plan`` for plan_precision=bf16
(the planner's rollouts in bf16 too), ``+compile`` for compile=true and ``+graphs`` for
cuda_graphs=true (each off unless named), or ``default``: the settings as a run without speed
flags resolves them (on a GPU: compiled kernels in CUDA graphs; on the CPU: eager fp32).
``+ieee`` sets matmul_precision=highest: on a GPU float32 matmuls in IEEE float32 rather than
the default TF32 (no effect on the CPU). The
default list is fp32, bf16, fp32+compile, bf16+compile and bf16+bf16plan+compile, ``fp32``
first: the baseline (fp32 eager) that the ratio columns divide by, measured in the same run.
``seeds=1,4`` measures each variant with S seeds trained as one batched agent (one action
plans for all S, one update steps all S; ``steps/s`` counts every seed's steps, ``x seeds`` is
the ratio to the first count). ``kernels/act`` and ``kernels/upd`` count what one action and
one update launch, graphs bypassed (a replay launches the same kernels from one call): on a
GPU the profiler's CUDA kernels, on the CPU the top-level aten operations plus inductor's fused
kernels. Prints a table and writes benchmarks/results/speed.json (``out=PATH`` writes
elsewhere). Other key=value pairs are config overrides (any key of cfgs/config.yaml).
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

import torch._inductor.config as inductor_config  # noqa: E402

from mbdpo.agent import MBDPO, stack_seeds  # noqa: E402
from mbdpo.config import num_params  # noqa: E402
from mbdpo.envs import make_env  # noqa: E402
from mbdpo.execution import count_aten_ops, count_kernels  # noqa: E402
from mbdpo.replay import EpisodeReplay  # noqa: E402
from mbdpo.trainers.base import code_version  # noqa: E402
from mbdpo.trainers.task_dims import fill_env_dims  # noqa: E402


inductor_config.cpp.enable_kernel_profile = True  # CPU kernels named in the profiler


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


def matmul_gflops(device, dtype=torch.float32, n: int = 2048, reps: int = 5) -> float:
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    return 2 * n ** 3 / timed(lambda: a @ b, device, reps) / 1e9


def parse_variant(v: str) -> list[str]:
    precision, *flags = v.split("+")
    ieee = ["matmul_precision=highest"] if "ieee" in flags else []
    if precision == "default" and set(flags) <= {"ieee"}:
        return ieee
    if precision not in ("fp32", "bf16", "auto") or not set(flags) <= {"compile", "bf16plan",
                                                                        "graphs", "ieee"}:
        sys.exit(f"error: a variant is default, or fp32 or bf16 optionally with +bf16plan, "
                 f"+compile and +graphs, each optionally with +ieee; got {v!r}.")
    on = {True: "true", False: "false"}
    return [f"precision={precision}", f"compile={on['compile' in flags]}",
            f"cuda_graphs={on['graphs' in flags]}",
            f"plan_precision={'bf16' if 'bf16plan' in flags else 'fp32'}"] + ieee


# its own key=value settings (the others are settings of cfgs/config.yaml)
KEYS = ("sizes", "variants", "num_envs", "seeds", "online_steps", "out")


def make_cfg(overrides):
    from hydra import compose, initialize_config_dir

    from mbdpo.config import parse_cfg
    with initialize_config_dir(config_dir=os.path.join(ROOT, "cfgs"), version_base=None):
        return parse_cfg(compose(config_name="config", overrides=overrides))


def bench_size(size: int, variant: str, overrides: list[str], online_steps: int,
               num_envs: list[int], S: int = 1) -> dict:
    """One row: model ``size``, ``variant``, ``S`` seeds in one agent (times are of one call
    for all S; env steps/s counts every seed's steps)."""
    cfg = make_cfg([f"model_size={size}"] + overrides + parse_variant(variant))
    device = torch.device(cfg.device)
    env = make_env(cfg)
    fill_env_dims(cfg, env)
    torch.manual_seed(0)
    agent = MBDPO(cfg, seeds=list(range(1, S + 1)))
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

    obs0 = torch.as_tensor(env.reset()[0]).expand(S, 1, -1)  # one environment per seed
    t0 = torch.zeros(S, 1, dtype=torch.bool)

    def sample():
        return stack_seeds([buf.sample(cfg.batch_size, cfg.horizon) for _ in range(S)])
    t = time.perf_counter()
    agent.act(obs0, t0)  # compiles, with compile=true
    batch = sample()
    agent.update(batch)
    first_s = time.perf_counter() - t
    act_s = timed(lambda: agent.act(obs0, t0), device, reps=5)
    ops = count_aten_ops(lambda: agent.act(obs0, t0))
    graphed, agent.plan_fn = agent.plan_fn, agent._plan  # count without the graph: a
    kernels = count_kernels(lambda: agent.act(obs0, t0), device)  # replay dispatches no ops
    with FlopCounterMode(display=False) as fc:  # the flops of the eager planner
        agent.act(obs0, t0)
    agent.plan_fn = graphed
    act_flops = fc.get_total_flops()
    update_s = timed(lambda: agent.update(batch), device, reps=5)
    graphed, agent.update_fn = agent.update_fn, agent._update  # the same, for one update
    kernels_update = count_kernels(lambda: agent.update(batch), device)
    agent.update_fn = graphed

    # a short online run with n environments: act for all n at once, step them, sample,
    # update once per environment step (utd 1)
    online_sps = {}
    for n in num_envs:  # n environments per seed
        envs = [env] + [make_env(cfg, seed=cfg.seed + i) for i in range(1, n * S)]
        o = torch.as_tensor(np.stack([e.reset()[0] for e in envs])).view(S, n, -1)
        first = torch.ones(S, n, dtype=torch.bool)
        agent.act(o, first)  # with compile=true: compiles for n environments
        iters = max(1, online_steps // n)
        sync(device)
        t = time.perf_counter()
        for i in range(iters):
            a = agent.act(o, first if i == 0 else ~first).cpu().numpy().reshape(S * n, -1)
            o = torch.as_tensor(np.stack([e.step(ai)[0] for e, ai in zip(envs, a)])).view(
                S, n, -1)
            for _ in range(n):
                agent.update(sample())
        sync(device)
        online_sps[n] = S * n * iters / (time.perf_counter() - t)
    return {"model_size": size, "variant": variant, "seeds": S, "params": params,
            "act_ms": 1e3 * act_s,
            "update_ms": 1e3 * update_s, "env_steps_per_s": online_sps[num_envs[0]],
            "env_steps_per_s_by_num_envs": online_sps,
            "aten_ops_per_act": ops, "kernels_per_act": kernels,
            "kernels_per_update": kernels_update, "first_call_s": first_s,
            "compile": agent.paths.compile, "cuda_graphs": agent.paths.graphs,
            "act_gflop": act_flops / 1e9, "planner_gflops": act_flops / act_s / 1e9,
            "K": cfg.diffusion_num_samples, "N": cfg.diffusion_steps,
            "batch_size": cfg.batch_size, "device": str(device)}


def main():
    sizes, overrides, online_steps, num_envs, seeds = [1, 5], [], 20, [1, 4], [1]
    variants = ["fp32", "bf16", "fp32+compile", "bf16+compile", "bf16+bf16plan+compile"]
    out = os.path.join(ROOT, "benchmarks", "results", "speed.json")
    from mbdpo.cli import check_benchmark_args
    check_benchmark_args(sys.argv[1:], KEYS)
    for a in sys.argv[1:]:
        k, _, v = a.partition("=")
        if k == "sizes":
            sizes = [int(s) for s in v.strip("[]").split(",")]
        elif k == "variants":
            variants = [x for x in v.strip("[]").split(",") if x]
            for x in variants:
                parse_variant(x)
        elif k == "num_envs":
            num_envs = [int(x) for x in v.strip("[]").split(",") if x]
        elif k == "seeds":
            seeds = [int(x) for x in v.strip("[]").split(",") if x]
        elif k == "online_steps":
            online_steps = int(v)
        elif k == "out":
            out = os.path.abspath(v)
        elif k in ("precision", "plan_precision", "compile", "cuda_graphs", "matmul_precision"):
            sys.exit(f"error: {k} is set per variant: pass variants=... (e.g. bf16+compile).")
        else:
            overrides.append(a)
    if not any(o.startswith("task=") for o in overrides):
        overrides.append("task=cartpole-balance")
    cfg = make_cfg(overrides)
    device = torch.device(cfg.device)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    gemm = {"fp32": matmul_gflops(device), "bf16": matmul_gflops(device, torch.bfloat16)}
    rows = []
    for s in sizes:
        for v in variants:
            for S in seeds:
                rows.append(bench_size(s, v, overrides, online_steps, num_envs, S))
                r = rows[-1]
                print(f"  size {s} {v} seeds {S}: act {r['act_ms']:.1f} ms, update "
                      f"{r['update_ms']:.1f} ms, {r['env_steps_per_s']:.2f} env steps/s",
                      flush=True)
    proc = (torch.cuda.get_device_name(device) if device.type == "cuda"
            else platform.processor() or platform.machine())
    print(f"\ndevice {device} ({proc}, {torch.get_num_threads()} threads), matmul "
          f"{gemm['fp32']:.0f} GFLOP/s fp32, {gemm['bf16']:.0f} bf16, task {cfg.task}, "
          f"planner K={rows[0]['K']} N={rows[0]['N']}, batch {rows[0]['batch_size']}; "
          f"x = time / the size's first variant's, same run")
    head = (f"{'size':>4} {'variant':>21} {'seeds':>5} {'act ms':>8} {'x':>5} {'update ms':>10} "
            f"{'x':>5} {'steps/s':>8} {'x seeds':>7} {'x' + str(num_envs[-1]) + ' envs':>8} "
            f"{'kernels/act':>12} {'kernels/upd':>12} "
            f"{'first call s':>13} {'GFLOP/act':>10} "
            f"{'GFLOP/s':>8} {'% fp32 mm':>10} {'% bf16 mm':>10}")
    print(head)
    print("-" * len(head))
    for r in rows:
        base = next(b for b in rows if b["model_size"] == r["model_size"])
        one = next(b for b in rows if b["model_size"] == r["model_size"]
                   and b["variant"] == r["variant"])  # the first seeds count of the variant
        r["act_ratio"] = r["act_ms"] / base["act_ms"]
        r["update_ratio"] = r["update_ms"] / base["update_ms"]
        # total env steps/s against the variant's first seeds count (seeds=1,4: S=4 / S=1)
        r["steps_ratio_vs_first_seeds"] = r["env_steps_per_s"] / one["env_steps_per_s"]
        print(f"{r['model_size']:>4} {r['variant']:>21} {r['seeds']:>5} {r['act_ms']:>8.1f} "
              f"{r['act_ratio']:>5.2f} {r['update_ms']:>10.1f} {r['update_ratio']:>5.2f} "
              f"{r['env_steps_per_s']:>8.2f} {r['steps_ratio_vs_first_seeds']:>7.2f} "
              f"{r['env_steps_per_s_by_num_envs'][num_envs[-1]]:>8.2f} "
              f"{r['kernels_per_act']:>12,} {r['kernels_per_update']:>12,} "
              f"{r['first_call_s']:>13.1f} {r['act_gflop']:>10.2f} {r['planner_gflops']:>8.1f} "
              f"{100 * r['planner_gflops'] / gemm['fp32']:>9.0f}% "
              f"{100 * r['planner_gflops'] / gemm['bf16']:>9.0f}%")
    os.makedirs(os.path.dirname(out), exist_ok=True)
    with open(out, "w") as f:
        json.dump({"matmul_gflops": gemm["fp32"], "matmul_gflops_bf16": gemm["bf16"],
                   "device": str(device), "torch": torch.__version__, "processor": proc,
                   "commit": code_version(),
                   "overrides": overrides, "variants": variants, "num_envs": num_envs,
                   "seeds": seeds,
                   "threads": torch.get_num_threads(), "rows": rows}, f, indent=1)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
