"""One folder per op: ``__init__`` (public function), ``reference.py`` (plain torch), kernels."""
