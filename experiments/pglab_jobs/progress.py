"""Progress for long loops: a bar on a terminal, concise log lines elsewhere."""

from __future__ import annotations

import logging
import sys
import time

from tqdm import tqdm

log = logging.getLogger("pglab.progress")


class Progress:
    """``with Progress(total, "iterations") as bar: bar.update(1, postfix)``.

    On a TTY (and ``enabled``) this is a tqdm bar on stderr. Otherwise it logs one line
    at every 10 % of ``total`` (and at the end), which lands in the job's log file.
    """

    def __init__(self, total: int, desc: str, enabled: bool = True) -> None:
        self.total = max(int(total), 1)
        self.desc = desc
        self.count = 0
        self.start = time.perf_counter()
        self.next_report = 0.1
        self.postfix = ""
        self.bar = (
            tqdm(total=total, desc=desc, leave=False) if enabled and sys.stderr.isatty() else None
        )

    def update(self, n: int = 1, postfix: str | None = None) -> None:
        self.count += n
        if postfix is not None:
            self.postfix = postfix
        if self.bar is not None:
            self.bar.update(n)
            if postfix:
                self.bar.set_postfix_str(postfix, refresh=False)
            return
        fraction = self.count / self.total
        if fraction >= self.next_report or self.count == self.total:
            elapsed = time.perf_counter() - self.start
            log.info(
                "%s %d/%d (%.0f%%) %.1fs %s",
                self.desc,
                self.count,
                self.total,
                100 * fraction,
                elapsed,
                self.postfix,
            )
            while self.next_report <= fraction:
                self.next_report += 0.1

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
