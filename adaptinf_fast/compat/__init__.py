"""Drop-in shims for the tools users already call (TRAK's projectors; more with later issues)."""
