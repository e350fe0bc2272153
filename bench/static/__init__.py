"""Static performance check: what the kernels' SASS allows, measured without a GPU (DESIGN §6).

``record``: the Triton launches the package's own launchers make, on shape-only (meta) tensors.
``compile``: those launches compiled ahead of time for sm_90 / sm_80 with Triton's own specialisation.
``sass``: the main loop of a cubin: instruction mix, tensor-core cycles, the issue bound.
``cuda``: the same report for the CUDA kernels, from nvcc + cuobjdump.
"""
