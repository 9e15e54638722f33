"""The flux orchestrator's tensors: numpy arrays in host memory (cpu target) or torch tensors
(gpu target: on the instance's GPU, exchanged with Triton by DLPack). The orchestrator's math is
written once against the methods both classes share; `for_instance` picks one per model instance.

The torch path also runs on CPU torch (config parameter `torch_on_cpu: "true"` on the cpu target),
which is how the tests check it against the numpy path: the same requests give byte-identical
images. Shipped next to model.py in the model version folder (the Python backend puts that folder
on sys.path).
"""

import os
import sys

import numpy as np
import triton_python_backend_utils as pb_utils


def import_torch():
    """torch from the server's environment, or from the folders in FLUXBUILD_PYTHON_PATH (the
    backend stub's interpreter is isolated: it ignores PYTHONPATH; `fluxbuild serve` passes these)."""
    for folder in reversed(os.environ.get("FLUXBUILD_PYTHON_PATH", "").split(os.pathsep)):
        if folder and folder not in sys.path:
            sys.path.insert(0, folder)
    import torch

    return torch


def for_instance(target, args, torch_on_cpu, dtypes):
    """A factory of fresh arrays (one per execute: it counts that execute's copies) for this
    instance: torch on its GPU for a gpu-target GPU instance, torch on CPU when asked, else numpy,
    which must then be able to hold every network input type (`dtypes`: input name -> type name)."""
    if target == "gpu" and args.get("model_instance_kind") == "GPU":
        torch = import_torch()  # the gpu target's server image carries torch for DLPack math
        device_id = int(args["model_instance_device_id"])
        return lambda: DeviceArrays(torch, device_id)
    if torch_on_cpu:
        torch = import_torch()  # the gpu target's code path on CPU torch
        pb_utils.Logger.log_info(f"flux: tensors in torch {torch.__version__} on CPU (the gpu target's code path)")
        return lambda: DeviceArrays(torch, None)
    unsupported = sorted(k for k, v in dtypes.items() if v not in NUMPY_DTYPES)
    if unsupported:
        raise pb_utils.TritonModelException(
            f"flux: network inputs {unsupported} are {[dtypes[k] for k in unsupported]}, which numpy cannot hold; "
            "bf16 networks are served by the gpu target (torch), not the cpu target"
        )
    return HostArrays


# Network I/O types by name (numpy has no bfloat16: bf16 networks need the torch path).
NUMPY_DTYPES = {"float32": np.float32, "float16": np.float16, "int64": np.int64, "int32": np.int32}


class HostArrays:
    """cpu target: every tensor is a numpy array in host memory; nothing to copy."""

    device = "cpu"

    def __init__(self):
        self.h2d = 0
        self.d2h = 0

    @staticmethod
    def dtype(name):
        return NUMPY_DTYPES[name]

    def preferred_memory(self):
        return pb_utils.PreferredMemory(pb_utils.TRITONSERVER_MEMORY_CPU, 0)

    def from_output(self, tensor):
        return tensor.as_numpy()

    def to_input(self, name, array):
        return pb_utils.Tensor(name, np.ascontiguousarray(array))

    def upload(self, array):
        return array

    def download(self, array):
        return array

    def full(self, shape, value, dtype):
        return np.full(shape, value, dtype=self.dtype(dtype))

    def image_ids(self, rows, cols, dtype):
        dtype = self.dtype(dtype)
        ids = np.zeros((rows, cols, 3), dtype=dtype)
        ids[..., 1] = np.arange(rows, dtype=dtype)[:, None]
        ids[..., 2] = np.arange(cols, dtype=dtype)[None, :]
        return ids.reshape(rows * cols, 3)

    def cast(self, array, dtype):
        return array.astype(self.dtype(dtype), copy=False)

    def vector(self, values, dtype):
        return np.array(values, dtype=self.dtype(dtype))

    def float32(self, array):
        return array.astype(np.float32, copy=False)

    def concat(self, arrays):
        return np.concatenate(arrays, axis=0)

    def to_uint8_hwc(self, decoded):
        images = np.clip(decoded.astype(np.float32) * np.float32(0.5) + np.float32(0.5), 0.0, 1.0)
        images = np.transpose(images, (0, 2, 3, 1))
        return np.round(images * np.float32(255.0)).astype(np.uint8)


class DeviceArrays:
    """gpu target: torch tensors on the model instance's GPU, exchanged with Triton by DLPack
    (bf16 included: torch dtypes throughout, never numpy's). `device_id` None runs the same code
    on CPU torch (how the tests check it against HostArrays, byte for byte)."""

    def __init__(self, torch, device_id):
        self.torch = torch
        self.device = "cpu" if device_id is None else f"cuda:{device_id}"
        self.device_id = device_id
        self.h2d = 0
        self.d2h = 0
        self.dtypes = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16, "int64": torch.int64, "int32": torch.int32}

    def dtype(self, name):
        return self.dtypes[name]

    def preferred_memory(self):
        if self.device_id is None:
            return pb_utils.PreferredMemory(pb_utils.TRITONSERVER_MEMORY_CPU, 0)
        return pb_utils.PreferredMemory(pb_utils.TRITONSERVER_MEMORY_GPU, self.device_id)

    def from_output(self, tensor):
        # By DLPack in every case (as_numpy() cannot hold bf16); a host tensor is copied up once.
        array = self.torch.utils.dlpack.from_dlpack(tensor.to_dlpack())
        if self.device_id is not None and tensor.is_cpu():
            self.h2d += 1
            array = array.to(self.device)
        return array

    def to_input(self, name, array):
        if isinstance(array, np.ndarray):
            self.h2d += int(self.device_id is not None)  # Triton copies it to the GPU for the network
            return pb_utils.Tensor(name, np.ascontiguousarray(array))
        array = array.contiguous()
        if self.device_id is not None:
            # The network reads the tensor on its own stream: the work that wrote it must be done.
            self.torch.cuda.current_stream(self.device).synchronize()
        return pb_utils.Tensor.from_dlpack(name, self.torch.utils.dlpack.to_dlpack(array))

    def upload(self, array):
        self.h2d += int(self.device_id is not None)  # CPU torch: no device, no copy
        return self.torch.from_numpy(np.ascontiguousarray(array)).to(self.device)

    def download(self, array):
        self.d2h += int(self.device_id is not None)
        return array.cpu().numpy()

    def full(self, shape, value, dtype):
        return self.torch.full(shape, float(value), dtype=self.dtype(dtype), device=self.device)

    def image_ids(self, rows, cols, dtype):
        t = self.torch
        ids = t.zeros((rows, cols, 3), dtype=self.dtype(dtype), device=self.device)
        ids[..., 1] = t.arange(rows, device=self.device)[:, None]
        ids[..., 2] = t.arange(cols, device=self.device)[None, :]
        return ids.reshape(rows * cols, 3)

    def cast(self, array, dtype):
        return array.to(self.dtype(dtype))

    def vector(self, values, dtype):
        # Through float32 as numpy does (np.array(float32 values, dtype)), then to the network's type.
        return self.torch.tensor(np.array(values, dtype=np.float32), device=self.device).to(self.dtype(dtype))

    def float32(self, array):
        return array.float()

    def concat(self, arrays):
        return self.torch.cat(arrays, dim=0)

    def to_uint8_hwc(self, decoded):
        images = (decoded.float() * 0.5 + 0.5).clamp(0.0, 1.0).permute(0, 2, 3, 1)
        return (images * 255.0).round().to(self.torch.uint8)


def pack(latents, rows, cols):
    """[B,16,h,w] -> [B,(h/2)(w/2),64], channel c*4 + dy*2 + dx (FluxPipeline._pack_latents)."""
    b, channels = latents.shape[0], latents.shape[1]
    x = latents.reshape(b, channels, rows, 2, cols, 2)
    x = x.transpose(0, 2, 4, 1, 3, 5) if isinstance(x, np.ndarray) else x.permute(0, 2, 4, 1, 3, 5)
    return x.reshape(b, rows * cols, channels * 4)


def unpack(packed, rows, cols):
    b, channels = packed.shape[0], packed.shape[2] // 4
    x = packed.reshape(b, rows, cols, channels, 2, 2)
    x = x.transpose(0, 3, 1, 4, 2, 5) if isinstance(x, np.ndarray) else x.permute(0, 3, 1, 4, 2, 5)
    return x.reshape(b, channels, rows * 2, cols * 2)
