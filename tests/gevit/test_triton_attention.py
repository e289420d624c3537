"""The Triton attention kernel, run on the CPU by Triton's interpreter: same function and gradients
as the eager path on tiny shapes, and reproducible dropout. TRITON_INTERPRET must be set before triton
is imported, so the checks run in a fresh interpreter (this process may already have imported triton)."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

pytest.importorskip("triton")

CHECK = textwrap.dedent("""
    import os
    assert os.environ["TRITON_INTERPRET"] == "1"
    import torch
    from gevit.layers import GroupSelfAttention, LiftingSelfAttention

    torch.set_num_threads(1)

    def randomise(layer):
        torch.manual_seed(0)
        with torch.no_grad():
            for param in layer.parameters():
                param.normal_(0, 0.5)
        return layer.eval()

    def run(layer, x, backend, cotangent=None):
        layer.backend = backend
        x = x.detach().requires_grad_(True)
        out = layer(x)
        cotangent = torch.randn_like(out) if cotangent is None else cotangent
        grads = torch.autograd.grad((out * cotangent).sum(), [x] + list(layer.parameters()))
        return out, grads, cotangent

    cases = [
        (GroupSelfAttention("mz2", 3, 6, 4, 1, 3, image_size=3, encoding="gevit"), (1, 3, 2, 2, 3)),
        (LiftingSelfAttention("p4", 2, 4, 3, 1, 3, image_size=3), (1, 2, 2, 3)),
    ]
    for layer, shape in cases:
        layer = randomise(layer)
        x = torch.randn(*shape)
        fused, fused_grads, cotangent = run(layer, x, "triton")
        eager, eager_grads, _ = run(layer, x, "eager", cotangent)
        assert ((fused - eager).norm() / eager.norm()).item() < 1e-5, type(layer).__name__
        scale = max(g.norm().item() for g in eager_grads)
        for a, b in zip(fused_grads, eager_grads):
            assert (a - b).norm().item() <= 1e-4 * max(b.norm().item(), 1e-2 * scale), type(layer).__name__

    layer = randomise(LiftingSelfAttention("p4", 2, 4, 3, 1, 3, image_size=3)).train()
    layer.attention_dropout, layer.backend = 0.5, "triton"
    x = torch.randn(1, 2, 2, 3)
    torch.manual_seed(5)
    first = layer(x)
    torch.manual_seed(5)
    assert torch.equal(first, layer(x)) and not torch.allclose(first, layer(x))
    print("TRITON-INTERPRETER-OK")
""")


def test_triton_kernel_in_the_interpreter_matches_eager():
    root = Path(__file__).resolve().parents[2]
    env = {**os.environ, "TRITON_INTERPRET": "1", "PYTHONPATH": str(root), "GEVIT_ATTENTION": "auto"}
    result = subprocess.run(
        [sys.executable, "-c", CHECK], cwd=root, env=env, capture_output=True, text=True, timeout=600
    )
    assert result.returncode == 0 and "TRITON-INTERPRETER-OK" in result.stdout, result.stdout + result.stderr
