"""Process-wide shims and fall-backs: each does what it claims, and says when it falls back."""

import json
import logging
import os
import subprocess
import sys

from landslide_batch.ingest.sentinel2 import discover_files
from landslide_batch.ingest.terrain import _WGS84, _ellipsoid_of

SHIM_PROBE = """
import json, sys, torch
try:
    import torchvision
    matched = True
except RuntimeError as exc:  # PyPI's torchvision beside the CPU build of torch
    assert "torchvision::" in str(exc), exc
    matched = False
    for name in [m for m in sys.modules if m.split(".")[0] == "torchvision"]:
        del sys.modules[name]
ops = ("nms", "qnms")
before = [hasattr(torch.ops.torchvision, op) for op in ops]
from landslide_batch.models.registry import build_model
net = build_model("Unet", "resnet34", 14)
after = [hasattr(torch.ops.torchvision, op) for op in ops]
print(json.dumps({"matched": matched, "before": before, "after": after,
                  "out": list(net(torch.zeros(1, 14, 64, 64)).shape)}))
"""


def test_torchvision_shim_makes_smp_importable_and_defines_nothing_when_not_needed():
    done = subprocess.run([sys.executable, "-c", SHIM_PROBE], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    probe = json.loads(done.stdout.strip().splitlines()[-1])
    assert probe["out"] == [1, 1, 64, 64]
    if probe["matched"]:  # torchvision's own extension loaded: the shim must leave its ops alone
        assert probe["after"] == probe["before"]
    else:  # the shim declared exactly the schemas torchvision registers fakes for
        assert probe["before"] == [False, False] and probe["after"] == [True, True]


def test_unreadable_band_file_is_named_in_a_warning(tmp_path, caplog):
    (tmp_path / "T45RUL_20240101_B04.tif").write_bytes(b"not a tiff")
    with caplog.at_level(logging.WARNING, logger="landslide_batch.ingest.sentinel2"):
        found = discover_files(tmp_path)
    assert found  # still discovered by its name
    assert any("T45RUL_20240101_B04.tif" in r.getMessage() for r in caplog.records)


def test_unreadable_dem_ellipsoid_warns_and_uses_wgs84(caplog):
    with caplog.at_level(logging.WARNING, logger="landslide_batch.ingest.terrain"):
        assert _ellipsoid_of('GEOGCS["broken"') == _WGS84
    assert any("broken" in r.getMessage() and "WGS84" in r.getMessage() for r in caplog.records)


ARENA_PROBE = """
import ctypes, sys, tempfile, threading
import numpy as np
from landslide_batch.cli import limit_malloc_arenas

capped = limit_malloc_arenas() if sys.argv[1] == "cap" else False
barrier = threading.Barrier(6)
def work():
    barrier.wait()  # all threads allocate at once: each asks glibc for an arena of its own
    for _ in range(20):
        np.ones(1 << 18).sum()
threads = [threading.Thread(target=work) for _ in range(6)]
for t in threads: t.start()
for t in threads: t.join()
libc = ctypes.CDLL("libc.so.6")
libc.fopen.restype = ctypes.c_void_p
with tempfile.NamedTemporaryFile(suffix=".xml") as f:
    fp = libc.fopen(f.name.encode(), b"w")
    libc.malloc_info(0, ctypes.c_void_p(fp))
    libc.fclose(ctypes.c_void_p(fp))
    print(capped, open(f.name).read().count("<heap nr="))
"""


def test_malloc_arenas_are_capped_in_process_without_re_exec():
    def heaps(mode):
        env = {k: v for k, v in os.environ.items() if k != "MALLOC_ARENA_MAX"}
        done = subprocess.run(
            [sys.executable, "-c", ARENA_PROBE, mode], capture_output=True, text=True, env=env, timeout=120
        )
        assert done.returncode == 0, done.stderr
        capped, n = done.stdout.split()
        return capped, int(n)

    assert heaps("cap") == ("True", 2)
    capped, free = heaps("free")
    assert capped == "False" and free > 2  # the probe does create arenas when nothing caps them
