"""The random streams of S seeds trained in one process.

Every random number the agent draws (the planner's candidates, the policy prior's samples,
the energy negatives, the Q pair, dropout, image shifts, the exploration noise) comes from
here, with a leading seed dimension: ``randn(*shape)`` is (S, *shape).

- One seed (an ordinary run): torch's default generator, which the run seeds with its seed and
  its checkpoints save, as it always has. Compiled code and CUDA graphs draw from it too, so
  the compiled and graphed paths use the same numbers as eager (inductor's
  ``fallback_random``).
- S seeds: row s comes from seed s's own generator, seeded ``seeds[s]``, so that seed s of a
  batched run draws exactly the numbers the single run of seed s draws (its default generator
  seeded ``seeds[s]``). Inside compiled code (torch.compile cannot trace a draw from an
  explicit generator) and while a CUDA graph is recorded, the S rows come from torch's
  default generator instead: the same distributions, other numbers.
"""
from __future__ import annotations

import torch


class Noise:
    def __init__(self, seeds, device="cpu"):
        self.seeds = [int(s) for s in seeds]
        self.device = torch.device(device)
        # one seed: torch's default generator (no generator of its own)
        self.generators = [] if len(self.seeds) == 1 else [
            torch.Generator(self.device).manual_seed(s) for s in self.seeds]

    def __len__(self) -> int:
        return len(self.seeds)

    def own_streams(self) -> bool:
        """Whether draws now come from the seeds' own generators (several seeds, eager code,
        no graph capture)."""
        if len(self.seeds) == 1 or torch.compiler.is_compiling():
            return False
        return not (self.device.type == "cuda" and torch.cuda.is_current_stream_capturing())

    def _draw(self, fn, shape, **kw):
        kw.setdefault("device", self.device)
        if not self.own_streams():
            return fn((len(self.seeds), *shape), **kw)
        rows = [fn(tuple(shape), generator=g, **kw) for g in self.generators]
        return rows[0].unsqueeze(0) if len(rows) == 1 else torch.stack(rows)

    def randn(self, *shape, dtype=None, device=None) -> torch.Tensor:
        return self._draw(torch.randn, shape, dtype=dtype, device=device or self.device)

    def rand(self, *shape, dtype=None, device=None) -> torch.Tensor:
        return self._draw(torch.rand, shape, dtype=dtype, device=device or self.device)

    def randint(self, low: int, high: int, shape, dtype=None, device=None) -> torch.Tensor:
        kw = {"device": device or self.device}
        if dtype is not None:
            kw["dtype"] = dtype
        if not self.own_streams():
            return torch.randint(low, high, (len(self.seeds), *shape), **kw)
        rows = [torch.randint(low, high, tuple(shape), generator=g, **kw)
                for g in self.generators]
        return rows[0].unsqueeze(0) if len(rows) == 1 else torch.stack(rows)

    def randn_like(self, x: torch.Tensor) -> torch.Tensor:
        """Like ``torch.randn_like`` for x (S, ...): row s from seed s's stream."""
        return self.randn(*x.shape[1:], dtype=x.dtype, device=x.device)

    def rand_like(self, x: torch.Tensor) -> torch.Tensor:
        return self.rand(*x.shape[1:], dtype=x.dtype, device=x.device)

    # -- state (checkpoints) ---------------------------------------------------------------
    def state_dict(self) -> list[torch.Tensor]:
        """The seeds' generator states (empty for one seed: the default generator's state is
        the run's, saved with the checkpoint's other random streams)."""
        return [g.get_state() for g in self.generators]

    def load_state_dict(self, states) -> None:
        if len(states) != len(self.generators):
            raise ValueError(f"the checkpoint holds the random streams of {len(states)} "
                             f"seeds but this agent has {len(self.generators)}")
        for g, st in zip(self.generators, states):
            g.set_state(st)

    def fork(self):
        """A context in which draws leave the seeds' streams as they were (diagnostics; the
        default generator needs ``torch.random.fork_rng`` besides)."""
        return _Fork(self)


class _Fork:
    def __init__(self, noise: Noise):
        self.noise = noise

    def __enter__(self):
        self.saved = self.noise.state_dict()

    def __exit__(self, *exc):
        self.noise.load_state_dict(self.saved)
