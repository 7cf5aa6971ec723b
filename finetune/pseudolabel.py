"""python finetune/pseudolabel.py [--nodes N ...] ckpt=PATH [pseudo.threshold=0.9 ...]: teacher -> pseudo-labels -> student."""
import sys
from pathlib import Path

# Run by path, Python puts finetune/ first on sys.path; put the repository root there instead (entry trampoline).
_HERE = Path(__file__).resolve().parent
sys.path[:] = [str(_HERE.parent)] + [p for p in sys.path if Path(p or ".").resolve() != _HERE]

from finetune.teacher_student import ENTRY  # noqa: E402  (the task this command runs)
from launch.submit import main as submit_main  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    return submit_main(ENTRY, argv)


if __name__ == "__main__":
    sys.exit(main())
