"""``python -m unlearn_audit.cli``: the same command as ``unlearn-audit``."""

from . import main

if __name__ == "__main__":  # vLLM spawns processes that import this module again
    main()
