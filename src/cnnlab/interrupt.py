"""Stop requests: SIGINT/SIGTERM (or a test's `should_stop`) set a flag the loop checks after every step."""

import signal


class StopRequest:
    """Set by SIGINT/SIGTERM (or a test's `should_stop`); the loop checks it after every step."""

    def __init__(self, should_stop=None):
        self.requested, self.signal_name, self.should_stop = False, None, should_stop
        self._previous = {}

    def __enter__(self):
        for sig in (signal.SIGINT, signal.SIGTERM):
            try:
                self._previous[sig] = signal.signal(sig, self._handle)
            except ValueError:  # not the main thread: signals stay with their owner
                pass
        return self

    def __exit__(self, *exc):
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)

    def _handle(self, signum, frame):
        self.requested, self.signal_name = True, signal.Signals(signum).name

    def check(self, epoch, step) -> bool:
        if not self.requested and self.should_stop is not None and self.should_stop(epoch, step):
            self.requested, self.signal_name = True, "stop request"
        return self.requested
