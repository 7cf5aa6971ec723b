"""python finetune/predict.py [--nodes N ...] ckpt=RUN inputs=DIR|FILE|LIST|SHARDS:split out=FILE.csv: predict."""
import sys
from pathlib import Path

# Run by path, Python puts finetune/ first on sys.path; put the repository root there instead (entry trampoline).
_HERE = Path(__file__).resolve().parent
sys.path[:] = [str(_HERE.parent)] + [p for p in sys.path if Path(p or ".").resolve() != _HERE]

from launch.submit import Entry  # noqa: E402

# The task this command runs, named, not imported: `--help` answers at once, the job imports it where it runs.
ENTRY = Entry("finetune/predict.py", config="finetune.inference:load_predict_config",
              run_dir="finetune.inference:resolve_run_dir", target="finetune.inference:run",
              prepare="finetune.inference:prepare")


def main(argv: list[str] | None = None) -> int:
    return ENTRY.main(argv)


if __name__ == "__main__":
    sys.exit(main())
