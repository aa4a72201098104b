"""Triton kernels of fastgru4rec (shipped as ``fastgru4rec.kernels``).

Only ``@triton.jit`` kernels and their launch functions live here: kernels know nothing of
modules or training. The ops in ``fastgru4rec.ops`` pick between these and plain torch.
"""
