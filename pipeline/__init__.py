"""DVC stages: one thin module per stage (parse paths, load params, call birdops, write outputs).

Importing the package pins the CPU kernels of numpy, PyTorch and their libraries
(:func:`birdops.kernels.pin_cpu_kernels`) before any stage imports them, so every stage computes
the same bits on any x86-64 processor.
"""

from birdops.kernels import pin_cpu_kernels

pin_cpu_kernels()
