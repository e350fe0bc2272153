"""The built-in demos: ``lifelong`` (the whole Adapt-∞ loop on a tiny LLaVA, ``adaptinf-fast demo``)
and ``ops`` (the three kernels on synthetic gradients, ``adaptinf-fast demo-ops``)."""
