"""Where an augmentation's random numbers come from.

Every random draw of a policy derives from a key: (augmentation seed, epoch, sample index, view,
slot). Each slot of a view (a top-level transform of its albumentations pipeline; slot 0 is the
pipeline itself; the shared slots are 1, 2, ...; a policy's base slots, which run first in the
shared view, are -1, -2, ..., so adding a base does not change what the shared slots draw) owns
a NumPy generator and a ``random.Random`` drawing from it, reseeded from its key before the view
runs on a sample. So a sample's augmentation does not depend on which
process prepares it, in which order, or what ran before (the numbers are the same with 0, 1 or 8
DataLoader workers), and two policies that share a slot draw the same numbers for it on the same
sample and epoch — common random numbers, which make their comparison less noisy.

``SEEDING_VERSION`` names this scheme; a study records it, because every seeded number changed
with it (version 1 drew from one stream per augmentation and epoch).

``policysearch.augment.seeding.seed_worker`` is for training code that calls ``augment(sample)``
without an index.
"""

from __future__ import annotations

import hashlib
import random
import struct

import numpy as np

__all__ = ["SEEDING_VERSION", "DrawnRandom", "SlotRandom", "draw_key"]

SEEDING_VERSION = 2
_MASK = 2**64 - 1
_HEAD = struct.Struct("<4Q")


def draw_key(seed: int, epoch: int, index: int, view: str, slot: int) -> bytes:
    """The key of one slot's draws on one sample: every part goes in, the view by name."""
    return _HEAD.pack(seed & _MASK, epoch & _MASK, index & _MASK, slot & _MASK) + view.encode()


class DrawnRandom(random.Random):
    """A ``random.Random`` whose numbers come from a NumPy generator: every method of
    ``random.Random`` builds on ``random()`` and ``getrandbits()``. Reseeding it is reseeding
    the generator — a Mersenne Twister takes 4 µs to seed, several times per sample."""

    def __init__(self, generator: np.random.Generator) -> None:
        self._generator = generator
        super().__init__()

    def seed(self, a: object = None, version: int = 2) -> None:  # noqa: ARG002
        """Does nothing: the generator is seeded (``SlotRandom.reseed``)."""

    def random(self) -> float:
        return float(self._generator.random())

    def getrandbits(self, k: int) -> int:
        if k <= 0:
            return 0
        return int.from_bytes(self._generator.bytes((k + 7) // 8), "little") >> (-k % 8)

    def __reduce__(self) -> tuple:
        return (DrawnRandom, (self._generator,))


class SlotRandom:
    """The two generators albumentations draws from (``random_generator``, ``py_random``), for
    one slot, both drawing from one PCG64; ``reseed`` sets it from a key, in place, so the
    transforms holding them need not be touched."""

    __slots__ = ("bits", "numpy", "python")

    def __init__(self) -> None:
        self.bits = np.random.PCG64(0)
        self.numpy = np.random.Generator(self.bits)
        self.python = DrawnRandom(self.numpy)

    def reseed(self, key: bytes) -> None:
        digest = hashlib.blake2b(key, digest_size=32).digest()
        self.bits.state = {"bit_generator": "PCG64",
                           "state": {"state": int.from_bytes(digest[:16], "little"),
                                     "inc": int.from_bytes(digest[16:], "little") | 1},
                           "has_uint32": 0, "uinteger": 0}
