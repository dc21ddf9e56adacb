"""The Strategy base class: hyperparameters as dataclass fields, one `run(out_dir)`."""

from __future__ import annotations

import abc
import dataclasses
from typing import ClassVar, List


@dataclasses.dataclass
class Strategy(abc.ABC):
    """A lottery-ticket strategy. Subclasses are dataclasses whose fields are the hyperparameters
    (the `lt-plugin <name>` command makes a flag of each).

    `run(out_dir)` does the work in a run folder, resuming whatever is already there, and returns one result
    dict per ticket it produced.
    """

    name: ClassVar[str] = ""
    description: ClassVar[str] = ""

    @abc.abstractmethod
    def run(self, out_dir) -> List[dict]:
        """Find tickets in the run folder `out_dir`; returns one result dict per ticket."""

    def hparams(self) -> dict:
        return dataclasses.asdict(self)
