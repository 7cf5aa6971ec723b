"""python launch/pretrain.py [--nodes N --gpus-per-node G ...] [key=value ...]: pretrain on SLURM or locally."""
import sys
from pathlib import Path

# Run by path, Python puts launch/ first on sys.path, and this very file would shadow the `pretrain` package.
# Put the repository root there instead (the trampoline every entry script shares).
_HERE = Path(__file__).resolve().parent
sys.path[:] = [str(_HERE.parent)] + [p for p in sys.path if Path(p or ".").resolve() != _HERE]

from launch.submit import Entry  # noqa: E402

# The task this command runs, named, not imported: `--help` answers at once, the job imports it where it runs.
ENTRY = Entry("launch/pretrain.py", config="pretrain.config:load_pretrain_config", run_dir="pretrain.train:resolve_run_dir",
              target="pretrain.train:run", prepare="pretrain.train:prepare")


def main(argv: list[str] | None = None) -> int:
    return ENTRY.main(argv)


if __name__ == "__main__":
    sys.exit(main())
