"""docs/errors.md: the catalogue of user mistakes and the one sentence each gets. Every case
runs here, through the real scripts, against a work_dir that holds a finished run: each must
exit non-zero with one ``error:`` line, no traceback, and leave every saved file as it was.
The page is generated from these runs; when it is out of date the test rewrites it (check
the diff in) and fails."""
import os
import re
import shutil
from concurrent.futures import ThreadPoolExecutor

import pytest
import torch

from tests.conftest import ROOT, TINY, cli, digests

NET = [a for a in TINY if not a.startswith(("eval_episodes", "log_freq"))]
DOC = os.path.join(ROOT, "docs", "errors.md")

# (the mistake, script, arguments); <work>: a work_dir holding a finished mw-reach run,
# <ckpt>: its final.pt, <file>: a text file
CASES = [
    ("a misspelt task", "train.py", ["task=cartpole-balanse"]),
    ("another misspelt task", "train.py", ["task=dog-rn"]),
    ("a model size that does not exist", "train.py", ["model_size=3"]),
    ("a negative budget", "train.py", ["steps=-5"]),
    ("an observation type that does not exist", "train.py", ["obs=depth"]),
    ("a device that does not exist", "train.py", ["device=tpu"]),
    ("a task set without multitask=true", "train.py", ["task=mt30"]),
    ("multitask=true with a single task", "train.py", ["task=cartpole-balance",
                                                       "multitask=true"]),
    ("pixels for a task that has none here", "train.py", ["task=lift-cube", "obs=rgb"]),
    ("more elites than samples", "train.py", ["diffusion_num_elites=1000"]),
    ("a misspelt setting", "train.py", ["stepz=10"]),
    ("an unknown setting added with +", "train.py", ["+unknown_key=3"]),
    ("a known setting added with +", "train.py", ["+steps=5"]),
    ("a zero planning horizon", "train.py", ["plan_horizon=0"]),
    ("a score network planning another horizon", "train.py",
     ["use_score_network=true", "plan_horizon=5"]),
    ("a compile setting that is not auto, true or false", "train.py", ["compile=fast"]),
    ("a precision that does not exist", "train.py", ["precision=fp16"]),
    ("a planner precision that does not exist", "train.py", ["plan_precision=half"]),
    ("zero updates per step", "train.py", ["utd=0"]),
    ("zero environments", "train.py", ["num_envs=0"]),
    ("an exp_name that leaves the run folder", "train.py", ["exp_name=../../x"]),
    ("an empty exp_name", "train.py", ["exp_name="]),
    ("an unquoted non-ASCII value", "train.py", ["exp_name=é"]),
    ("a single value bin", "train.py", ["num_bins=1"]),
    ("a seed that is not a number", "train.py", ["seed=abc"]),
    ("seeds that are not numbers", "train.py", ["seeds=[1,x]"]),
    ("the same seed twice", "train.py", ["seeds=[1,1]"]),
    ("several seeds in one multi-task offline run", "train.py",
     ["task=mt30", "multitask=true", "seeds=[1,2]"]),
    ("several seeds for an evaluation", "evaluate.py", ["checkpoint=<ckpt>", "seeds=[1,2]"]),
    ("a horizon as long as the episode", "train.py", ["task=mw-reach", "horizon=100"]),
    ("a learning rate that diverges", "train.py", ["lr=100"]),
    ("a discount weight rho above 1", "train.py", ["rho=2"]),
    ("a value range upside down", "train.py", ["vmin=10", "vmax=5"]),
    ("a Polyak rate above 1", "train.py", ["tau=2"]),
    ("a dropout of more than everything", "train.py", ["dropout=1.5"]),
    ("an energy clip of zero", "train.py", ["energy_clip=0"]),
    ("a log-std range upside down", "train.py", ["log_std_min=5", "log_std_max=-5"]),
    ("an empty work_dir", "train.py", ["work_dir="]),
    ("a negative task embedding size", "train.py", ["task_dim=-1"]),
    ("an empty batch", "train.py", ["batch_size=0"]),
    ("no evaluation episodes", "train.py", ["eval_episodes=0"]),
    ("a single denoising step", "train.py", ["diffusion_steps=1"]),
    ("a single Q-function", "train.py", ["num_q=1"]),
    ("a latent size SimNorm cannot split", "train.py", ["latent_dim=30"]),
    ("zero threads", "train.py", ["threads=0"]),
    ("a yes/no setting given another word", "train.py", ["async_envs=maybe"]),
    ("offline pretraining without data", "train.py", ["task=mt30", "multitask=true"]),
    ("offline pretraining from a folder that does not exist", "train.py",
     ["task=mt30", "multitask=true", "data_dir=/nonexistent/mt30"]),
    ("a work_dir that is a file", "train.py", ["task=mw-reach", "work_dir=<file>"]),
    ("a work_dir that cannot be created", "train.py", ["task=mw-reach", "work_dir=/proc/x"]),
    ("a new run where a run exists (forgot resume=true)", "train.py",
     ["task=mw-reach", "steps=200", "work_dir=<work>", "exp_name=done"]),
    ("resume with another network size", "train.py",
     ["task=mw-reach", "steps=400", "work_dir=<work>", "exp_name=done", "resume=true",
      *[a for a in NET if not a.startswith("mlp_dim")], "mlp_dim=128"]),
    ("evaluate a checkpoint that does not exist", "evaluate.py",
     ["task=mw-reach", "checkpoint=/nonexistent/final.pt"]),
    ("evaluate without a checkpoint", "evaluate.py", ["task=mt30"]),
    ("evaluate a file that is not a checkpoint", "evaluate.py",
     ["task=mw-reach", "checkpoint=<file>"]),
    ("evaluate with another network size", "evaluate.py",
     ["task=mw-reach", "checkpoint=<ckpt>", "mlp_dim=128"]),
    ("evaluate with another model_size", "evaluate.py",
     ["task=mw-reach", "checkpoint=<ckpt>", "model_size=5"]),
    ("evaluate on a task of other sizes", "evaluate.py",
     ["task=cartpole-balance", "checkpoint=<ckpt>", "other_task=true"]),
    ("evaluate on another task of the same sizes", "evaluate.py",
     ["task=mw-push", "checkpoint=<ckpt>"]),
    ("evaluate a checkpoint with a tensor of another shape", "evaluate.py",
     ["task=mw-reach", "checkpoint=<shape>"]),
    ("evaluate a checkpoint whose weights are NaN", "evaluate.py",
     ["task=mw-reach", "checkpoint=<nan>"]),
    ("resume a run whose last checkpoint holds NaN weights", "train.py",
     ["task=mw-reach", "steps=400", "work_dir=<work>", "exp_name=nan", "resume=true", *NET]),
    ("evaluate a single-task checkpoint on a task set", "evaluate.py",
     ["task=mt30", "checkpoint=<ckpt>"]),
    ("fine-tune without a checkpoint", "offline_to_online.py", ["off2on_task=walker-run"]),
    ("fine-tune a single-task checkpoint", "offline_to_online.py",
     ["off2on_task=walker-run", "checkpoint=<ckpt>"]),
    ("fine-tune into a folder that cannot be written", "offline_to_online.py",
     ["off2on_task=walker-run", "checkpoint=<ckpt>", "save_path=/proc/x"]),
    ("plot a curve file with a line that is not numbers", "plot.py", ["<badcsv>", "--out",
                                                                        "<out>"]),
    ("plot a curve file without rows", "plot.py", ["<emptycsv>", "--out", "<out>"]),
    ("plot with zero panels per row", "plot.py", ["<badcsv>", "--cols", "0", "--out", "<out>"]),
    ("plot into a folder that cannot be written", "plot.py", ["<badcsv>", "--out",
                                                               "/proc/x/plot"]),
    ("make a dataset in a folder that cannot be written", "make_dataset.py",
     ["task=mt30", "out=/proc/x"]),
    ("make a dataset of no episodes", "make_dataset.py",
     ["task=mt30", "out=<out>", "episodes_per_task=0"]),
    ("prepare a dataset folder that does not exist", "prepare_dataset.py",
     ["data_dir=/nonexistent/mt30"]),
]


def render(results) -> str:
    lines = [
        "# Mistakes and what they get",
        "",
        "Generated by `tests/test_errors.py`, which runs every case below through the real "
        "scripts against a work_dir holding a finished run: each exits with status 2 and this "
        "one line on stderr, prints no traceback and changes no saved file. `<work>` is such a "
        "work_dir, `<ckpt>` its `final.pt`, `<file>` a text file, `<shape>` and `<nan>` "
        "copies of `<ckpt>` with one tensor cut short or set to NaN (`<work>`'s run `nan` "
        "has such a `latest.pt`), `<badcsv>` and `<emptycsv>` curve files with a line that is "
        "not numbers and without rows. Settings left out are the defaults of "
        "`cfgs/config.yaml`.",
        "",
        "| # | Mistake | Command | What you get |",
        "|---|---|---|---|",
    ]
    for i, ((what, script, args), line) in enumerate(results, 1):
        cmd = f"python scripts/{script} {' '.join(args)}".replace("|", "\\|")
        lines.append(f"| {i} | {what} | `{cmd}` | {line.replace('|', chr(92) + '|')} |")
    return "\n".join(lines) + "\n"


@pytest.mark.slow
def test_every_mistake_gets_one_sentence_and_changes_nothing(tmp_path):
    work = str(tmp_path / "work")
    cli("train.py", "task=mw-reach", "steps=200", "seed_steps=100", "eval_freq=200",
        "eval_episodes=1", f"work_dir={work}", "exp_name=done", *NET)
    ckpt = os.path.join(work, "mw-reach", "1", "done", "models", "final.pt")
    text = str(tmp_path / "notes.txt")
    with open(text, "w") as f:
        f.write("not a checkpoint\n")
    # checkpoints that do not fit: a tensor of another shape, NaN weights (and a run folder
    # whose latest.pt holds them)
    state = torch.load(ckpt, weights_only=True)
    model = state["agent"]["model"]
    key = next(k for k in model if k.startswith("dynamics") and model[k].dim() == 3)
    shape, nan = str(tmp_path / "shape.pt"), str(tmp_path / "nan.pt")
    torch.save({**state, "agent": {**state["agent"], "model": {
        **model, key: model[key][:, :-1]}}}, shape)
    torch.save({**state, "agent": {**state["agent"], "model": {
        **model, key: model[key].clone().fill_(float("nan"))}}}, nan)
    done = os.path.join(work, "mw-reach", "1", "done")
    shutil.copytree(done, os.path.join(work, "mw-reach", "1", "nan"))
    latest = os.path.join(work, "mw-reach", "1", "nan", "models", "latest.pt")
    saved = torch.load(latest, weights_only=True)
    saved["agent"]["model"][key] = saved["agent"]["model"][key].clone().fill_(float("nan"))
    os.remove(latest)
    torch.save(saved, latest)
    bad_csv, empty_csv = str(tmp_path / "walker-walk.csv"), str(tmp_path / "cheetah-run.csv")
    with open(bad_csv, "w") as f:
        f.write("step,reward,seed\n0,1.5,1\n1e5,n/a,1\n")
    with open(empty_csv, "w") as f:
        f.write("step,reward,seed\n")
    before = digests(work)
    subst = {"<work>": work, "<ckpt>": ckpt, "<file>": text, "<shape>": shape, "<nan>": nan,
             "<badcsv>": bad_csv, "<emptycsv>": empty_csv, "<out>": str(tmp_path / "plot")}

    def run(case):
        what, script, args = case
        real = [re.sub("|".join(subst), lambda m: subst[m.group()], a) for a in args]
        if script == "train.py" and not any(a.startswith("work_dir=") for a in real):
            real.append(f"work_dir={tmp_path / 'fresh'}")
        out = cli(script, *real, check=False, timeout=300)
        return out, real

    threads = torch.get_num_threads()
    with ThreadPoolExecutor(2) as pool:
        outs = list(pool.map(run, CASES))
    torch.set_num_threads(threads)
    results, problems = [], []
    for (what, script, args), (out, real) in zip(CASES, outs):
        errors = [ln for ln in out.stderr.splitlines() if ln.startswith("error: ")]
        if out.returncode != 2 or "Traceback" in out.stderr or len(errors) != 1:
            problems.append(f"{what}: {script} {' '.join(real)} -> {out.returncode}\n"
                            f"{out.stderr[-2000:]}")
            continue
        line = errors[0][len("error: "):]
        for key, value in subst.items():
            line = line.replace(value, key)
        results.append(((what, script, args), line.replace(str(tmp_path / "fresh"), "logs")))
    assert not problems, "\n\n".join(problems)
    assert digests(work) == before
    assert len(results) >= 40
    doc = render(results)
    current = open(DOC).read() if os.path.exists(DOC) else ""
    if doc != current:
        with open(DOC, "w") as f:
            f.write(doc)
        pytest.fail("docs/errors.md was out of date and has been rewritten: commit it.")
