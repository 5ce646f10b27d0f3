"""Only the C extension is declared here; the project's metadata lives in setup.cfg."""

from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension(
            "twisted_vmtools._backdoor",
            sources=["twisted_vmtools/_backdoor.c"],
            # Not optional: pip install must fail loudly rather than ship a guest without its backdoor.
            extra_compile_args=["-Wall", "-Wextra"],
        )
    ],
)
