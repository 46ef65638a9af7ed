"""Two exported models of the same shape timed against each other in onnxruntime: printed, never asserted.

    python benchmarks/onnx_ab.py BEFORE.onnx AFTER.onnx [--threads 1,2] [--batch-size 16] [--rounds 25]

For a change to the exported graph (``birdops.features.frontend``'s DFT, an export option): export
the same model before and after it, then time one batch of the same random waveforms through each,
alternating run by run (``--rounds`` of each, :func:`birdops.bench.timing.interleaved`), so the
machine's load falls on both alike. Each model
has its own session; intra-op threads do not spin between runs (onnxruntime's default spinning makes
one session's idle pool steal the other's cores). Printed per thread count: the median batch time
of each and their ratio, and the largest difference of their outputs (a faster graph must compute the
same logits to float32 rounding).
"""

from __future__ import annotations

import argparse
from collections.abc import Callable

import numpy as np
import onnxruntime as ort

from birdops.bench.timing import interleaved, median, wall_seconds


def session(path: str, threads: int) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])


def timer(model: ort.InferenceSession, feed: dict[str, np.ndarray]) -> Callable[[], float]:
    """The wall seconds of one run of ``model`` on ``feed``, each time it is called."""
    return lambda: wall_seconds(lambda: model.run(None, feed))


def main() -> None:
    formatter = argparse.RawDescriptionHelpFormatter
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=formatter)
    parser.add_argument("before", help="the exported model before the change (.onnx)")
    parser.add_argument("after", help="the same model exported after it (.onnx)")
    parser.add_argument("--threads", default="1,2", help="comma-separated intra-op thread counts")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=25)
    args = parser.parse_args()
    for threads in (int(t) for t in args.threads.split(",")):
        before, after = session(args.before, threads), session(args.after, threads)
        name, samples = before.get_inputs()[0].name, before.get_inputs()[0].shape[1]
        batch = np.random.default_rng(0).standard_normal((args.batch_size, samples)).astype(np.float32)
        feed = {name: batch}
        outputs = [model.run(None, feed)[0] for model in (before, after)]  # warm-up and the outputs
        times = interleaved({"before": timer(before, feed), "after": timer(after, feed)}, args.rounds)
        b, a = median(times["before"]), median(times["after"])
        print(
            f"{threads} thread(s), batch {args.batch_size}: before {1e3 * b:.1f} ms, after {1e3 * a:.1f} ms "
            f"({b / a:.2f}x); largest output difference {np.abs(outputs[0] - outputs[1]).max():.1e}"
        )


if __name__ == "__main__":
    main()
