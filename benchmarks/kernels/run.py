"""Kernel throughput benchmark: ``python benchmarks/kernels/run.py --help`` (same as ``r0kit bench kernels``).

Runs from the repository root without installing r0kit (``PYTHONPATH=.`` or this file's
own path fix-up). With ``--interpret`` Triton's CPU interpreter is switched on before
Triton is imported.
"""

from __future__ import annotations

import os
import sys

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)
if "--interpret" in sys.argv[1:]:
    os.environ["TRITON_INTERPRET"] = "1"

try:
    import r0kit  # noqa: F401
except ImportError as exc:  # a GPU box may lack r0kit's other dependencies; the kernels need torch + triton
    import types

    pkg = types.ModuleType("r0kit")
    pkg.__path__ = [os.path.join(ROOT, "r0kit")]
    sys.modules["r0kit"] = pkg
    print(f"[run.py] import r0kit failed ({exc}); loading r0kit.kernels standalone", file=sys.stderr)

from r0kit.kernels.bench import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
