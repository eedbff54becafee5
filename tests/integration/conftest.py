"""
Fixtures for the integration tests (see README.md here).

- `env` (per test) and `menv` (per module) are Launchers: .gateway(...), .backend(...),
  .blackhole(). Everything a launcher started is killed (by PID) / closed at teardown.
- Every test runs under a deadline (SIGALRM): 30 s unless marked `@pytest.mark.deadline(N)`;
  multiplied by 4 when SLUICE_SANITIZED=1.
- When a test fails, the tail of each live gateway's stderr/stdout is attached to the report.
"""
import os
import signal
from pathlib import Path

import pytest

import backend as be
import harness


def pytest_configure(config):
    config.addinivalue_line("markers", "deadline(seconds): per-test time limit (default 30 s)")


class TestDeadline(BaseException):
    """Raised in the main thread when a test overruns its deadline (BaseException, so that no
    `except Exception` in the test can swallow it)."""


@pytest.fixture(autouse=True)
def _deadline(request):
    m = request.node.get_closest_marker("deadline")
    seconds = harness.slack(m.args[0] if m else 30)

    def on_alarm(signum, frame):
        raise TestDeadline(f"test exceeded its deadline of {seconds:g} s")

    old = signal.signal(signal.SIGALRM, on_alarm)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)


@pytest.fixture(autouse=True)
def _crash_watch(request):
    """Fails the test during which a gateway died without being told to stop (a crash, an
    abort, a sanitizer report). After a failed test, restarts the module's shared gateways, so
    that a crash or a hang does not fail every later test of the module."""
    for gw in list(harness.ACTIVE):
        if gw.crashed():
            gw.restart()
    watched = [gw for gw in harness.ACTIVE if gw.alive()]
    yield
    dead = [gw for gw in set(watched + harness.ACTIVE) if gw.crashed()]
    if dead or getattr(request.node, "_sluice_failed", False):
        for gw in list(harness.ACTIVE):
            if gw.shared and not gw.signalled:
                gw.restart()
    if dead:
        pytest.fail(crash_report(dead), pytrace=False)


@pytest.fixture(scope="session")
def sluice_bin():
    path = harness.sluice_bin()
    if not (os.path.isfile(path) and os.access(path, os.X_OK)):
        pytest.fail(f"sluice binary not found at {path} (build it, or set SLUICE_BIN)", pytrace=False)
    return path


class Launcher:
    """Starts gateways, backends and blackholes under one directory and stops them all."""

    def __init__(self, tmpdir, shared=False):
        self.tmp = Path(tmpdir)
        self.shared = shared
        self.gateways = []
        self.backends = []
        self.blackholes = []

    def gateway(self, routes=None, upstreams=None, start=True, name=None, **top):
        """A gateway whose config is `top` plus routes/upstreams; started and /ready unless start=False."""
        cfg = dict(top)
        if upstreams is not None:
            cfg["upstreams"] = upstreams
        if routes is not None:
            cfg["routes"] = routes
        n = len(self.gateways)
        gw = harness.Gateway(self.tmp / f"gw{n}", cfg, name=name or f"gw{n}")
        gw.shared = self.shared
        self.gateways.append(gw)
        if start:
            gw.start()
        return gw

    def backend(self, handler=None, name=None):
        b = be.Backend(handler, name=name or f"backend{len(self.backends)}")
        self.backends.append(b)
        return b

    def blackhole(self):
        bh = be.Blackhole()
        self.blackholes.append(bh)
        return bh

    def close(self):
        """Stops everything: backends first (so nothing is left in flight), then each running
        gateway with SIGTERM (exit 0 expected; a sanitizer build reports leaks here), SIGKILL
        after 5 s. Returns a description of each gateway that crashed or exited non-zero."""
        problems = [f"sluice {gw.name} died during the test (exit {gw.proc.returncode})\n{gw.log_tail()}"
                    for gw in self.gateways if gw.crashed()]
        for b in self.backends:
            b.close()
        for bh in self.blackholes:
            bh.close()
        for gw in self.gateways:
            rc = gw.shutdown()
            if rc not in (None, 0):
                problems.append(f"sluice {gw.name} exited {rc} on SIGTERM at teardown\n{gw.log_tail()}")
        return problems


def crash_report(gateways):
    return "\n".join(f"sluice {gw.name} died during this test (exit {gw.proc.returncode})\n{gw.log_tail()}"
                     for gw in gateways)


@pytest.fixture
def env(tmp_path, sluice_bin):
    launcher = Launcher(tmp_path)
    yield launcher
    problems = launcher.close()
    if problems:
        pytest.fail("\n".join(problems), pytrace=False)


@pytest.fixture(scope="module")
def menv(tmp_path_factory, sluice_bin):
    launcher = Launcher(tmp_path_factory.mktemp("module"), shared=True)
    yield launcher
    problems = launcher.close()
    if problems:
        pytest.fail("\n".join(problems), pytrace=False)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    rep = outcome.get_result()
    if rep.failed and rep.when == "call":
        item._sluice_failed = True
    if rep.failed and rep.when in ("setup", "call"):
        for gw in list(harness.ACTIVE):
            state = "running" if gw.alive() else f"exited {gw.proc.returncode if gw.proc else '-'}"
            rep.sections.append((f"sluice {gw.name} [{state}] {gw.dir}", gw.log_tail()))
