"""Damaged training samples: the one rule every backend follows under `--bad-samples`.

Under `skip`, a batch's damaged samples are replaced by its good samples in turn (each with its own
row and view), appended after them, so every rank still runs the planned batches and a resumed run
sees the same ones; each skipped sample is named as "shard<TAB>key<TAB>reason". `limit` damaged
samples in a row (in this rank's reading order) stop the run, since the data is then plainly broken.
Under `error`, the first damaged sample stops it.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence, TypeVar

from ..errors import UserError
from ..stored.media import MediaError

BAD_SAMPLE_POLICIES = ("skip", "error")
T = TypeVar("T")


@dataclass(frozen=True)
class BadSamples:
    """What training does with a sample that fails to decode (evaluation always stops: `error`)."""

    policy: str = "error"
    limit: int = 16

    def __post_init__(self) -> None:
        if self.policy not in BAD_SAMPLE_POLICIES or self.limit < 1:
            raise UserError(f"bad samples: policy must be one of {BAD_SAMPLE_POLICIES} and the limit >= 1, "
                            f"got {self.policy!r}, {self.limit}")

    @property
    def skip(self) -> bool:
        return self.policy == "skip"


class Streak:
    """Counts damaged samples in a row along one reading order; raises at the policy's limit."""

    def __init__(self, bad: BadSamples):
        self.bad, self.in_row = bad, 0

    def good(self) -> None:
        self.in_row = 0

    def damaged(self, name: str) -> None:
        """Count the damaged sample `name` ("shard<TAB>key<TAB>reason")."""
        self.in_row += 1
        if self.in_row >= self.bad.limit:
            raise MediaError(f"{self.in_row} damaged samples in a row, the last {name!r}: "
                             "check the shards with `umt-data verify`")


def filled(good: Sequence[T], skipped: Sequence[str]) -> list[T]:
    """A batch's good samples, then one of them in turn in place of each skipped one."""
    if not good:
        raise MediaError(f"every sample of a batch is damaged ({'; '.join(skipped)})")
    return [*good, *(good[i % len(good)] for i in range(len(skipped)))]
