"""python launch/pretrain.py [--nodes N --gpus-per-node G ...] [key=value ...]: pretrain on SLURM or locally."""
import sys
from pathlib import Path

# Run by path, Python puts launch/ first on sys.path, and this very file would shadow the `pretrain` package.
# Put the repository root there instead (the trampoline every entry script shares).
_HERE = Path(__file__).resolve().parent
sys.path[:] = [str(_HERE.parent)] + [p for p in sys.path if Path(p or ".").resolve() != _HERE]

from launch.submit import main as submit_main  # noqa: E402
from pretrain.train import ENTRY  # noqa: E402  (the task this command runs)


def main(argv: list[str] | None = None) -> int:
    return submit_main(ENTRY, argv)


if __name__ == "__main__":
    sys.exit(main())
