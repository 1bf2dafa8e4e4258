"""Damaged training samples: the one rule every backend follows under `--bad-samples`.

Under `skip`, a batch's damaged samples are replaced by its good samples in turn (each with its own
row and view), appended after them, so every rank still runs the planned batches and a resumed run
sees the same ones; each skipped sample is named by a `Skipped` record (shard, key, reason). `limit` damaged
samples in a row (in this rank's reading order) stop the run, since the data is then plainly broken.
Under `error`, the first damaged sample stops it.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple, Sequence, TypeVar

from ..errors import UserError
from ..stored.media import MediaError
from .stream import Unreadable

BAD_SAMPLE_POLICIES = ("skip", "error")
T = TypeVar("T")


class Skipped(NamedTuple):
    """A damaged sample that its batch replaced: the shard (path or URL) it lies in, its key, and why.

    A tuple so that it crosses DataLoader workers, `gather_object` and checkpoints as plain data."""

    shard: str
    key: str
    reason: str

    def __str__(self) -> str:
        return f"{self.key} of {self.shard}: {self.reason}"

    @classmethod
    def of(cls, sample: dict | Unreadable, err: Exception | str) -> "Skipped":
        """The record of a tar sample (or the place of one its shard could not give) that failed with `err`."""
        if isinstance(sample, Unreadable):
            return cls(sample.url, sample.key, sample.reason)
        url, key = sample.get("__url__", "?"), sample.get("__key__", "?")
        return cls(url, key, str(err).removeprefix(f"{url} sample {key}: "))


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

    def damaged(self, sample: Skipped) -> None:
        """Count one more damaged sample."""
        self.in_row += 1
        if self.in_row >= self.bad.limit:
            raise MediaError(f"{self.in_row} damaged samples in a row, the last {sample}: "
                             "check the shards with `umt-data verify`")


def filled(good: Sequence[T], skipped: Sequence[Skipped]) -> list[T]:
    """A batch's good samples, then one of them in turn in place of each skipped one."""
    if not good:
        raise MediaError(f"every sample of a batch is damaged ({'; '.join(map(str, skipped))})")
    return [*good, *(good[i % len(good)] for i in range(len(skipped)))]
