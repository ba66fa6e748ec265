"""The one error type for user mistakes.

It lives in `store` because `store` is the bottom of the dependency spine
(cli -> generators -> zoo -> wsl -> store): every package can raise it, and the
`wsl` command maps it to exit status 2 and a one-line message. Tracebacks are
shown only with `wsl --debug`.
"""
from __future__ import annotations


class UserError(ValueError):
    """A mistake in what the user gave us: names the bad input and how to fix it.

    `str(err)` is the one line the CLI prints after "error: ".
    """

    def __init__(self, message: str, fix: str | None = None):
        self.message = message.rstrip(". ")
        self.fix = fix.rstrip(". ") if fix else None
        super().__init__(self.message + (f". Fix: {self.fix}." if self.fix else "."))
