"""The one compiled part of riskd beside the numba kernels: the Polymarket codec's
store (riskd/feeds/polymarket/_store.c). Everything else is in pyproject.toml."""

from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension(
            "riskd.feeds.polymarket._store",
            ["riskd/feeds/polymarket/_store.c"],
            # The reference's float arithmetic exactly: no fused multiply-adds.
            extra_compile_args=["-O2", "-ffp-contract=off", "-fno-fast-math"],
        )
    ]
)
