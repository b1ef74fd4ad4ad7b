"""keynet's native convolution kernels (``keynet/csrc/conv5x5.c``, see ``keynet/native.py``), built for
x86-64 with AVX-512 instructions and used only on CPUs where they are faster than oneDNN. They are
optional: where they do not build, keynet runs the same network with oneDNN's convolutions."""

import platform

from setuptools import Extension, setup

extensions = []
if platform.machine().lower() in ("x86_64", "amd64"):
    # the kernels select their AVX-512 instructions themselves (target attributes)
    extensions.append(Extension("keynet._conv5x5", ["keynet/csrc/conv5x5.c"], extra_compile_args=["-O3"], optional=True))
setup(ext_modules=extensions)
