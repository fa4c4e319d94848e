# Only the C extension lives here; everything else is in pyproject.toml.
# setuptools >= 74.1 can read it from `[tool.setuptools] ext-modules`, but up
# to 84.2.1 (the newest when this was written) every build then warns that
# this table "is still *experimental* and likely to change", and the builds
# are to be warning-free.  Move it there once setuptools drops the warning.
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
