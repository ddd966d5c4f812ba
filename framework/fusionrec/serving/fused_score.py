"""The fused score that orders recommendations: one number per (user, item) from the tasks' served scores.

A spec is a mapping ``{task: weight}`` or ``{task: {weight: w, offset: c}}`` (offset defaults to 0):

- ``product``: ``prod_t (s_t + c_t) ** w_t``, e.g. ``p_click * p_like^0.5 * (1 + watch_time)^0.2``;
  a base below 0 counts as 0, so the score stays real.
- ``sum``: ``sum_t w_t * (s_t + c_t)``.

It lives in :mod:`fusionrec.serving` because a scoring service ranks with it too: it works on numpy
arrays and torch tensors alike and imports neither (nor PyYAML until a spec comes as text).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping

from fusionrec.errors import ConfigError

COMBINATIONS = ("product", "sum")


@dataclass(frozen=True)
class Term:
    weight: float
    offset: float = 0.0


@dataclass(frozen=True)
class FusedScore:
    """``terms``: ``{task: Term}``; ``combine``: ``product`` or ``sum``."""

    terms: dict[str, Term]
    combine: str = "product"

    @classmethod
    def parse(cls, spec: str | Mapping[str, Any], combine: str, tasks: list[str], key: str = "--score"
              ) -> "FusedScore":
        """``spec``: the mapping, or its YAML/JSON text; ``tasks``: the checkpoint's tasks."""
        if isinstance(spec, str):
            import yaml

            try:
                spec = yaml.safe_load(spec)
            except yaml.YAMLError as error:
                raise ConfigError(f"{key}: not YAML: {str(error).splitlines()[0]}") from None
        if not isinstance(spec, Mapping) or not spec:
            raise ConfigError(f"{key}: expected a mapping of task to weight, e.g. '{{click: 1, like: 0.5}}', "
                              f"got {spec!r}")
        if combine not in COMBINATIONS:
            raise ConfigError(f"--combine: expected one of {', '.join(COMBINATIONS)}, got {combine!r}")
        terms = {}
        for task, value in spec.items():
            where = f"{key}.{task}"
            if task not in tasks:
                raise ConfigError(f"{where}: the checkpoint has no task {task!r}; tasks: {', '.join(tasks)}")
            if isinstance(value, Mapping):
                unknown = sorted(set(value) - {"weight", "offset"})
                if unknown or "weight" not in value:
                    raise ConfigError(f"{where}: expected {{weight: NUMBER, offset: NUMBER}}, got {dict(value)!r}")
                weight, offset = value["weight"], value.get("offset", 0.0)
            else:
                weight, offset = value, 0.0
            for name, number in (("weight", weight), ("offset", offset)):
                if not isinstance(number, (int, float)) or isinstance(number, bool):
                    raise ConfigError(f"{where}: {name} must be a number, got {number!r}")
            terms[str(task)] = Term(float(weight), float(offset))
        return cls(terms, combine)

    def as_dict(self) -> dict[str, Any]:
        """The plain-data form a bundle's manifest stores (``fused_score``); ``parse`` reads its ``terms`` back."""
        return {"terms": {task: {"weight": term.weight, "offset": term.offset} for task, term in self.terms.items()},
                "combine": self.combine}

    def __call__(self, scores: Mapping[str, Any]) -> Any:
        """``{task: [N]}`` served scores (numpy arrays or torch tensors) -> ``[N]`` of the same kind."""
        for task in self.terms:
            if scores[task].ndim != 1:
                raise ConfigError(f"--score.{task}: task {task!r} serves {scores[task].shape[-1]} scores per row "
                                  f"(one per class); only tasks with one score per row can be fused")
        parts = [(scores[task] + term.offset, term.weight) for task, term in self.terms.items()]
        if self.combine == "sum":
            return sum(weight * part for part, weight in parts)
        fused = None
        for part, weight in parts:
            factor = part.clip(min=0) ** weight
            fused = factor if fused is None else fused * factor
        return fused
