# The C extension cannot be declared in pyproject.toml with every setuptools
# we support; everything else lives there.
from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension(
            "ipcsem._shm._ledger",
            sources=["ipcsem/_shm/_ledger.c"],
            extra_compile_args=["-O2", "-std=gnu11", "-Wall"],
            libraries=["pthread"],
        )
    ]
)
