"""python finetune/pseudolabel.py [--nodes N ...] ckpt=PATH [pseudo.threshold=0.9 ...]: teacher -> pseudo-labels -> student."""
import sys
from pathlib import Path

# Run by path, Python puts finetune/ first on sys.path; put the repository root there instead (entry trampoline).
_HERE = Path(__file__).resolve().parent
sys.path[:] = [str(_HERE.parent)] + [p for p in sys.path if Path(p or ".").resolve() != _HERE]

from launch.submit import Entry  # noqa: E402

# The task this command runs, named, not imported: `--help` answers at once, the job imports it where it runs.
ENTRY = Entry("finetune/pseudolabel.py", config="finetune.teacher_student:load_semisup_config",
              run_dir="finetune.teacher_student:resolve_semisup_dir", target="finetune.teacher_student:run",
              prepare="finetune.teacher_student:prepare")


def main(argv: list[str] | None = None) -> int:
    return ENTRY.main(argv)


if __name__ == "__main__":
    sys.exit(main())
