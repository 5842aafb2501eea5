"""avloc: audio-visual sound source localization in JAX (JSA, NoPrior and baselines)."""

from avloc import platform as _platform

_platform.configure()  # before jax starts: XLA flags that make it faster on this platform
