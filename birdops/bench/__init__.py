"""``birdops bench``: the project's throughput figures, each comparison measured side by side in one run.

- ``inputs``: what the benchmarks run on, built from ``params.yaml`` in a temporary folder (a
  generated corpus subset, its prepared manifest, a model of the default architecture and its ONNX
  export, a long FLAC recording) unless pointed at existing ones;
- ``timing``: interleaved repeats, medians and latency percentiles;
- ``sections``: the measurements (feature cache, exported model, ``birdops predict``, training, CUDA);
- ``main``: the command (options, the printed table, the JSON file).

Figures are timings of this machine: they go to ``runs/bench.json`` by default (git-ignored), never to
a DVC output or ``metrics/``.
"""
