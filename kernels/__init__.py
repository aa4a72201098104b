"""Triton kernels of fastgru4rec (shipped as ``fastgru4rec.kernels``).

Only ``@triton.jit`` kernels and their launch functions live here: kernels know nothing of
modules or training. The ops in ``fastgru4rec.ops`` pick between these and plain torch.
``contracts`` holds the launch functions' argument checks in plain torch (it never imports
triton): the ops' torch references apply the same checks, so both backends refuse the same
arguments.
"""
