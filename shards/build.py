"""python shards/build.py SOURCE --root RAW --out SHARDS: raw corpus -> WebDataset shards (see shards/cli.py)."""
import sys
from pathlib import Path

# Run by path, Python puts shards/ first on sys.path, where a module named like a dependency or a sibling package
# would shadow it. Put the repository root there instead (the trampoline every entry script shares).
_HERE = Path(__file__).resolve().parent
sys.path[:] = [str(_HERE.parent)] + [p for p in sys.path if Path(p or ".").resolve() != _HERE]

from shards.cli import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
