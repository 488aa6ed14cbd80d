"""Op declarations and kernels; ``build_registry`` gathers every op module's specs."""

from __future__ import annotations

from gradserve.ops.registry import Registry


def build_registry() -> Registry:
    """Create the registry holding every op of API.md section 1."""
    from gradserve.ops import activations, init, losses, regularization

    registry = Registry()
    for module in (activations, losses, regularization, init):
        for spec in module.SPECS:
            registry.register(spec)
    return registry
