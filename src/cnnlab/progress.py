"""Progress: a tqdm bar in a terminal, plain periodic lines elsewhere."""

import sys
import time


class Progress:
    """A tqdm bar in a terminal; otherwise a plain line every quarter epoch (safe under nohup, CI, pipes)."""

    def __init__(self, total, epoch, epochs, log, unit="step"):
        """`total` batches; `unit` names them ("batch" where several make one optimizer step)."""
        self.total, self.log, self.count, self.start, self.unit = total, log, 0, time.perf_counter(), unit
        self.prefix = f"epoch {epoch}/{epochs}"
        self.bar, self.shown = None, 0.0
        if sys.stderr.isatty():
            from tqdm import tqdm  # here: only a terminal shows a bar

            self.bar = tqdm(total=total, desc=self.prefix, leave=False, dynamic_ncols=True)

    def update(self, images, sums=None):
        self.count += 1
        elapsed = time.perf_counter() - self.start
        if self.bar is not None:
            self.bar.update(1)
            # Reading the loss waits for the GPU, so the bar's numbers refresh at most once a second.
            if sums is not None and elapsed - self.shown >= 1.0:
                self.shown = elapsed
                self.bar.set_postfix(loss=f"{float(sums.loss) / max(sums.n, 1):.3f}", img_s=f"{images / elapsed:.0f}")
        elif self.total >= 50 and self.count % max(1, self.total // 4) == 0 and self.count < self.total:
            self.log(f"{self.prefix} {self.unit} {self.count}/{self.total} {images / elapsed:.0f} img/s")

    def close(self):
        if self.bar is not None:
            self.bar.close()
