"""Bad input raises a clear error: the right class, naming the parameter and the bad value."""

from __future__ import annotations

import logging
import math
import threading

import numpy as np
import pytest

import ocycle_dist as ocycle
from ocycle_dist import ClosedError, ConfigError, FrameError, OcycleError, hotpath, windows


def noop(value, t0):
    return None


class Recorder:
    def __init__(self) -> None:
        self.values: list = []
        self.errors: list[BaseException] = []

    def __call__(self, value, t0):
        self.values.append(value)
        return value

    def on_error(self, exc):
        self.errors.append(exc)


def assert_config_error(excinfo: pytest.ExceptionInfo, param: str, value: object) -> None:
    exc = excinfo.value
    assert isinstance(exc, ConfigError)
    assert isinstance(exc, ValueError)
    assert isinstance(exc, OcycleError)
    assert exc.param == param
    assert str(exc).startswith(f"{param}=")
    assert repr(value) in str(exc)


# ---- construction ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("size", [0, -1, 2.5, "10", True, None])
def test_bad_size(size):
    with pytest.raises(ConfigError) as excinfo:
        ocycle.BufferEmit(noop, size)
    assert_config_error(excinfo, "size", size)


def test_size_accepts_integer_like_values():
    assert ocycle.BufferEmit(noop, np.int64(4)).size == 4


@pytest.mark.parametrize("hop", [0, -2, 5, 2.0])
def test_bad_hop(hop):
    with pytest.raises(ConfigError) as excinfo:
        ocycle.BufferEmit(noop, 4, hop=hop)
    assert_config_error(excinfo, "hop", hop)


def test_hop_above_size_names_size():
    with pytest.raises(ConfigError, match="size=4"):
        ocycle.BufferEmit(noop, 4, hop=5)


def test_unknown_mode_lists_the_valid_modes():
    with pytest.raises(ConfigError) as excinfo:
        ocycle.BufferEmit(noop, 4, mode="fiber")
    assert_config_error(excinfo, "mode", "fiber")
    for name in ("serial", "thread", "process", "celery"):
        assert repr(name) in str(excinfo.value)


def test_a_mode_that_is_no_executor():
    with pytest.raises(ConfigError) as excinfo:
        ocycle.BufferEmit(noop, 4, mode=object)
    assert excinfo.value.param == "mode"


def test_unknown_policy_lists_the_valid_policies():
    with pytest.raises(ConfigError) as excinfo:
        ocycle.BufferEmit(noop, 4, policy="drop_random")
    assert_config_error(excinfo, "policy", "drop_random")
    for name in ocycle.POLICIES:
        assert repr(name) in str(excinfo.value)


@pytest.mark.parametrize("rate", [0, -1.0, 0.0, "fast", True, math.inf, math.nan])
def test_bad_rate(rate):
    with pytest.raises(ConfigError) as excinfo:
        ocycle.BufferEmit(noop, 4, rate=rate)
    assert_config_error(excinfo, "rate", rate)


@pytest.mark.parametrize(("param", "value"), [("max_inflight", 0), ("max_inflight", -3), ("npool", 0)])
def test_bad_pool_limits(param, value):
    with pytest.raises(ConfigError) as excinfo:
        ocycle.BufferEmit(noop, 4, **{param: value})
    assert_config_error(excinfo, param, value)


@pytest.mark.parametrize("sampler", [-1, -0.5, "x", True, math.inf, math.nan])
def test_bad_sampler_at_construction(sampler):
    with pytest.raises(ConfigError) as excinfo:
        ocycle.BufferEmit(noop, 4, sampler=sampler)
    assert_config_error(excinfo, "sampler", sampler)


@pytest.mark.parametrize("mode", ["serial", "thread", "process"])
def test_unexpected_executor_option_is_named(mode):
    with pytest.raises(ConfigError) as excinfo:
        ocycle.BufferEmit(noop, 4, mode=mode, broker="x")
    assert_config_error(excinfo, "broker", "x")


@pytest.mark.parametrize(("param", "value"), [("callback", 42), ("on_done", "print"), ("on_error", 1)])
def test_callbacks_must_be_callable(param, value):
    kwargs = {"callback": noop, "size": 4, param: value}
    with pytest.raises(ConfigError) as excinfo:
        ocycle.BufferEmit(**kwargs)
    assert_config_error(excinfo, param, value)


# ---- frames ---------------------------------------------------------------------------------------------------


def test_str_written_to_a_byte_stream_keeps_earlier_data():
    rec = Recorder()
    b = ocycle.BufferEmit(rec, 4, clip=True)
    b.write(b"ab", t0=1.0)
    with pytest.raises(FrameError) as excinfo:
        b.write("cd", t0=2.0)
    assert isinstance(excinfo.value, TypeError)
    assert isinstance(excinfo.value, OcycleError)
    assert str(excinfo.value).startswith("data of type str cannot be written to a bytes stream")
    assert b.stats().written == 2
    b.write(b"cdef", t0=3.0)
    assert rec.values == [b"abcd"]
    assert b.stats().buffered == 2


@pytest.mark.parametrize("bad", [12, None, 3.5, {"a": 1}])
def test_non_bytes_like_frames(bad):
    b = ocycle.BufferEmit(noop, 4)
    with pytest.raises(FrameError, match=type(bad).__name__):
        b.write(bad)
    assert b.stats().written == 0


def test_numpy_frame_of_another_trailing_shape():
    rec = Recorder()
    b = ocycle.NumpyEmit(rec, 4, clip=True)
    b.write(np.zeros((3, 2), np.float32), t0=1.0)
    with pytest.raises(FrameError) as excinfo:
        b.write(np.zeros((3, 3), np.float32), t0=2.0)
    assert "(3,)" in str(excinfo.value) and "(2,)" in str(excinfo.value)
    b.write(np.ones((1, 2), np.float32), t0=3.0)
    assert len(rec.values) == 1
    np.testing.assert_array_equal(rec.values[0], [[0, 0]] * 3 + [[1, 1]])


def test_numpy_frame_of_another_dtype():
    b = ocycle.NumpyEmit(noop, 4)
    b.write(np.zeros((3, 2), np.float32), t0=1.0)
    with pytest.raises(FrameError) as excinfo:
        b.write(np.zeros((3, 2), np.float64), t0=2.0)
    assert "float64" in str(excinfo.value) and "float32" in str(excinfo.value)
    assert b.stats().written == 3


def test_numpy_stream_with_declared_dtype_and_shape():
    b = ocycle.NumpyEmit(noop, 4, dtype="int16", shape=(2,))
    with pytest.raises(FrameError, match="float32"):
        b.write(np.zeros((3, 2), np.float32))
    with pytest.raises(FrameError, match=r"\(3,\)"):
        b.write(np.zeros((3, 3), np.int16))
    b.write(np.zeros((3, 2), np.int16))
    assert b.stats().written == 3


def test_numpy_object_array():
    b = ocycle.NumpyEmit(noop, 4)
    with pytest.raises(FrameError, match="object"):
        b.write(np.array([[1], ["x"]], dtype=object))
    with pytest.raises(FrameError, match="ndarray"):
        b.write([[1.0, 2.0]])


def test_invalid_t0_is_rejected_and_the_frame_not_kept():
    rec = Recorder()
    b = ocycle.BufferEmit(rec, 2, clip=True)
    with pytest.raises(FrameError, match="t0='noon'"):
        b.write(b"ab", t0="noon")
    b.write(b"cd", t0=1.0)
    assert rec.values == [b"cd"]


# ---- sampler --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("bad", [-1, "x", None, math.inf])
def test_sampler_returning_a_bad_delay_refuses_the_write_whole(bad):
    rec = Recorder()
    b = ocycle.BufferEmit(rec, 4, clip=True, sampler=lambda: bad)
    b.write(b"ab", t0=1.0)
    with pytest.raises(ConfigError) as excinfo:
        b.write(b"cdef", t0=2.0)  # would emit abcd: the sampler is asked first
    assert excinfo.value.param == "sampler"
    assert f"returned {bad!r}" in str(excinfo.value)
    assert rec.values == []  # nothing sent: a retry cannot send it twice
    stats = b.stats()
    assert (stats.written, stats.skipped, stats.buffered, stats.emitted) == (2, 0, 2, 0)
    with pytest.raises(ConfigError, match="sampler="):
        b.write(b"cdef", t0=3.0)  # the stream is as before: the sampler fails again
    assert rec.values == []


class FailsOnce:
    """A sampler that raises at its ``fail_at``-th call and returns 1.0 otherwise."""

    def __init__(self, fail_at: int) -> None:
        self.calls, self.fail_at = 0, fail_at

    def __call__(self) -> float:
        self.calls += 1
        if self.calls == self.fail_at:
            raise OSError("the sampler's source is gone")
        return 1.0


@pytest.mark.parametrize("frame_type", [bytes, bytearray], ids=["hot-path", "checked-path"])
def test_a_sampler_that_raises_leaves_nothing_half_done_and_a_retry_sends_once(frame_type):
    rec = Recorder()
    b = ocycle.BufferEmit(rec, 4, clip=True, sampler=FailsOnce(2))
    b.write(frame_type(b"abcd"), t0=1.0)  # emits abcd; pause until 2.0
    b.write(frame_type(b"efgh"), t0=1.5)  # skipped
    with pytest.raises(OSError, match="source is gone"):
        b.write(frame_type(b"ijkl"), t0=3.0)  # the pause is over; this write would emit: refused whole
    assert rec.values == [b"abcd"]
    assert (b.stats().written, b.stats().skipped, b.stats().emitted) == (8, 4, 1)
    b.write(frame_type(b"ijkl"), t0=3.0)  # the retry
    b.write(frame_type(b"mnop"), t0=3.5)  # in the new pause
    b.write(frame_type(b"qrst"), t0=4.5)
    assert rec.values == [b"abcd", b"ijkl", b"qrst"]
    assert (b.stats().written, b.stats().skipped, b.stats().emitted) == (20, 8, 3)


def test_a_sampler_that_raises_mid_stream_refuses_the_write_that_completes_the_chunk():
    rec = Recorder()
    b = ocycle.BufferEmit(rec, 4, clip=True, sampler=FailsOnce(1))
    b.write(b"ab", t0=1.0)
    with pytest.raises(OSError):
        b.write(b"cdef", t0=1.5)
    assert rec.values == [] and b.stats().buffered == 2
    b.write(b"cdef", t0=1.5)
    assert rec.values == [b"abcd"] and b.stats().skipped == 2  # ef: the clipped leftover before the pause


# ---- life cycle -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["serial", "thread"])
def test_write_after_close_then_open_again(mode):
    rec = Recorder()
    b = ocycle.BufferEmit(rec, 2, clip=True, mode=mode)
    b.write(b"ab", t0=1.0)
    b.close()
    with pytest.raises(ClosedError) as excinfo:
        b.write(b"cd", t0=2.0)
    assert isinstance(excinfo.value, RuntimeError)
    assert "open()" in str(excinfo.value)
    with pytest.raises(ClosedError):
        b.write(bytearray(b"cd"), t0=2.0)
    assert b.open() is b
    b.write(b"ef", t0=3.0)
    b.close()
    assert rec.values == [b"ab", b"ef"]


def test_write_after_close_numpy():
    b = ocycle.NumpyEmit(noop, 2)
    b.close()
    with pytest.raises(ClosedError):
        b.write(np.zeros((2, 1)))


def test_tap_after_close():
    tap = ocycle.Tap(ocycle.BufferEmit(noop, 2))
    tap.close()
    with pytest.raises(ClosedError):
        tap.write(b"ab")


@pytest.mark.parametrize("emitters", [(), (ocycle.BufferEmit(noop, 2), "not an emitter")])
def test_tap_needs_emitters(emitters):
    with pytest.raises(ConfigError) as excinfo:
        ocycle.Tap(*emitters)
    assert excinfo.value.param == "emitters"


def test_tap_of_mixed_kinds():
    with pytest.raises(ConfigError, match="bytes"):
        ocycle.Tap(ocycle.BufferEmit(noop, 2), ocycle.ListEmit(noop, 2))


# ---- callbacks that raise -------------------------------------------------------------------------------------


def test_an_exception_in_on_done_goes_to_on_error():
    rec = Recorder()

    def on_done(result):
        raise KeyError(f"cannot store {result!r}")

    b = ocycle.BufferEmit(lambda v, t0: v.upper(), 2, clip=True, on_done=on_done, on_error=rec.on_error)
    b.write(b"abcd", t0=1.0)
    assert [(type(e), str(e)) for e in rec.errors] == [
        (KeyError, "\"cannot store b'AB'\""),
        (KeyError, "\"cannot store b'CD'\""),
    ]


@pytest.mark.parametrize("mode", ["serial", "thread"])
def test_default_on_error_logs(mode, caplog):
    def boom(value, t0):
        raise ZeroDivisionError(f"boom on {value!r}")

    b = ocycle.BufferEmit(boom, 2, clip=True, mode=mode, stream="mic")
    with caplog.at_level(logging.ERROR, logger="ocycle_dist"):
        b.write(b"ab", t0=1.0)
        b.close()
    records = [r for r in caplog.records if r.name == "ocycle_dist"]
    assert len(records) == 1
    assert records[0].levelno == logging.ERROR
    assert "mic" in records[0].getMessage()
    assert "boom on b'ab'" in records[0].getMessage()
    assert records[0].exc_info[0] is ZeroDivisionError
    assert b.stats().failed == 1


def test_an_exception_in_on_error_is_logged_not_raised(caplog):
    done = threading.Event()

    def on_error(exc):
        done.set()
        raise RuntimeError("on_error is broken")

    def boom(value, t0):
        raise ValueError("boom")

    b = ocycle.BufferEmit(boom, 2, clip=True, on_error=on_error)
    with caplog.at_level(logging.ERROR, logger="ocycle_dist"):
        b.write(b"ab", t0=1.0)
    assert done.is_set()
    assert any("on_error raised" in r.getMessage() for r in caplog.records)
    assert b.stats().failed == 1


# ---- construction: every argument error is a ConfigError naming it --------------------------------------------


@pytest.mark.parametrize(("param", "value"), [("size", 2**63), ("size", 2**40 + 1), ("hop", 2**41)])
def test_size_and_hop_have_a_maximum(param, value):
    kwargs = {"size": 2**40, param: value} if param == "hop" else {"size": value}
    with pytest.raises(ConfigError, match=r"up to 1099511627776 \(2\*\*40\)") as excinfo:
        ocycle.BufferEmit(noop, **kwargs)
    assert_config_error(excinfo, param, value)


def test_size_of_2_to_the_40_is_accepted():
    assert ocycle.BufferEmit(noop, 2**40, hop=2**40).size == 2**40


@pytest.mark.parametrize("dtype", ["float99", "no such type", 3.5, object, "O"])
def test_bad_dtype(dtype):
    with pytest.raises(ConfigError) as excinfo:
        ocycle.NumpyEmit(noop, 4, dtype=dtype)
    assert_config_error(excinfo, "dtype", dtype)


@pytest.mark.parametrize("shape", [5, "2", (2, -1), (2.0,), (True,), {2: 1}])
def test_bad_shape(shape):
    with pytest.raises(ConfigError) as excinfo:
        ocycle.NumpyEmit(noop, 4, shape=shape)
    assert_config_error(excinfo, "shape", shape)


def test_shape_accepts_lists_and_numpy_integers():
    assert ocycle.NumpyEmit(noop, 4, shape=[np.int64(2)]).kind.shape == (2,)
    assert ocycle.NumpyEmit(noop, 4, dtype=np.int16, shape=()).kind.shape == ()


@pytest.mark.parametrize(("param", "value"), [("dtype", "float32"), ("shape", (2,))])
@pytest.mark.parametrize("cls", [ocycle.BufferEmit, ocycle.ListEmit])
def test_dtype_and_shape_are_for_numpy_streams_only(cls, param, value):
    with pytest.raises(ConfigError, match="is for numpy streams") as excinfo:
        cls(noop, 4, **{param: value})
    assert_config_error(excinfo, param, value)


def test_unknown_celery_option_is_named():
    with pytest.raises(ConfigError, match="an option of mode='celery': one of app, broker") as excinfo:
        ocycle.BufferEmit("tests.echo", 4, mode="celery", broker="redis://127.0.0.1:9/0", bogus=1)
    assert_config_error(excinfo, "bogus", 1)


@pytest.mark.parametrize(
    ("param", "value"), [("settings", {"broker_url": "redis://x"}), ("app", "workers"), ("spool", 3), ("batch", 0)]
)
def test_bad_celery_option_values_are_named(param, value):
    with pytest.raises(ConfigError) as excinfo:
        ocycle.BufferEmit("tests.echo", 4, mode="celery", **{param: value})
    assert_config_error(excinfo, param, value)


def module_level(value, t0):
    return value


def test_process_mode_refuses_an_unpicklable_callback_at_construction():
    with pytest.raises(ConfigError, match="picklable callable for mode='process'") as excinfo:
        ocycle.BufferEmit(lambda value, t0: value, 4, mode="process")
    assert excinfo.value.param == "callback"

    def local(value, t0):
        return value

    with pytest.raises(ConfigError, match="picklable"):
        ocycle.BufferEmit(local, 4, mode="process")
    b = ocycle.BufferEmit(local, 4, mode="thread")
    with pytest.raises(ConfigError, match="picklable"):
        b.open(mode="process")  # switching an open emitter to the process pool is checked too
    assert b.mode == "thread"
    b.close()
    ok = ocycle.BufferEmit(module_level, 4, mode="process")
    ok.close()


# ---- t0: a finite number of seconds >= 0 that never goes backwards --------------------------------------------

APPENDERS = pytest.mark.parametrize("appender", [hotpath.Appender, hotpath.appender_class()], ids=["python", "default"])


@pytest.fixture
def use(monkeypatch):
    def use(appender):
        monkeypatch.setattr(windows, "appender_class", lambda: appender)

    return use


class Timed(Recorder):
    def __call__(self, value, t0):
        self.values.append((value, t0))


BAD_T0 = [math.nan, math.inf, -math.inf, -1.0, -1, 10**400, "noon", True, None.__class__, 1 + 2j]


@APPENDERS
@pytest.mark.parametrize("rate", [None, 10.0])
@pytest.mark.parametrize("bad", BAD_T0, ids=repr)
def test_a_bad_t0_is_refused_and_its_frame_not_kept(use, appender, rate, bad):
    use(appender)
    rec = Timed()
    b = ocycle.BufferEmit(rec, 4, clip=True, rate=rate)
    b.write(b"ab", t0=1.0)  # opens the window: the next write completes it
    with pytest.raises(FrameError, match=r"^t0=.* is invalid: expected") as excinfo:
        b.write(b"cd", t0=bad)  # would complete the chunk (the C path calls back here)
    assert isinstance(excinfo.value, TypeError) and len(str(excinfo.value)) < 200
    with pytest.raises(FrameError):
        b.write(b"cd", t0=bad)  # the same again: still nothing kept
    assert rec.values == [] and b.stats().written == 2 and b.stats().buffered == 2
    b.write(b"efgh", t0=1.0 + 2 / rate if rate else 2.0)  # with rate: contiguous, no gap
    assert rec.values == [(b"abef", 1.0)]
    assert b.stats().written == 6 and b.stats().t0_overlaps == 0


@APPENDERS
def test_a_t0_that_overflows_with_rate_is_a_frame_error_not_an_overflow(use, appender):
    use(appender)
    rec = Timed()
    b = ocycle.BufferEmit(rec, 4, clip=True, rate=16000)
    with pytest.raises(FrameError, match=r"t0=10{36}\.\.\. is invalid: expected a finite number"):
        b.write(b"ab", t0=10**400)  # opens a window: t0 + offset / rate would overflow
    b.write(b"cdef", t0=5.0)
    assert rec.values == [(b"cdef", 5.0)]  # not b"abcd" at t0=0.0


@APPENDERS
@pytest.mark.parametrize("rate", [None, 2.0])
def test_a_t0_earlier_than_the_previous_writes_is_a_clock_step_not_a_refusal(use, appender, rate):
    use(appender)
    rec = Timed()
    b = ocycle.BufferEmit(rec, 4, clip=True, rate=rate)
    b.write(b"ab", t0=10.0)
    b.write(b"cd", t0=9.5)  # the clock went back: "ab" ends as a partial chunk, "cd" starts on the new clock
    b.write(b"ef", t0=9.5 if rate is None else 10.5)
    b.write(b"gh")  # a write without t0 is not compared
    b.write(b"ij", t0=20.0 if rate is None else 11.5)
    assert [v for v, _ in rec.values] == [b"ab", b"cdef", b"ghij"] and rec.values[1][1] == 9.5
    stats = b.stats()
    assert stats.clock_steps == 1 and stats.t0_overlaps == 0 and stats.written == 10 and stats.buffered == 0


@APPENDERS
def test_with_rate_a_t0_inside_the_previous_write_is_accepted_and_counted(use, appender):
    use(appender)
    rec = Timed()
    b = ocycle.BufferEmit(rec, 4, clip=True, rate=2.0)  # an element every 0.5 s
    b.write(b"ab", t0=10.0)  # spans 10.0 to 11.0
    b.write(b"cd", t0=10.9)  # 0.1 s early: clock jitter, accepted, counted
    b.write(b"efgh", t0=11.9)  # 0.1 s after the previous end: fine; spans 11.9 to 13.9
    b.write(b"ij", t0=13.9)
    b.write(b"kl", t0=14.9)
    assert rec.values == [(b"abcd", 10.0), (b"efgh", 11.9), (b"ijkl", 13.9)]
    assert b.stats().t0_overlaps == 1
    b.write(b"mn", t0=15.0)  # inside kl's span (14.9 to 15.9)
    assert b.stats().t0_overlaps == 2


def test_without_rate_equal_t0s_are_no_overlap():
    b = ocycle.BufferEmit(noop, 4)
    for _ in range(5):
        b.write(b"ab", t0=3.0)
    assert b.stats().t0_overlaps == 0


def test_numpy_and_integer_like_t0s_are_accepted():
    rec = Timed()
    b = ocycle.NumpyEmit(rec, 2, clip=True)
    b.write(np.zeros(2), t0=np.float32(1.5))
    b.write(np.zeros(2), t0=np.int64(2))
    b.write(np.zeros(2), t0=3)
    assert [t for _, t in rec.values] == [1.5, 2.0, 3]


@APPENDERS
def test_a_bad_t0_during_a_sampler_pause_is_refused_too(use, appender):
    use(appender)
    b = ocycle.BufferEmit(noop, 2, clip=True, sampler=5.0)
    b.write(b"ab", t0=1.0)  # emits, pauses until 6.0
    with pytest.raises(FrameError):
        b.write(b"cd", t0=math.nan)
    with pytest.raises(FrameError):
        b.write(b"cd", t0=-0.5)
    b.write(b"cd", t0=2.0)  # skipped by the pause
    assert b.stats().skipped == 2 and b.stats().written == 4


@APPENDERS
def test_a_clock_step_during_a_sampler_pause_keeps_what_is_left_of_the_pause(use, appender):
    use(appender)
    rec = Timed()
    b = ocycle.BufferEmit(rec, 2, clip=True, sampler=5.0)
    b.write(b"ab", t0=1000.0)  # emits, pauses until 1005.0
    b.write(b"cd", t0=1002.0)  # skipped: 3 s of the pause left
    b.write(b"ef", t0=500.0)  # the clock went back 502 s: the pause ends at 503.0 on the new clock
    b.write(b"gh", t0=502.5)  # skipped
    b.write(b"ij", t0=503.0)
    assert rec.values == [(b"ab", 1000.0), (b"ij", 503.0)]
    assert b.stats().clock_steps == 1 and b.stats().skipped == 6


def test_a_tap_checks_t0_for_every_emitter_before_any_gets_the_frame():
    first, second = Timed(), Timed()
    a = ocycle.BufferEmit(first, 2, clip=True)
    b = ocycle.BufferEmit(second, 2, clip=True)
    b.write(b"xy", t0=5.0)  # b has seen t0=5.0, a has not
    tap = ocycle.Tap(a, b)
    with pytest.raises(FrameError, match="finite"):
        tap.write(b"ab", t0=math.inf)
    assert a.stats().written == 0 and b.stats().written == 2
    tap.write(b"ab", t0=4.0)  # a clock step for b only
    tap.write(b"cd")  # no t0: now, for both, not compared
    assert first.values[0] == (b"ab", 4.0) and second.values[1] == (b"ab", 4.0)
    assert len(first.values) == 2 and len(second.values) == 3
    assert (a.stats().clock_steps, b.stats().clock_steps) == (0, 1)


# ---- numpy frames that would not survive ----------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["serial", "thread"])
def test_a_masked_array_is_refused_and_earlier_data_kept(mode):
    rec = Recorder()
    b = ocycle.NumpyEmit(rec, 4, clip=True, mode=mode)
    b.write(np.arange(3.0), t0=1.0)
    masked = np.ma.masked_array([3.0, 4.0], mask=[False, True])
    with pytest.raises(FrameError, match="masked array: its mask would be lost"):
        b.write(masked, t0=2.0)
    assert b.stats().written == 3
    b.write(masked.filled(0.0), t0=2.0)  # what the message suggests
    b.close()
    assert [v.tolist() for v in rec.values] == [[0.0, 1.0, 2.0, 3.0]]


def test_structured_dtypes_are_fine_locally():
    rec = Recorder()
    dtype = np.dtype([("left", "<i2"), ("right", "<i2")])
    b = ocycle.NumpyEmit(rec, 2, clip=True, dtype=dtype)
    b.write(np.array([(1, 2), (3, 4)], dtype=dtype))
    assert rec.values[0].dtype.names == ("left", "right") and rec.values[0]["right"].tolist() == [2, 4]


def test_a_declared_dtype_alone_or_shape_alone_is_kept_and_the_rest_taken_from_the_first_frame():
    b = ocycle.NumpyEmit(noop, 4, dtype="int16")
    b.write(np.zeros(3, np.int16))  # shape () from the frame (this raised: "frame shape None")
    with pytest.raises(FrameError, match=r"frame shape \(2,\)"):
        b.write(np.zeros((3, 2), np.int16))
    c = ocycle.NumpyEmit(noop, 4, shape=(2,))
    with pytest.raises(FrameError, match=r"this stream holds dtype float32 and frame shape \(2,\)"):
        c.write(np.zeros((3, 3), np.float32))  # the declared shape is kept (it was overwritten by the frame's)
    c.write(np.zeros((3, 2), np.float32))
    assert c.kind.dtype == np.float32 and c.stats().written == 3


class NoWrite:
    def getvalue(self):
        return b""


@pytest.mark.parametrize("new", [42, lambda: 5, dict, NoWrite], ids=["int", "lambda", "dict", "no-write"])
def test_a_new_that_is_no_buffer_factory(new):
    with pytest.raises(ConfigError, match="a buffer factory whose buffers have write") as excinfo:
        ocycle.BufferEmit(noop, 4, new=new)
    assert excinfo.value.param == "new"
