"""The one compiled part of riskd beside the numba kernels: the Polymarket codec's
store (riskd/feeds/polymarket/_store.c) and its frame reader (_scan.c). Everything
else is in pyproject.toml."""

from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension(
            "riskd.feeds.polymarket._store",
            ["riskd/feeds/polymarket/_store.c", "riskd/feeds/polymarket/_scan.c"],
            depends=["riskd/feeds/polymarket/_scan.h"],
            # The reference's float arithmetic exactly: no fused multiply-adds.
            extra_compile_args=["-O2", "-ffp-contract=off", "-fno-fast-math"],
        )
    ]
)
