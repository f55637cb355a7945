"""``equal``: every task weighs 1.0."""

from __future__ import annotations

from policysearch.weighting.base import Weighting


class EqualWeighting(Weighting):
    """Every task weighs 1.0: the plain sum of the losses."""

    name = "equal"

    def weights(self) -> dict[str, float]:
        return {t: 1.0 for t in self.tasks}
