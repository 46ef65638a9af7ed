"""``birdops bench``: the project's throughput figures, each comparison measured side by side in one run.

- ``inputs``: what the benchmarks run on, built from ``params.yaml`` in a temporary folder (a
  generated corpus subset, its prepared manifest, a model of the default architecture and its ONNX
  export, a long FLAC recording) unless pointed at existing ones;
- ``timing``: interleaved repeats, medians, latency percentiles, wall and CPU seconds of a call;
- ``common``: what every section shares (its result and tables, errors, cell formats, timed
  subprocesses);
- one module a section: ``cache``, ``model``, ``predict``, ``train``, ``cuda`` (with ``gpu``, the GPU
  profile's epoch) and ``growth`` (with ``train_run``);
- ``main``: the command (options, the printed table, the JSON file).

Figures are timings of this machine: they go to ``runs/bench.json`` by default (git-ignored), never to
a DVC output or ``metrics/``.
"""
