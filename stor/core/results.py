"""What an upload ends in: the two answers a POST can succeed with.

They are decided by the disk tier (:func:`stor.disk.spool.commit`), carried by
the store and rendered by the HTTP layer, so they live here, below all three:
the HTTP layer then needs nothing of the disk tier to answer an upload.
"""

from dataclasses import dataclass
from typing import Protocol


class FailedMember(Protocol):
    """A storage that failed while a file was written to it (its ``str`` says why)."""

    @property
    def storage(self) -> str: ...


@dataclass(frozen=True)
class Stored:
    """The file was written: 201 with these paths.

    ``failures`` lists the storages that failed on the way (the file was then
    placed on another pair).
    """

    paths: list[str]
    failures: tuple[FailedMember, ...] = ()


@dataclass(frozen=True)
class Duplicate:
    """The file was already stored (on both members of a pair): 200 with every path."""

    paths: list[str]


UploadResult = Stored | Duplicate
