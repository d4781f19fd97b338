"""The fleet simulator, inside the package so ``dramactl replay`` and ``dramactl tune`` can run it.

``bench/`` (the benchmarks) imports it from here. Nothing on the scaler's tick path imports it.
"""
