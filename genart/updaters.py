"""How θ moves: an updater renders the image, asks the objective, and steps θ along its gradient.

Every updater is built as `updater(generator=…, autocast=…)` (its YAML is `_partial_`) and has
`step(objective, generator, step) -> out`, `state_dict()` and `load_state_dict(state)`, which the
checkpoint saves and resume restores. An optional `advice_on_nan` names the setting of its own to
change when the loss goes NaN/inf.
"""

from __future__ import annotations

from contextlib import nullcontext

import torch
from torch.profiler import record_function  # named ranges for genart.tools.bench; ~free unprofiled


class GradientUpdater:
    """A torch optimiser over the generator's θ (latent optimisation, as VQGAN+CLIP does it)."""

    advice_on_nan = "lower optimizer.lr"

    def __init__(self, optimizer, generator, autocast=nullcontext):
        self.optimizer = optimizer(
            params=generator.theta()
        )  # `optimizer` is a partial (conf/optimizer)
        self.params = list(generator.theta())
        self.autocast = autocast  # the run's: below fp32, for generators without their own hook

    def step(self, objective, generator, step: int) -> dict:
        """One forward / backward / optimiser step; the loss terms and the objective's stats."""
        with record_function("genart/generator"), self.autocast():
            image = generator().float()  # (1, 3, H, W) in [0, 1]
        total, terms, stats = objective(image, step)
        with record_function("genart/backward"):
            self.optimizer.zero_grad(set_to_none=True)
            if total.requires_grad:
                total.backward()
        with record_function("genart/optimizer"), torch.no_grad():
            self.optimizer.step()
            generator.post_step()
        return {"terms": terms, "total": total, **stats}

    def state_dict(self) -> dict:
        return self.optimizer.state_dict()

    def load_state_dict(self, state: dict) -> None:
        """Load, then check what torch does not: the groups' settings' types, the state's shapes."""
        groups = [
            {k: v for k, v in g.items() if k != "params"} for g in self.optimizer.param_groups
        ]
        self.optimizer.load_state_dict(state)
        for group, before in zip(self.optimizer.param_groups, groups, strict=True):
            for key, value in before.items():
                if type(group.get(key)) is not type(value):
                    raise ValueError(f"{key} is {group.get(key)!r}, this run's is {value!r}")
        for param in self.params:
            for name, value in self.optimizer.state.get(param, {}).items():
                if torch.is_tensor(value) and value.dim() and value.shape != param.shape:
                    raise ValueError(f"{name} is {tuple(value.shape)}, θ is {tuple(param.shape)}")
