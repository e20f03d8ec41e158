"""The keys of a settings model, as a config file spells them (`outputs.webhook.url`)."""

from __future__ import annotations

from pydantic import BaseModel


def settings_keys(model: type[BaseModel], prefix: str = "") -> list[str]:
    """Every leaf key under `model`; an output's `type` (the discriminator of `[[outputs.targets]]`, not
    a setting) aside."""
    keys = []
    for name, field in model.model_fields.items():
        if name == "type" and prefix.startswith("outputs."):
            continue
        ann = field.annotation
        sub = next((a for a in (ann, *getattr(ann, "__args__", ()))
                    if isinstance(a, type) and issubclass(a, BaseModel)), None)
        keys += settings_keys(sub, f"{prefix}{name}.") if sub else [f"{prefix}{name}"]
    return keys
