"""gradserve: losses, activations, their gradients and weight inits as a service."""

__version__ = "0.1.0"
