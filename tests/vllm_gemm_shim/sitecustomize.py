"""Loaded by every Python process of a test vLLM server when ASYM_TRL_TEST_VLLM_GEMM is set (tests/conftest.py).

vLLM's CPU backend picks its bf16 GEMM by the CPU: sgl-kernel's AMX kernel where ``torch.cpu._is_amx_tile_supported()``
(Sapphire Rapids and later), oneDNN elsewhere (AVX-512, AVX2 hosts). Reporting no AMX makes an AMX host take the oneDNN
path, so the server tests can cover both kernels on one machine; ``ONEDNN_MAX_CPU_ISA`` (set by the conftest for
``onednn-avx2``) caps oneDNN's own kernels.
"""

import os

if os.environ.get("ASYM_TRL_TEST_NO_AMX") == "1":
    import torch

    torch.cpu._is_amx_tile_supported = lambda: False
