"""Prompts and their schedules over space and time: W_ip = time_p · pos_ip · size_i · sel_ip · w_p.

Positional prompts follow the Doorways post: each anchored prompt's weight is an interpolation of
the view centre's x, normalised over the anchored prompts. Best-match prompts and composition
prompts follow the Malazan post (Doorways, Malazan; docs/references.md). The factors that depend
on a view's geometry, pos and size, are `genart.prompt_weights`.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace

import torch

from genart.errors import UserError
from genart.prompt_weights import interpolate_positions

ANCHOR_X = {"left": -1.0, "center": 0.0, "right": 1.0}


@dataclass(frozen=True)
class Prompt:
    """One target: a text (or image path), its signed weight, stop, and where/when it applies."""

    text: str
    weight: float = 1.0
    stop: float = -math.inf
    anchor: float | None = None  # x in [-1, 1] for positional prompts, None = everywhere
    start: int = 0
    end: float = math.inf  # active while start <= step < end
    on: str = "all"  # all | detail | composition
    group: str | None = None  # best-match group name
    is_image: bool = False


def parse_prompt(spec: str) -> tuple[str, float, float]:
    """Split "text:weight:stop" as the reference VQGAN+CLIP does (weight 1, stop -inf by default)."""
    parts = spec.rsplit(":", 2)
    text, numbers = parts[0], parts[1:]
    values = [1.0, -math.inf]
    for k, field in enumerate(numbers):
        try:
            values[k] = float(field)
        except ValueError:
            raise UserError(
                f'The prompt "{spec}" has "{field}" where a number was expected. Prompts are '
                '"text", "text:weight" or "text:weight:stop" (e.g. "sea:0.5" or "sea:-1" to push '
                "away); if your text itself contains a colon, write it without one."
            ) from None
    if not text.strip():
        raise UserError(f'The prompt "{spec}" has no text. Write it as "text:weight:stop".')
    return text.strip(), values[0], values[1]


def split_prompts(specs: str | Sequence[str] | None) -> list[str]:
    """Accept "a|b" or a list of strings; drop empties."""
    if specs is None:
        return []
    items = (
        specs.split("|")
        if isinstance(specs, str)
        else [s for spec in specs for s in str(spec).split("|")]
    )
    return [s.strip() for s in items if s.strip()]


def render_template(template: str, subject: str, entrance: str) -> str:
    """Render "{entrance} to the {subject} realm", avoiding a doubled article ("the The Underworld")."""
    if re.search(r"\bthe\s+\{subject\}", template, flags=re.IGNORECASE):
        subject = re.sub(r"^the\s+", "", subject.strip(), flags=re.IGNORECASE)
    return template.format(subject=subject.strip(), entrance=entrance).strip()


def with_suffix(text: str, suffix: str) -> str:
    return f"{text} {suffix}".strip() if suffix else text


class PromptSchedule:
    """All prompts of a run, and the per-view weights W (N, P) they get at a step.

    `text` prompts apply to every view; anchored prompts (`left`/`center`/`right` or `anchors`)
    to detail views, by position; `composition` prompts only to composition windows;
    `best_match` prompts to detail views, each view taking only the selected one.
    """

    def __init__(
        self,
        text: str | Sequence[str] | None = None,
        suffix: str = "",
        images: Sequence[str] = (),
        left: str | None = None,
        center: str | None = None,
        right: str | None = None,
        anchors: Sequence[Mapping] | None = None,
        template: str = "{subject}",
        entrance: str = "entrance",
        interpolation: str = "linear",
        sharpness: float = 4.0,
        composition: str | Sequence[str] | None = None,
        prompts: Sequence[Mapping] | None = None,
        phases: Sequence[Mapping] | None = None,
        best_match: Mapping | None = None,
        size_weighting=None,
        literal: str | None = None,
    ):
        self.suffix, self.interpolation, self.sharpness = suffix or "", interpolation, sharpness
        self.size_weighting = size_weighting
        self.select = (best_match or {}).get("select", "best")
        if self.select not in ("best", "worst", "all"):
            raise UserError(
                f'prompts.best_match.select is "{self.select}"; use best, worst or all.'
            )
        found: list[Prompt] = []
        found += [self._text_prompt(s, on="all") for s in split_prompts(text)]
        if literal is not None and str(literal).strip():  # as written: no "|", no ":weight"
            found.append(Prompt(with_suffix(str(literal).strip(), self.suffix), on="all"))
        found += self._anchored(left, center, right, anchors, template, entrance)
        found += [self._text_prompt(s, on="composition") for s in split_prompts(composition)]
        found += [self._full_prompt(p) for p in prompts or ()]
        for phase in phases or ():
            window = {"start": int(phase.get("start", 0)), "end": phase.get("end", math.inf)}
            found += [
                replace(self._text_prompt(s, on="all"), **window)
                for s in split_prompts(phase["text"])
            ]
        for spec in split_prompts((best_match or {}).get("prompts")):
            found.append(replace(self._text_prompt(spec, on="detail"), group="best_match"))
        found += [self._image_prompt(s) for s in images or ()]
        if not found:
            raise UserError(
                'No prompt is set. Give one with prompts.text="a lighthouse in a storm" (several '
                'joined with "|"), or positional ones with prompts.left=… prompts.right=….'
            )
        self.prompts = found

    # -- building -----------------------------------------------------------------------------
    def _text_prompt(self, spec: str, on: str) -> Prompt:
        text, weight, stop = parse_prompt(spec)
        return Prompt(with_suffix(text, self.suffix), weight, stop, on=on)

    def _image_prompt(self, spec: str) -> Prompt:
        path, weight, stop = parse_prompt(spec)
        return Prompt(path, weight, stop, on="all", is_image=True)

    def _full_prompt(self, node: Mapping) -> Prompt:
        text, weight, stop = parse_prompt(str(node["text"]))
        fields = {
            k: node[k]
            for k in ("weight", "stop", "start", "end", "on", "anchor")
            if node.get(k) is not None
        }
        return Prompt(with_suffix(text, self.suffix), **{"weight": weight, "stop": stop, **fields})

    def _anchored(self, left, center, right, anchors, template, entrance) -> list[Prompt]:
        nodes = [
            {"subject": s, "x": ANCHOR_X[k]}
            for k, s in (("left", left), ("center", center), ("right", right))
            if s
        ]
        nodes += list(anchors or ())
        out = []
        for node in nodes:
            words = render_template(
                node.get("template", template), str(node["subject"]), node.get("entrance", entrance)
            )
            text, weight, stop = parse_prompt(words)
            out.append(
                Prompt(
                    with_suffix(text, self.suffix),
                    float(node.get("weight", weight)),
                    stop,
                    anchor=float(node["x"]),
                    on="detail",
                )
            )
        return out

    # -- per-step weights ---------------------------------------------------------------------
    @property
    def texts(self) -> list[str]:
        return [p.text for p in self.prompts]

    def signed_weights(self, device=None) -> torch.Tensor:
        return torch.tensor([p.weight for p in self.prompts], device=device)  # (P,)

    def stops(self, device=None) -> torch.Tensor:
        return torch.tensor([p.stop for p in self.prompts], device=device)  # (P,)

    def active(self, step: int, device=None) -> torch.Tensor:
        """time_p: 1 inside each prompt's [start, end) window."""
        return torch.tensor([float(p.start <= step < p.end) for p in self.prompts], device=device)

    def applies(self, views) -> torch.Tensor:
        """(N, P) 1 where prompt p may act on view i (detail / composition split)."""
        comp = views.composition[:, None].float()  # (N, 1)
        on = [p.on for p in self.prompts]
        detail_ok = torch.tensor([o in ("all", "detail") for o in on], device=comp.device).float()
        comp_ok = torch.tensor(
            [o in ("all", "composition") for o in on], device=comp.device
        ).float()
        return comp * comp_ok + (1 - comp) * detail_ok

    def positional(self, views) -> torch.Tensor:
        """pos (N, P): interpolated over anchored prompts for detail views; 1 for the others."""
        n, device = len(views.centres), views.centres.device
        pos = torch.ones(n, len(self.prompts), device=device)
        idx = [k for k, p in enumerate(self.prompts) if p.anchor is not None]
        if idx:
            anchors = torch.tensor([self.prompts[k].anchor for k in idx], device=device)
            pos[:, idx] = interpolate_positions(
                views.centres[:, 0].float(), anchors, self.interpolation, self.sharpness
            )
        return pos

    def anchor_mix(self, views) -> torch.Tensor:
        """(N, P): the positional mix of anchored prompts only (zero for the others)."""
        anchored = torch.tensor(
            [p.anchor is not None for p in self.prompts], device=views.centres.device
        )
        return self.positional(views) * anchored.float()

    def size_weights(self, views) -> torch.Tensor:
        """size(s_i) (N,): the size weighting on detail views, 1 on composition windows."""
        ones = torch.ones(len(views.sizes), device=views.sizes.device)
        if self.size_weighting is None:
            return ones
        return torch.where(
            views.composition, ones, self.size_weighting(views.sizes, views.composition)
        )

    def selection(
        self, sims: torch.Tensor | None, step: int
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """sel (N, P), and per view the prompt it matched best (or worst) among the contenders.

        Contenders are the prompts of `grouped` that are active at `step` (a story's later phase
        cannot win before it starts). In a best-match group only the winner is applied unless
        select=all; other counted prompts are only counted, never selected.
        """
        n = 1 if sims is None else sims.shape[0]
        sel = torch.ones(n, len(self.prompts), device=None if sims is None else sims.device)
        group = self._group()
        contenders = [
            k for k in self.grouped if self.prompts[k].start <= step < self.prompts[k].end
        ]
        if sims is None or not contenders:
            return sel, None
        scores = sims[:, contenders]
        pick = scores.argmin(1) if self.select == "worst" and group else scores.argmax(1)  # (N,)
        winners = torch.tensor(contenders, device=sel.device)[pick]  # (N,) prompt indices
        if group and self.select != "all":
            sel[:, group] = 0
            sel[torch.arange(n, device=sel.device), winners] = 1
        return sel, winners

    def weights(self, step: int, views, sims: torch.Tensor | None = None):
        """W (N, P) = time · pos · size · sel · w, and the best-match winners per view."""
        device = views.centres.device
        sel, winners = self.selection(sims, step)
        W = (
            self.active(step, device)[None]
            * self.applies(views)
            * self.positional(views)
            * self.size_weights(views)[:, None]
            * sel
            * self.signed_weights(device)[None]
        )
        return W, winners

    def _group(self) -> list[int]:
        return [k for k, p in enumerate(self.prompts) if p.group == "best_match"]

    @property
    def grouped(self) -> list[int]:
        """Indices of the best-match group, or of every counted prompt when there is no group."""
        return self._group() or [
            k for k, p in enumerate(self.prompts) if p.weight > 0 and p.on != "composition"
        ]
