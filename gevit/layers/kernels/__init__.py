"""Fused kernels of the lifting and group self-attention layers: ``cpu`` (C++/OpenMP torch extension,
built on first use) and ``triton_attention`` (CUDA, and Triton's interpreter for tests). The layers in
:mod:`gevit.layers.group_attention` choose one per call through :mod:`.backend` (``GEVIT_ATTENTION``,
``set_attention_backend``); their eager code is the reference."""
