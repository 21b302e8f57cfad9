"""job/images.py: a decompression bomb is refused before it is decoded, shown in a fresh process whose peak memory
stays low (the formats, modes and sizes: tests/unit/test_images.py)."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from tests.support.sample_images import rgb_png_bomb

ROOT = Path(__file__).resolve().parents[2]


# A fresh process decodes the file it is given and reports its peak memory (VmHWM). Once imported, its address space
# may grow by 2 GB at most: if the header check were gone, the 3.6 GB decode would end in a MemoryError instead of
# taking the machine's memory (without the cap, this file measured 10 GB of peak RSS and 60 s here).
DECODE_IN_A_FRESH_PROCESS = """
import resource, sys
from job.images import decode
data = open(sys.argv[1], "rb").read()
address_space = int(open("/proc/self/statm").read().split()[0]) * resource.getpagesize()
resource.setrlimit(resource.RLIMIT_AS, (address_space + (2 << 30),) * 2)
try:
    decode(data, 32)
    print("decoded")
except BaseException as e:
    print(type(e).__name__, e)
# VmHWM: this process image's own peak (ru_maxrss would carry over the forking parent's, a pytest with TensorFlow)
print(next(int(line.split()[1]) for line in open("/proc/self/status") if line.startswith("VmHWM:")) // 1024)
"""


def test_a_decompression_bomb_is_refused_before_it_is_decoded(tmp_path):
    """docs/serving.md (predict, serve --max-pixels): the pixel count is checked from the header before anything is
    decoded.
    A 2.6 MB RGB PNG of 30,000 x 30,000 pixels, whose decode needs 2.7 GB of rows (3.6 GB as Pillow's RGB)."""
    bomb = tmp_path / "bomb.png"
    bomb.write_bytes(rgb_png_bomb(30_000))
    result = subprocess.run([sys.executable, "-c", DECODE_IN_A_FRESH_PROCESS, str(bomb)], cwd=ROOT,
                            env=dict(os.environ, PYTHONPATH=str(ROOT)), capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    outcome, peak_mb = result.stdout.splitlines()
    assert outcome == ("TooManyPixelsError 30000x30000 = 900,000,000 pixels is over the limit of 40,000,000; "
                       "scale it down first")
    assert int(peak_mb) < 256, f"a fresh process peaked at {peak_mb} MB refusing the bomb"  # about 32 MB here
