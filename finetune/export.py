"""python finetune/export.py ckpt=RUN format=hf|ssast|audiomae out=DIR [encoder_only=true] [overwrite=true]: export."""
import sys
from pathlib import Path

# Run by path, Python puts finetune/ first on sys.path; put the repository root there instead (entry trampoline).
_HERE = Path(__file__).resolve().parent
sys.path[:] = [str(_HERE.parent)] + [p for p in sys.path if Path(p or ".").resolve() != _HERE]

from finetune.conversion import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
