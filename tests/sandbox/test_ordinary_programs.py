"""Ordinary programs get plain python3's verdict: each program runs in the sandbox and as `python3 -I -S FILE`
(same interpreter, empty environment, stdin /dev/null), and "passed" must hold exactly where python3 exits 0.
A false "failed" lowers the reported execution pass rate just as a false "passed" raises it."""

from __future__ import annotations

import os
import subprocess
import tempfile
from concurrent.futures import ThreadPoolExecutor

import pytest

from sandbox import Sandbox

# What generated code plausibly does; every one of these exits 0 under plain python3.
ORDINARY = {
    "print": "print('hello')",
    "asyncio_gather": """\
import asyncio
async def f(i):
    await asyncio.sleep(0.01)
    return i
async def main():
    return await asyncio.gather(*(f(i) for i in range(5)))
assert asyncio.run(main()) == [0, 1, 2, 3, 4]
""",
    "asyncio_queue": """\
import asyncio
async def main():
    q = asyncio.Queue()
    async def prod():
        for i in range(10):
            await q.put(i)
        await q.put(None)
    async def cons():
        out = []
        while (x := await q.get()) is not None:
            out.append(x)
        return out
    _, out = await asyncio.gather(prod(), cons())
    assert out == list(range(10))
asyncio.run(main())
""",
    "asyncio_timeout": """\
import asyncio
async def main():
    try:
        await asyncio.wait_for(asyncio.sleep(5), 0.05)
    except asyncio.TimeoutError:
        print('timed out')
asyncio.run(main())
""",
    "sqlite_memory": """\
import sqlite3
c = sqlite3.connect(':memory:')
c.execute('create table t (x int)')
c.executemany('insert into t values (?)', [(i,) for i in range(100)])
assert c.execute('select sum(x) from t').fetchone() == (4950,)
""",
    "threads_lock": """\
import threading
n = 0
lock = threading.Lock()
def work():
    global n
    for _ in range(1000):
        with lock:
            n += 1
ts = [threading.Thread(target=work) for _ in range(4)]
[t.start() for t in ts]
[t.join() for t in ts]
assert n == 4000
""",
    "thread_pool": """\
from concurrent.futures import ThreadPoolExecutor
with ThreadPoolExecutor(4) as ex:
    assert list(ex.map(lambda x: x * x, range(20)))[-1] == 361
""",
    "queue_workers": """\
import queue, threading
q = queue.Queue()
out = []
def w():
    while (x := q.get()) is not None:
        out.append(x)
t = threading.Thread(target=w)
t.start()
for i in range(50):
    q.put(i)
q.put(None)
t.join()
assert len(out) == 50
""",
    "tempfile_named": """\
import tempfile
with tempfile.NamedTemporaryFile('w+') as f:
    f.write('data')
    f.seek(0)
    assert f.read() == 'data'
""",
    "tempdir_pathlib": """\
import tempfile, pathlib
with tempfile.TemporaryDirectory() as d:
    p = pathlib.Path(d) / 'a' / 'b.txt'
    p.parent.mkdir()
    p.write_text('x')
    assert [q.name for q in pathlib.Path(d).rglob('*.txt')] == ['b.txt']
""",
    "shutil_copy": """\
import shutil, tempfile, os
d = tempfile.mkdtemp()
open(os.path.join(d, 'a'), 'w').write('1')
shutil.copy2(os.path.join(d, 'a'), os.path.join(d, 'b'))
shutil.copytree(d, d + '_copy')
shutil.rmtree(d)
shutil.rmtree(d + '_copy')
""",
    "zoneinfo": """\
from zoneinfo import ZoneInfo
from datetime import datetime
t = datetime(2024, 7, 1, 12, tzinfo=ZoneInfo('America/New_York'))
assert t.astimezone(ZoneInfo('UTC')).hour == 16
""",
    "locale_c_utf8": """\
import locale
locale.setlocale(locale.LC_ALL, 'C.UTF-8')
print(locale.getlocale())
""",
    "json_roundtrip": """\
import json
d = {'a': [1, 2.5, None, True], 'b': {'c': 'é'}}
assert json.loads(json.dumps(d)) == d
""",
    "regex": r"""
import re
assert re.findall(r'\d+', 'a1b22c333') == ['1', '22', '333']
""",
    "collections": """\
from collections import Counter, deque, defaultdict, OrderedDict
assert Counter('abca').most_common(1) == [('a', 2)]
d = deque([1, 2])
d.appendleft(0)
dd = defaultdict(list)
dd['x'].append(1)
print(d, dict(dd), OrderedDict(a=1))
""",
    "functools_cache": """\
from functools import lru_cache, reduce
@lru_cache(None)
def fib(n):
    return n if n < 2 else fib(n - 1) + fib(n - 2)
assert fib(80) == 23416728348467685
assert reduce(lambda a, b: a * b, range(1, 6)) == 120
""",
    "dataclasses_future": """\
from __future__ import annotations
from dataclasses import dataclass, field
from typing import ClassVar
@dataclass(order=True)
class P:
    x: int
    y: int = 0
    tags: list[str] = field(default_factory=list)
    n: ClassVar[int] = 0
assert sorted([P(2), P(1)])[0].x == 1
""",
    "enum_typing": """\
import enum
from typing import NamedTuple, Optional
class C(enum.Enum):
    RED = 1
class Pt(NamedTuple):
    x: int
    y: Optional[int] = None
assert C(1) is C.RED and Pt(1).y is None
""",
    "decimal_fractions": """\
from decimal import Decimal, getcontext
from fractions import Fraction
getcontext().prec = 50
assert str(Decimal(1) / Decimal(7))[:10] == '0.14285714'
assert Fraction(1, 3) + Fraction(1, 6) == Fraction(1, 2)
""",
    "math_statistics": """\
import math, statistics
assert math.isclose(math.sqrt(2) ** 2, 2)
assert statistics.median([3, 1, 2]) == 2 and round(statistics.stdev([1, 2, 3, 4]), 3) == 1.291
""",
    "random_seeded": """\
import random
random.seed(0)
xs = [random.randint(0, 9) for _ in range(5)]
random.shuffle(xs)
print(xs, random.choice('abc'))
""",
    "datetime_format": """\
import datetime, time
d = datetime.date(2024, 2, 29)
assert d.strftime('%A') == 'Thursday'
print(time.strftime('%Y'), time.monotonic() > 0)
""",
    "hashing": """\
import hashlib, hmac
assert hashlib.sha256(b'abc').hexdigest().startswith('ba7816bf')
print(hmac.new(b'k', b'm', 'sha1').hexdigest(), hashlib.md5(b'').hexdigest())
""",
    "compression": """\
import zlib, gzip, bz2, lzma, base64
b = b'x' * 10000
for m in (zlib, gzip, bz2, lzma):
    assert m.decompress(m.compress(b)) == b
assert base64.b64decode(base64.b64encode(b)) == b
""",
    "csv_io": """\
import csv, io
buf = io.StringIO()
csv.writer(buf).writerows([[1, 'a'], [2, 'b']])
assert list(csv.reader(io.StringIO(buf.getvalue()))) == [['1', 'a'], ['2', 'b']]
""",
    "heapq_bisect": """\
import heapq, bisect
h = [5, 1, 3]
heapq.heapify(h)
assert heapq.heappop(h) == 1
a = [1, 3, 5]
bisect.insort(a, 4)
assert a == [1, 3, 4, 5]
""",
    "sys_exit_zero": """\
import sys
print('done')
sys.exit(0)
""",
    "sys_exit_none": """\
import sys
sys.exit()
""",
    "raise_system_exit_zero": "raise SystemExit(0)",
    "atexit_hook": """\
import atexit
atexit.register(print, 'bye')
print('hi')
""",
    "thread_outlives_main": """\
import threading, time
threading.Thread(target=lambda: (time.sleep(0.1), print('late'))).start()
""",
    "daemon_thread_left_running": """\
import threading, time
threading.Thread(target=time.sleep, args=(60,), daemon=True).start()
""",
    "exception_in_thread": """\
import threading
def f():
    raise ValueError('in a thread only')
t = threading.Thread(target=f)
t.start()
t.join()
""",
    "moderate_memory": """\
x = bytearray(64 << 20)
x[-1] = 1
y = [0] * 2_000_000
print(len(x) + len(y))
""",
    "moderate_output": """\
for i in range(20000):
    print(i, 'line of output')
""",
    "recursion_500": """\
def f(n):
    return 0 if n == 0 else 1 + f(n - 1)
assert f(500) == 500
""",
    "pickle_main_class": """\
import pickle
class A:
    def __init__(self):
        self.v = [1, 2]
assert pickle.loads(pickle.dumps(A())).v == [1, 2]
""",
    "unittest_main": """\
import unittest
class T(unittest.TestCase):
    def test_add(self):
        self.assertEqual(1 + 1, 2)
unittest.main()
""",
    "doctest": """\
def add(a, b):
    '''
    >>> add(1, 2)
    3
    '''
    return a + b
import doctest
assert doctest.testmod().failed == 0
""",
    "argparse": """\
import argparse
p = argparse.ArgumentParser()
p.add_argument('--n', type=int, default=3)
assert p.parse_args([]).n == 3
""",
    "logging_stderr": """\
import logging
logging.basicConfig(level=logging.INFO)
logging.info('hello %s', 'log')
""",
    "warnings": """\
import warnings
warnings.warn('careful')
print('still fine')
""",
    "struct_array": """\
import struct, array
assert struct.unpack('<I', struct.pack('<I', 7)) == (7,)
assert array.array('d', [1.0, 2.0]).tolist() == [1.0, 2.0]
""",
    "uuid_secrets": """\
import uuid, secrets
assert len(str(uuid.uuid4())) == 36 and len(secrets.token_hex(8)) == 16
""",
    "signal_alarm": """\
import signal, time
signal.signal(signal.SIGALRM, lambda *a: None)
signal.alarm(5)
time.sleep(0.01)
signal.alarm(0)
""",
    "inspect_getsource": """\
import inspect
def f():
    return 1
assert 'return 1' in inspect.getsource(f)
""",
    "textwrap_difflib": """\
import textwrap, difflib, string
print(textwrap.fill('word ' * 30, 40))
print(list(difflib.unified_diff(['a'], ['b'])))
print(string.Template('$x').substitute(x=1))
""",
    "os_basics": """\
import os
os.makedirs('a/b', exist_ok=True)
open('a/b/f', 'w').write('1')
print(os.getcwd() != '', sorted(os.listdir('a')), os.cpu_count() is not None, os.getpid() > 0)
""",
    "platform_sysconfig": """\
import platform, sysconfig
print(platform.python_version(), sysconfig.get_platform())
""",
    "itertools_generators": """\
import itertools
def gen():
    yield from range(3)
assert list(itertools.chain(gen(), 'ab')) == [0, 1, 2, 'a', 'b']
assert len(list(itertools.permutations(range(5)))) == 120
""",
    "stderr_and_stdout": """\
import sys
print('out')
print('err', file=sys.stderr)
""",
    "sleep_short": """\
import time
time.sleep(0.2)
""",
}

# Programs that exit non-zero under plain python3: the sandbox must not pass them.
FAILING = {
    "raise": "raise ValueError('no')",
    "assert": "assert 1 + 1 == 3",
    "sys_exit_2": """\
import sys
sys.exit(2)
""",
    "sys_exit_message": """\
import sys
sys.exit('a message')
""",
    "atexit_exits_nonzero": """\
import atexit, os
atexit.register(os._exit, 3)
""",
    "thread_exits_nonzero_after_main": """\
import threading, time, os
threading.Thread(target=lambda: (time.sleep(0.1), os._exit(4))).start()
""",
    "input_without_stdin": "input()",
    "keyboard_interrupt": "raise KeyboardInterrupt",
    "syntax_error": """\
def f(:

""",
    "memory_error": "x = bytearray(1 << 40)",
}


def _plain(code: str) -> int:
    """python3 -I -S FILE, as a person would run it (stdin /dev/null, empty environment)."""
    with tempfile.TemporaryDirectory() as d:
        path = os.path.join(d, "main.py")
        with open(path, "w") as f:
            f.write(code)
        return subprocess.run(
            ["/usr/bin/python3", "-I", "-S", path],
            cwd=d,
            env={},
            stdin=subprocess.DEVNULL,
            capture_output=True,
            timeout=30,
        ).returncode


@pytest.fixture(scope="module")
def verdicts():
    if os.geteuid() != 0:
        pytest.skip("compared with the full isolation level, which needs root here (CI runs as root)")
    programs = {**ORDINARY, **FAILING}
    with Sandbox(timeout=10.0, memory_mb=1024, workers=2) as sb:
        results = dict(zip(programs, sb.run_scripts(list(programs.values()))))
    with ThreadPoolExecutor(2) as pool:
        plain = dict(zip(programs, pool.map(_plain, programs.values())))
    return results, plain


def test_the_corpus_has_at_least_forty_ordinary_programs():
    assert len(ORDINARY) >= 40


@pytest.mark.parametrize("name", sorted(ORDINARY))
def test_an_ordinary_program_passes_where_plain_python_exits_0(verdicts, name):
    results, plain = verdicts
    assert plain[name] == 0, f"the corpus program {name} does not run under plain python3"
    assert results[name]["status"] == "passed", (name, results[name])


@pytest.mark.parametrize("name", sorted(FAILING))
def test_a_failing_program_fails_where_plain_python_exits_nonzero(verdicts, name):
    results, plain = verdicts
    assert plain[name] != 0
    assert results[name]["status"] != "passed", (name, results[name])
