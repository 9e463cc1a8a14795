"""Build the optional C kernels (everything else is in pyproject.toml).

``smpc._ringkernels`` fuses a few hot ring passes; it is optional: if no C
compiler is available the build goes on and smpc falls back to torch ops.
"""

from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension(
            "smpc._ringkernels",
            sources=["smpc/_ringkernels.c"],
            extra_compile_args=["-O3", "-std=c11", "-pthread"],
            extra_link_args=["-pthread"],
            optional=True,
        )
    ]
)
