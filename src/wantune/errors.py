"""User-facing errors: one clear line, exit code 2, never a traceback.

Raise `UserError("<file or key>: what is wrong; what to do")` wherever bad input is detected.
The CLI prints `error: <message>` on stderr and exits with code 2.
"""

from __future__ import annotations


class UserError(Exception):
    """Bad input from the user (file, key, shape, flag). The message is one line naming the culprit."""

    exit_code = 2

    def __init__(self, message: str):
        super().__init__(" ".join(str(message).split()))


def require(condition: bool, message: str) -> None:
    """Raise UserError(message) unless condition holds."""
    if not condition:
        raise UserError(message)


def run_script(main) -> None:
    """Run a `python -m` script's main() as the CLI does: a UserError is one line on stderr and exit code 2."""
    import sys

    try:
        main()
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        raise SystemExit(UserError.exit_code) from None
