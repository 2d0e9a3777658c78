"""Build the C kernels; everything else about the package is in pyproject.toml."""

from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension(
            "bninspect.numerics._kernels",
            ["bninspect/numerics/_kernels.c"],
            # No contraction into FMA and no fast-math: every operation must round exactly as
            # the matching numpy expression does, which the tests check bit for bit. Without
            # trapping math the compiler may turn branches into selects, so the loops vectorize;
            # it changes no result.
            extra_compile_args=[
                "-O3",
                "-ffp-contract=off",
                "-fno-math-errno",
                "-fno-trapping-math",
                "-std=c11",
                "-Wno-psabi",
            ],
        )
    ]
)
