"""Drop-in shims for the tools users already call: TRAK's projectors, SemDeDup's per-cluster step,
scikit-learn's KMeans, and the Adapt-∞ release's selection functions (``compat.adapt_inf``)."""
