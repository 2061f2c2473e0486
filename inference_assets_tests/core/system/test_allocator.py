"""The CPU allocator setting (core/system/allocator.py): freed blocks stay in the heap for the next batch.

Speed itself is measured by ``make bench``, never here; this checks that the option does what it says.
"""

import ctypes
import subprocess
import sys

import pytest

MALLINFO_PROBE = """
import ctypes, sys
from inference_assets.core.system.allocator import keep_freed_memory

class Mallinfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in
                ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks", "keepcost")]

libc = ctypes.CDLL(None)
libc.mallinfo2.restype = Mallinfo2
libc.malloc.restype = ctypes.c_void_p
libc.malloc.argtypes = (ctypes.c_size_t,)
libc.free.argtypes = (ctypes.c_void_p,)
if sys.argv[1] == "tuned":
    assert keep_freed_memory() is True and keep_freed_memory() is True  # idempotent
before = libc.mallinfo2().hblkhd  # bytes in mmapped blocks: what munmap gives back on free
block = libc.malloc(64 << 20)
print(libc.mallinfo2().hblkhd - before)
libc.free(block)
"""


def _has_mallinfo2() -> bool:
    try:
        ctypes.CDLL(None).mallinfo2  # noqa: B018
        return True
    except AttributeError:
        return False


@pytest.mark.skipif(not sys.platform.startswith("linux") or not _has_mallinfo2(), reason="glibc only")
@pytest.mark.fast
def test_keep_freed_memory_serves_large_blocks_from_the_heap():
    def mmapped_bytes(mode: str) -> int:
        out = subprocess.run([sys.executable, "-c", MALLINFO_PROBE, mode], capture_output=True, text=True, check=True)
        return int(out.stdout.strip())

    assert mmapped_bytes("default") >= 64 << 20  # glibc's default: a 64 MiB block is its own mapping
    assert mmapped_bytes("tuned") == 0  # tuned: from the heap, so freeing it keeps the pages for the next batch
