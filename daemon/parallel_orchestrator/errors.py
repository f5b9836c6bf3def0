"""The one root of the package's own errors.

Every failure the package reports to a person (a bad config, a missing repository, a
state dir held by another daemon, an ``init`` that cannot write) derives from
``OrchestratorError``, so the CLI catches it once and prints it. A leaf module: it
imports nothing from the package, so any module may raise these without a cycle.
"""

from __future__ import annotations


class OrchestratorError(Exception):
    """A problem we can explain; ``str()`` is one line naming the thing at fault.

    ``lines`` is what the CLI prints, one message a line: a single line by default;
    errors that collect several problems (``ConfigError``) list each.
    """

    @property
    def lines(self) -> list[str]:
        return [str(self)]
