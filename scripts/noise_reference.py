#!/usr/bin/env python3
"""Reference implementation of "fluxbuild noise v1" (docs/noise.md) in plain Python.

    python3 scripts/noise_reference.py SEED COUNT       # prints COUNT float32 values, one per line (repr)

`gaussian` needs only the standard library; `gaussian_numpy` (vectorised, for the Triton orchestrator)
and `initial_noise` need numpy. Both give the same float32 bits (checked on 600,000 values, and
against the Rust implementation).
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


def gaussian_numpy(seed, count):
    """The same values, vectorised: word k (1-based) mixes seed + k·golden (mod 2^64)."""
    import numpy as np

    u64 = np.uint64
    pairs = (count + 1) // 2
    with np.errstate(over="ignore"):
        z = u64(seed & MASK64) + np.arange(1, 2 * pairs + 1, dtype=np.uint64) * u64(0x9E3779B97F4A7C15)
        z = (z ^ (z >> u64(30))) * u64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> u64(27))) * u64(0x94D049BB133111EB)
        words = z ^ (z >> u64(31))
    a, b = words[0::2], words[1::2]
    u1 = ((a >> u64(11)) + u64(1)).astype(np.float64) * 2.0**-53
    u2 = (b >> u64(11)).astype(np.float64) * 2.0**-53
    r = np.sqrt(-2.0 * np.log(u1))
    angle = 2.0 * np.pi * u2
    return np.stack([r * np.cos(angle), r * np.sin(angle)], axis=1).reshape(-1).astype(np.float32)[:count]


def initial_noise(seed, batch, height, width):
    """The unpacked initial latents of a request, [batch, 16, height/8, width/8]: prompt i uses seed + i."""
    import numpy as np

    shape = (16, height // 8, width // 8)
    n = shape[0] * shape[1] * shape[2]
    return np.stack([gaussian_numpy((seed + i) & MASK64, n).reshape(shape) for i in range(batch)])


if __name__ == "__main__":
    seed, count = int(sys.argv[1]), int(sys.argv[2])
    for v in gaussian(seed, count):
        print(repr(v))
