#!/usr/bin/env python3
"""Reference implementation of "fluxbuild noise v1" (docs/noise.md) in plain Python.

    python3 scripts/noise_reference.py SEED COUNT       # prints COUNT float32 values, one per line (repr)

No dependencies beyond the standard library; with numpy installed, `initial_noise` also gives the
[batch, 16, height/8, width/8] float32 array of a request.
"""
import math
import struct
import sys

MASK64 = (1 << 64) - 1


def splitmix64(seed):
    """SplitMix64 words from `seed` (the state starts at the seed; the first word mixes seed + golden)."""
    state = seed & MASK64
    while True:
        state = (state + 0x9E3779B97F4A7C15) & MASK64
        z = state
        z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & MASK64
        z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & MASK64
        yield z ^ (z >> 31)


def to_f32(x):
    """Round a Python float (float64) to the nearest float32, returned as a Python float."""
    return struct.unpack("<f", struct.pack("<f", x))[0]


def gaussian(seed, count):
    """`count` standard normal float32 values: Box-Muller on pairs of words, in float64."""
    words = splitmix64(seed)
    out = []
    while len(out) < count:
        a, b = next(words), next(words)
        u1 = ((a >> 11) + 1) * 2.0**-53  # (0, 1]
        u2 = (b >> 11) * 2.0**-53  # [0, 1)
        r = math.sqrt(-2.0 * math.log(u1))
        angle = 2.0 * math.pi * u2
        out.append(to_f32(r * math.cos(angle)))
        out.append(to_f32(r * math.sin(angle)))
    return out[:count]


def initial_noise(seed, batch, height, width):
    """The unpacked initial latents of a request: prompt i uses seed + i (wrapping)."""
    import numpy as np

    shape = (16, height // 8, width // 8)
    n = shape[0] * shape[1] * shape[2]
    return np.stack([np.array(gaussian((seed + i) & MASK64, n), dtype=np.float32).reshape(shape) for i in range(batch)])


if __name__ == "__main__":
    seed, count = int(sys.argv[1]), int(sys.argv[2])
    for v in gaussian(seed, count):
        print(repr(v))
