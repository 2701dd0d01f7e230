"""MurmurHash2 64-bit as libstdc++'s std::hash<std::string> computes it (Envoy's
``MurmurHash::murmurHash2``, the ring hash's ``MURMUR_HASH_2``). Pure Python: no maintained
package computes this variant (seed 0xc70f6907, libstdc++'s tail handling), and it only runs
while a ring is built."""

from __future__ import annotations

STD_HASH_SEED = 0xC70F6907
_MUL = 0xC6A4A7935BD1E995
_MASK = (1 << 64) - 1


def _shift_mix(v: int) -> int:
    return v ^ (v >> 47)


def murmur_hash2_64(key: bytes, seed: int = STD_HASH_SEED) -> int:
    length = len(key)
    aligned = length & ~7
    h = (seed ^ (length * _MUL)) & _MASK
    for p in range(0, aligned, 8):
        data = (
            _shift_mix((int.from_bytes(key[p : p + 8], "little") * _MUL) & _MASK) * _MUL
        ) & _MASK
        h ^= data
        h = (h * _MUL) & _MASK
    if length & 7:
        h ^= int.from_bytes(key[aligned:], "little")
        h = (h * _MUL) & _MASK
    h = (_shift_mix(h) * _MUL) & _MASK
    return _shift_mix(h)
