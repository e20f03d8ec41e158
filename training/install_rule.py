"""Champion or challenger: install a retrained model only when it is better beyond chance.

Both models are scored on the very same photos, so the comparison is paired: photos both get right or
both get wrong say nothing about which is better; only the discordant ones do (the challenger right
and the model in use wrong: `gained`, the reverse: `lost`). If the challenger were no better, each
discordant photo would be a coin flip, so the exact conditional McNemar test asks how likely it is to
gain at least `gained` of the `gained + lost` (a one-sided binomial test at p = 0.5; exact2x2's
mcnemar.exact and SAS PROC POWER "conditional McNemar" describe the same test). A one-photo win on 30
photos (p = 0.5) is not a win; 5 gained and none lost (p = 1/32) is. On the base test set the
challenger must not lose more than `base_tolerance` points (net: lost minus gained, over the photos):
learning the line must not cost the shapes the model already knew.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from training.metrics import drop_p_value

ALPHA = 0.05
BASE_TOLERANCE = 1.0  # accuracy points the challenger may lose on the base test set


@dataclass(frozen=True)
class Paired:
    """Two models' right/wrong on the same photos."""

    n: int
    current_right: int
    challenger_right: int
    gained: int  # challenger right, current wrong
    lost: int  # challenger wrong, current right

    @classmethod
    def of(cls, current: np.ndarray, challenger: np.ndarray) -> Paired:
        cur, new = np.asarray(current, bool), np.asarray(challenger, bool)
        if cur.shape != new.shape:
            raise ValueError(f"paired scores need the same photos: {cur.shape} vs {new.shape}")
        return cls(int(cur.size), int(cur.sum()), int(new.sum()), int(np.sum(new & ~cur)), int(np.sum(cur & ~new)))

    @property
    def current_accuracy(self) -> float:
        return self.current_right / self.n if self.n else 0.0

    @property
    def challenger_accuracy(self) -> float:
        return self.challenger_right / self.n if self.n else 0.0

    @property
    def points(self) -> float:
        """The challenger's accuracy minus the current model's, in points."""
        return (self.gained - self.lost) / self.n * 100 if self.n else 0.0

    def win_p_value(self) -> float:
        """One-sided exact McNemar: P(at least `gained` of the discordant photos | no better)."""
        return drop_p_value(self.gained, self.lost)

    def as_dict(self) -> dict:
        return {**asdict(self), "current_accuracy": round(self.current_accuracy, 6),
                "challenger_accuracy": round(self.challenger_accuracy, 6), "points": round(self.points, 3),
                "win_p_value": round(self.win_p_value(), 6)}


@dataclass(frozen=True)
class Decision:
    install: bool
    reason: str  # one line: why the challenger goes in, or why the current model stays
    field_p_value: float
    base_points: float | None

    def as_dict(self) -> dict:
        return asdict(self)


def decide(field: Paired, base: Paired | None, alpha: float = ALPHA,
           base_tolerance: float = BASE_TOLERANCE) -> Decision:
    """Install when the field win is beyond chance (p < alpha) and the base test loses at most
    `base_tolerance` points; otherwise keep the current model and say why."""
    if not 0 < alpha < 1 or base_tolerance < 0:
        raise ValueError(f"alpha must be in (0, 1) and the base tolerance >= 0, not {alpha} and {base_tolerance}")
    p = field.win_p_value()
    base_points = base.points if base is not None and base.n else None
    counts = (f"field test {field.challenger_accuracy:.1%} vs {field.current_accuracy:.1%} on {field.n} photos, "
              f"{field.gained} gained and {field.lost} lost, one-sided exact McNemar p = {p:.3g}")
    if not field.n:
        return Decision(False, "kept the current model: no field test photos show the challenger is better",
                        p, base_points)
    why = []
    if p >= alpha:
        why.append(f"the challenger is not better beyond chance ({counts}; needs p < {alpha})")
    if base is not None and base_points is not None and -base_points > base_tolerance:
        why.append(f"it loses {-base_points:.1f} points on the base test set ({base.challenger_accuracy:.1%} vs "
                   f"{base.current_accuracy:.1%} on {base.n} photos; tolerance {base_tolerance})")
    if why:
        return Decision(False, "kept the current model: " + "; and ".join(why), p, base_points)
    base_text = f"; base test {base_points:+.1f} points" if base_points is not None else "; no base test set"
    return Decision(True, f"the challenger wins: {counts}{base_text}", p, base_points)
