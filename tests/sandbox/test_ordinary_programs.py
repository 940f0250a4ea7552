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
    "asyncio_gather": "import asyncio\nasync def f(i):\n    await asyncio.sleep(0.01)\n    return i\n"
    "async def main():\n    return await asyncio.gather(*(f(i) for i in range(5)))\n"
    "assert asyncio.run(main()) == [0, 1, 2, 3, 4]",
    "asyncio_queue": "import asyncio\nasync def main():\n    q = asyncio.Queue()\n"
    "    async def prod():\n        for i in range(10):\n            await q.put(i)\n        await q.put(None)\n"
    "    async def cons():\n        out = []\n        while (x := await q.get()) is not None:\n"
    "            out.append(x)\n        return out\n"
    "    _, out = await asyncio.gather(prod(), cons())\n    assert out == list(range(10))\nasyncio.run(main())",
    "asyncio_timeout": "import asyncio\nasync def main():\n    try:\n"
    "        await asyncio.wait_for(asyncio.sleep(5), 0.05)\n    except asyncio.TimeoutError:\n"
    "        print('timed out')\nasyncio.run(main())",
    "sqlite_memory": "import sqlite3\nc = sqlite3.connect(':memory:')\nc.execute('create table t (x int)')\n"
    "c.executemany('insert into t values (?)', [(i,) for i in range(100)])\n"
    "assert c.execute('select sum(x) from t').fetchone() == (4950,)",
    "threads_lock": "import threading\nn = 0\nlock = threading.Lock()\ndef work():\n    global n\n"
    "    for _ in range(1000):\n        with lock:\n            n += 1\n"
    "ts = [threading.Thread(target=work) for _ in range(4)]\n[t.start() for t in ts]\n[t.join() for t in ts]\n"
    "assert n == 4000",
    "thread_pool": "from concurrent.futures import ThreadPoolExecutor\n"
    "with ThreadPoolExecutor(4) as ex:\n    assert list(ex.map(lambda x: x * x, range(20)))[-1] == 361",
    "queue_workers": "import queue, threading\nq = queue.Queue()\nout = []\ndef w():\n"
    "    while (x := q.get()) is not None:\n        out.append(x)\nt = threading.Thread(target=w)\nt.start()\n"
    "for i in range(50):\n    q.put(i)\nq.put(None)\nt.join()\nassert len(out) == 50",
    "tempfile_named": "import tempfile\nwith tempfile.NamedTemporaryFile('w+') as f:\n    f.write('data')\n"
    "    f.seek(0)\n    assert f.read() == 'data'",
    "tempdir_pathlib": "import tempfile, pathlib\nwith tempfile.TemporaryDirectory() as d:\n"
    "    p = pathlib.Path(d) / 'a' / 'b.txt'\n    p.parent.mkdir()\n    p.write_text('x')\n"
    "    assert [q.name for q in pathlib.Path(d).rglob('*.txt')] == ['b.txt']",
    "shutil_copy": "import shutil, tempfile, os\nd = tempfile.mkdtemp()\nopen(os.path.join(d, 'a'), 'w').write('1')\n"
    "shutil.copy2(os.path.join(d, 'a'), os.path.join(d, 'b'))\nshutil.copytree(d, d + '_copy')\n"
    "shutil.rmtree(d)\nshutil.rmtree(d + '_copy')",
    "zoneinfo": "from zoneinfo import ZoneInfo\nfrom datetime import datetime\n"
    "t = datetime(2024, 7, 1, 12, tzinfo=ZoneInfo('America/New_York'))\n"
    "assert t.astimezone(ZoneInfo('UTC')).hour == 16",
    "locale_c_utf8": "import locale\nlocale.setlocale(locale.LC_ALL, 'C.UTF-8')\nprint(locale.getlocale())",
    "json_roundtrip": "import json\nd = {'a': [1, 2.5, None, True], 'b': {'c': 'é'}}\nassert json.loads(json.dumps(d)) == d",
    "regex": "import re\nassert re.findall(r'\\d+', 'a1b22c333') == ['1', '22', '333']",
    "collections": "from collections import Counter, deque, defaultdict, OrderedDict\n"
    "assert Counter('abca').most_common(1) == [('a', 2)]\nd = deque([1, 2])\nd.appendleft(0)\n"
    "dd = defaultdict(list)\ndd['x'].append(1)\nprint(d, dict(dd), OrderedDict(a=1))",
    "functools_cache": "from functools import lru_cache, reduce\n@lru_cache(None)\ndef fib(n):\n"
    "    return n if n < 2 else fib(n - 1) + fib(n - 2)\nassert fib(80) == 23416728348467685\n"
    "assert reduce(lambda a, b: a * b, range(1, 6)) == 120",
    "dataclasses_future": "from __future__ import annotations\nfrom dataclasses import dataclass, field\n"
    "from typing import ClassVar\n@dataclass(order=True)\nclass P:\n    x: int\n    y: int = 0\n"
    "    tags: list[str] = field(default_factory=list)\n    n: ClassVar[int] = 0\n"
    "assert sorted([P(2), P(1)])[0].x == 1",
    "enum_typing": "import enum\nfrom typing import NamedTuple, Optional\nclass C(enum.Enum):\n    RED = 1\n"
    "class Pt(NamedTuple):\n    x: int\n    y: Optional[int] = None\nassert C(1) is C.RED and Pt(1).y is None",
    "decimal_fractions": "from decimal import Decimal, getcontext\nfrom fractions import Fraction\n"
    "getcontext().prec = 50\nassert str(Decimal(1) / Decimal(7))[:10] == '0.14285714'\n"
    "assert Fraction(1, 3) + Fraction(1, 6) == Fraction(1, 2)",
    "math_statistics": "import math, statistics\nassert math.isclose(math.sqrt(2) ** 2, 2)\n"
    "assert statistics.median([3, 1, 2]) == 2 and round(statistics.stdev([1, 2, 3, 4]), 3) == 1.291",
    "random_seeded": "import random\nrandom.seed(0)\nxs = [random.randint(0, 9) for _ in range(5)]\n"
    "random.shuffle(xs)\nprint(xs, random.choice('abc'))",
    "datetime_format": "import datetime, time\nd = datetime.date(2024, 2, 29)\n"
    "assert d.strftime('%A') == 'Thursday'\nprint(time.strftime('%Y'), time.monotonic() > 0)",
    "hashing": "import hashlib, hmac\nassert hashlib.sha256(b'abc').hexdigest().startswith('ba7816bf')\n"
    "print(hmac.new(b'k', b'm', 'sha1').hexdigest(), hashlib.md5(b'').hexdigest())",
    "compression": "import zlib, gzip, bz2, lzma, base64\nb = b'x' * 10000\n"
    "for m in (zlib, gzip, bz2, lzma):\n    assert m.decompress(m.compress(b)) == b\n"
    "assert base64.b64decode(base64.b64encode(b)) == b",
    "csv_io": "import csv, io\nbuf = io.StringIO()\ncsv.writer(buf).writerows([[1, 'a'], [2, 'b']])\n"
    "assert list(csv.reader(io.StringIO(buf.getvalue()))) == [['1', 'a'], ['2', 'b']]",
    "heapq_bisect": "import heapq, bisect\nh = [5, 1, 3]\nheapq.heapify(h)\nassert heapq.heappop(h) == 1\n"
    "a = [1, 3, 5]\nbisect.insort(a, 4)\nassert a == [1, 3, 4, 5]",
    "sys_exit_zero": "import sys\nprint('done')\nsys.exit(0)",
    "sys_exit_none": "import sys\nsys.exit()",
    "raise_system_exit_zero": "raise SystemExit(0)",
    "atexit_hook": "import atexit\natexit.register(print, 'bye')\nprint('hi')",
    "thread_outlives_main": "import threading, time\n"
    "threading.Thread(target=lambda: (time.sleep(0.1), print('late'))).start()",
    "daemon_thread_left_running": "import threading, time\n"
    "threading.Thread(target=time.sleep, args=(60,), daemon=True).start()",
    "exception_in_thread": "import threading\ndef f():\n    raise ValueError('in a thread only')\n"
    "t = threading.Thread(target=f)\nt.start()\nt.join()",
    "moderate_memory": "x = bytearray(64 << 20)\nx[-1] = 1\ny = [0] * 2_000_000\nprint(len(x) + len(y))",
    "moderate_output": "for i in range(20000):\n    print(i, 'line of output')",
    "recursion_500": "def f(n):\n    return 0 if n == 0 else 1 + f(n - 1)\nassert f(500) == 500",
    "pickle_main_class": "import pickle\nclass A:\n    def __init__(self):\n        self.v = [1, 2]\n"
    "assert pickle.loads(pickle.dumps(A())).v == [1, 2]",
    "unittest_main": "import unittest\nclass T(unittest.TestCase):\n    def test_add(self):\n"
    "        self.assertEqual(1 + 1, 2)\nunittest.main()",
    "doctest": "def add(a, b):\n    '''\n    >>> add(1, 2)\n    3\n    '''\n    return a + b\n"
    "import doctest\nassert doctest.testmod().failed == 0",
    "argparse": "import argparse\np = argparse.ArgumentParser()\np.add_argument('--n', type=int, default=3)\n"
    "assert p.parse_args([]).n == 3",
    "logging_stderr": "import logging\nlogging.basicConfig(level=logging.INFO)\nlogging.info('hello %s', 'log')",
    "warnings": "import warnings\nwarnings.warn('careful')\nprint('still fine')",
    "struct_array": "import struct, array\nassert struct.unpack('<I', struct.pack('<I', 7)) == (7,)\n"
    "assert array.array('d', [1.0, 2.0]).tolist() == [1.0, 2.0]",
    "uuid_secrets": "import uuid, secrets\nassert len(str(uuid.uuid4())) == 36 and len(secrets.token_hex(8)) == 16",
    "signal_alarm": "import signal, time\nsignal.signal(signal.SIGALRM, lambda *a: None)\nsignal.alarm(5)\n"
    "time.sleep(0.01)\nsignal.alarm(0)",
    "inspect_getsource": "import inspect\ndef f():\n    return 1\nassert 'return 1' in inspect.getsource(f)",
    "textwrap_difflib": "import textwrap, difflib, string\nprint(textwrap.fill('word ' * 30, 40))\n"
    "print(list(difflib.unified_diff(['a'], ['b'])))\nprint(string.Template('$x').substitute(x=1))",
    "os_basics": "import os\nos.makedirs('a/b', exist_ok=True)\nopen('a/b/f', 'w').write('1')\n"
    "print(os.getcwd() != '', sorted(os.listdir('a')), os.cpu_count() is not None, os.getpid() > 0)",
    "platform_sysconfig": "import platform, sysconfig\nprint(platform.python_version(), sysconfig.get_platform())",
    "itertools_generators": "import itertools\ndef gen():\n    yield from range(3)\n"
    "assert list(itertools.chain(gen(), 'ab')) == [0, 1, 2, 'a', 'b']\n"
    "assert len(list(itertools.permutations(range(5)))) == 120",
    "stderr_and_stdout": "import sys\nprint('out')\nprint('err', file=sys.stderr)",
    "sleep_short": "import time\ntime.sleep(0.2)",
}

# Programs that exit non-zero under plain python3: the sandbox must not pass them.
FAILING = {
    "raise": "raise ValueError('no')",
    "assert": "assert 1 + 1 == 3",
    "sys_exit_2": "import sys\nsys.exit(2)",
    "sys_exit_message": "import sys\nsys.exit('a message')",
    "atexit_exits_nonzero": "import atexit, os\natexit.register(os._exit, 3)",
    "thread_exits_nonzero_after_main": "import threading, time, os\n"
    "threading.Thread(target=lambda: (time.sleep(0.1), os._exit(4))).start()",
    "input_without_stdin": "input()",
    "keyboard_interrupt": "raise KeyboardInterrupt",
    "syntax_error": "def f(:\n",
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
