"""What every output type shares: the runtime interface and the base of its settings."""

from __future__ import annotations

from typing import Any, Protocol

from pydantic import BaseModel, ConfigDict, Field, field_validator

from sorter.verdict import VERDICTS

ALL_DECIDED = ["fresh", "rotten", "uncertain"]  # the verdicts an output fires on unless it says otherwise


class Output(Protocol):
    name: str

    def send(self, event: dict[str, Any]) -> None:
        """Deliver one decision; raise on failure (the dispatcher retries)."""
        ...

    def close(self) -> None: ...


class OutputConfig(BaseModel):
    """The settings of one output: its own keys plus the verdicts it fires on (a typo would never fire)."""

    model_config = ConfigDict(extra="forbid")
    verdicts: list[str] = Field(default_factory=lambda: list(ALL_DECIDED))

    @field_validator("verdicts")
    @classmethod
    def _known(cls, value: list[str]) -> list[str]:
        wrong = [v for v in value if v not in VERDICTS]
        if wrong:
            raise ValueError(f"not a verdict: {', '.join(map(repr, wrong))} (verdicts are {', '.join(VERDICTS)})")
        return value
