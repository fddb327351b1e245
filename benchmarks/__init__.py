"""vfnb benchmarks: ``python -m benchmarks [--quick] [--only NAME ...] [--out PATH]``.

See ``BENCHMARKS.md`` for what each figure means. Not part of the installed package.
"""
