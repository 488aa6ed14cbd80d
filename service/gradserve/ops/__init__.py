"""Op declarations and kernels; ``build_registry`` gathers every op module's specs."""

from __future__ import annotations

from gradserve.ops.registry import Registry


def build_registry() -> Registry:
    """Create the registry holding every op of API.md sections 1 and 6 (the lab)."""
    from gradserve.ops import activations, init, lab, losses, regularization

    registry = Registry()
    for module in (activations, losses, regularization, init, lab):
        for spec in module.SPECS:
            registry.register(spec)
    return registry
