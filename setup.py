"""Build the C kernels and the mapping guard; everything else is in pyproject.toml."""

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
        ),
        # Memory-mapped reads that survive the file shrinking (no SIGBUS): see the file.
        Extension(
            "bninspect.input._mapguard",
            ["bninspect/input/_mapguard.c"],
            extra_compile_args=["-O2", "-std=c11"],
        ),
    ]
)
