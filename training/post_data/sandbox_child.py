"""The interpreter-side half of the sandbox (:mod:`training.post_data.sandbox`): standard library only.

Run as ``python -I -S sandbox_child.py CONFIG_JSON`` in a fresh interpreter (never imported by the parent). It
reads the cell from the control folder, lowers its own rlimits (CPU, address space, file size, processes), puts
the work folder first on ``sys.path``, installs an audit hook (PEP 578) that refuses file access outside the work
folder (reads of the Python installation are allowed, for imports), sockets, process creation beyond the allowed
count, ``ctypes`` loading and ``gc`` object walks, then runs the cell like a notebook cell: the value of a last
expression statement comes back as its ``repr``. The outcome goes to the parent as one JSON object on an inherited
pipe. A refused event writes ``forbidden`` and ends the process with ``os._exit`` at once, so ``except`` in the
cell cannot swallow it. The audit hook is a tripwire, not the containment: see the parent module's docstring.
"""

from __future__ import annotations

import ast
import contextlib
import json
import linecache
import os
import resource
import sys
import traceback

FORBIDDEN_EXIT = 86
CELL_NAME = "<cell>"


def _write_result(fd: int, payload: dict) -> None:
    data = json.dumps(payload).encode("utf-8")
    while data:
        data = data[os.write(fd, data) :]


def _set_limits(limits: dict) -> None:
    cpu = max(1, int(-(-limits["cpu_seconds"] // 1)))
    resource.setrlimit(resource.RLIMIT_CPU, (cpu, cpu + 1))
    resource.setrlimit(resource.RLIMIT_AS, (limits["memory_bytes"], limits["memory_bytes"]))
    resource.setrlimit(resource.RLIMIT_FSIZE, (limits["file_bytes"], limits["file_bytes"]))
    if os.getuid() != 0:  # the kernel does not count processes against RLIMIT_NPROC for root
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NPROC, (limits["nproc"], limits["nproc"]))


def _make_hook(work: str, read_roots: tuple[str, ...], processes: int, result_fd: int):
    state = [processes]
    work_prefix = work.rstrip(os.sep) + os.sep
    read_prefixes = tuple(root.rstrip(os.sep) + os.sep for root in read_roots)
    write_flags = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND
    spawn_events = {
        "os.fork",
        "os.forkpty",
        "os.posix_spawn",
        "os.spawn",
        "os.system",
        "subprocess.Popen",
        "pty.spawn",
    }
    path_write_events = {
        "os.remove",
        "os.rmdir",
        "os.mkdir",
        "os.rename",
        "os.symlink",
        "os.link",
        "os.chmod",
        "os.chown",
        "os.truncate",
        "os.utime",
        "shutil.rmtree",
        "os.chflags",
        "os.lchflags",
        "os.setxattr",
        "os.removexattr",
    }
    # this script (tracebacks quote its lines) and the devices ordinary code reads.
    read_files = {os.path.realpath(__file__), "/dev/null", "/dev/urandom", "/dev/random"}
    path_read_events = {"os.listdir", "os.scandir", "glob.glob", "os.getxattr", "os.listxattr"}

    def refuse(event: str, why: str) -> None:
        try:
            sys.stdout.flush()
            sys.stderr.flush()
        except Exception:
            pass
        _write_result(result_fd, {"status": "forbidden", "detail": f"{event}: {why}"})
        os._exit(FORBIDDEN_EXIT)

    def where(path) -> str | None:
        if path is None:
            path = "."
        if isinstance(path, int):
            return None  # an already open descriptor
        try:
            path = os.fsdecode(os.fspath(path))
        except TypeError:
            return "?"
        return os.path.realpath(path)

    def inside(path: str, prefixes: tuple[str, ...]) -> bool:
        return any(path == prefix[:-1] or path.startswith(prefix) for prefix in prefixes)

    def check_path(event: str, path, write: bool) -> None:
        real = where(path)
        if real is None or inside(real, (work_prefix,)):
            return
        if not write and inside(real, read_prefixes):
            return
        if real in read_files and not write:
            return
        action = "write" if write else "read"
        refuse(event, f"{action} of {real} outside the work folder is not allowed")

    def hook(event: str, args: tuple) -> None:
        if event == "open":
            path, mode, flags = args
            if isinstance(mode, str):
                write = any(c in mode for c in "wax+")
            else:
                write = bool((flags or 0) & write_flags)
            check_path(event, path, write)
        elif event in path_write_events:
            # a symlink's target is resolved (and checked) when it is opened; a hard link's is not.
            if event != "os.symlink":
                check_path(event, args[0], True)
            if event in ("os.rename", "os.symlink", "os.link") and len(args) > 1:
                check_path(event, args[1], True)
        elif event in path_read_events:
            check_path(event, args[0] if args else None, False)
        elif event.startswith("socket."):
            refuse(event, "network access is not allowed")
        elif event in spawn_events or event.startswith("os.exec"):
            if event.startswith("os.exec") or event == "os.system":
                refuse(event, "running other programs is not allowed")
            if state[0] <= 0:
                refuse(event, f"process limit reached ({processes} extra processes allowed)")
            state[0] -= 1
        elif event in ("os.kill", "os.killpg", "signal.pthread_kill") and args and args[0] != os.getpid():
            refuse(event, "signalling other processes is not allowed")
        elif event.startswith("ctypes.dl") or event == "ctypes.cdata":
            if not (event == "ctypes.dlopen" and args[0] is None and _ctypes_own_import()):
                refuse(event, "loading native code through ctypes is not allowed")
        elif event in ("gc.get_objects", "gc.get_referrers", "gc.get_referents"):
            refuse(event, "walking interpreter objects is not allowed")
        elif event in ("resource.setrlimit", "resource.prlimit"):
            refuse(event, "changing the resource limits is not allowed")

    return hook


def _ctypes_own_import() -> bool:
    """True when ``ctypes`` itself asks for the running process (``pythonapi = PyDLL(None)`` at its import):
    numpy imports ctypes, so that one handle is allowed; any library a cell names is refused."""
    caller = sys._getframe(3)  # _ctypes_own_import <- hook <- CDLL.__init__ <- the module body of ctypes
    loader = sys._getframe(2)
    return (
        loader.f_code.co_name == "__init__"
        and caller.f_code.co_name == "<module>"
        and caller.f_code.co_filename == loader.f_code.co_filename
        and caller.f_code.co_filename.endswith(os.path.join("ctypes", "__init__.py"))
    )


def _run_cell(code: str, namespace: dict) -> str | None:
    tree = ast.parse(code, CELL_NAME)
    last = None
    if tree.body and isinstance(tree.body[-1], ast.Expr):
        last = ast.Expression(tree.body.pop().value)
    exec(compile(tree, CELL_NAME, "exec"), namespace)
    if last is None:
        return None
    value = eval(compile(last, CELL_NAME, "eval"), namespace)
    return None if value is None else repr(value)


def main() -> None:
    config = json.loads(sys.argv[1])
    result_fd = config["result_fd"]
    with open(config["cell_path"], encoding="utf-8") as handle:
        code = handle.read()
    stdin_path = config.get("stdin_path")
    if stdin_path:
        sys.stdin = open(stdin_path, encoding="utf-8")  # noqa: SIM115 (lives as long as the cell)
    linecache.cache[CELL_NAME] = (len(code), None, code.splitlines(True), CELL_NAME)
    work = os.path.realpath(config["work_dir"])
    os.chdir(work)
    sys.path[:0] = [work]
    sys.path.extend(config["extra_sys_path"])
    sys.argv = [CELL_NAME]
    _set_limits(config["limits"])
    sys.addaudithook(_make_hook(work, tuple(config["read_roots"]), config["limits"]["processes"], result_fd))
    namespace = {"__name__": "__main__", "__builtins__": __builtins__}
    payload: dict = {"status": "ok", "detail": "", "value": None}
    try:
        value = _run_cell(code, namespace)
        if value is not None:
            payload["value"] = value[: config["limits"]["output_bytes"]]
    except SystemExit as stop:
        code_ = stop.code
        if code_ not in (None, 0):
            payload.update(status="error", detail=f"SystemExit: {code_}")
    except MemoryError:
        payload.update(status="memory", detail=f"memory limit {config['limits']['memory_bytes']} bytes exceeded")
        traceback.print_exc(limit=-4)
    except BaseException as error:
        frames = error.__traceback__
        while frames is not None and frames.tb_frame.f_code.co_filename != CELL_NAME:
            frames = frames.tb_next  # drop this script's frames; keep the cell's and what it called
        traceback.print_exception(type(error), error, frames)
        line = traceback.format_exception_only(type(error), error)[-1].strip()
        if isinstance(error, OSError) and error.errno == 27:  # EFBIG: RLIMIT_FSIZE
            line = f"file size limit {config['limits']['file_bytes']} bytes exceeded ({line})"
        payload.update(status="error", detail=line, error_type=type(error).__name__)
    try:
        sys.stdout.flush()
        sys.stderr.flush()
    except Exception:
        pass
    _write_result(result_fd, payload)
    os._exit(0 if payload["status"] == "ok" else 1)


if __name__ == "__main__":
    main()
