"""Loaded by every Python process of a test vLLM server when ASYM_TRL_TEST_VLLM_GEMM is set (tests/conftest.py).

vLLM's CPU backend picks its bf16 GEMM by the CPU: sgl-kernel's AMX kernel where ``torch.cpu._is_amx_tile_supported()``
(Sapphire Rapids and later), oneDNN elsewhere, torch's linear where oneDNN has no bf16 kernel for the ISA. Reporting
no AMX makes an AMX host take the oneDNN path; ``ONEDNN_MAX_CPU_ISA=AVX2`` (set by the conftest for ``onednn-avx2``)
then leaves vLLM the torch fallback. So the server tests can cover all three on one machine.
"""

import os

if os.environ.get("ASYM_TRL_TEST_NO_AMX") == "1":
    import torch

    torch.cpu._is_amx_tile_supported = lambda: False
