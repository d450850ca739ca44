"""Turn a checkpoint into a verified ONNX file and run it in onnxruntime.

    python examples/export_onnx.py checkpoints/digits_multitask/best.ckpt digits.onnx

Checkpoints written by the CLI rebuild their bricks from the checkpoint alone; for a module built in Python pass
its bricks (``brick_collection=``) to ``export_checkpoint_as_onnx``.
"""

from __future__ import annotations

import argparse

import numpy as np
import onnxruntime

from torchbricks_lightning.lightning.export import export_checkpoint_as_onnx


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("checkpoint")
    parser.add_argument("output", help="the .onnx file to write")
    args = parser.parse_args()
    result = export_checkpoint_as_onnx(args.checkpoint, args.output, dynamic_batch_size=True)
    print(f"Wrote {result.path}: inputs {result.input_names}, outputs {result.output_names}")
    print(f"onnxruntime vs PyTorch on example inputs: max abs diff {max(result.max_abs_diff.values()):.2e}")

    session = onnxruntime.InferenceSession(str(result.path), providers=["CPUExecutionProvider"])
    feeds = {}
    for model_input in session.get_inputs():
        shape = [5 if not isinstance(dim, int) else dim for dim in model_input.shape]  # any batch size works
        feeds[model_input.name] = np.random.default_rng(0).random(shape, dtype=np.float32)
    for output, value in zip(session.get_outputs(), session.run(None, feeds), strict=True):
        print(f"  {output.name}: shape {value.shape}")


if __name__ == "__main__":
    main()
