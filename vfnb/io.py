"""File I/O shared by every module: atomic writes, safe YAML, safe names, NIfTI.

Nothing here ever overwrites a file in place: a file is written under a temporary
name in the same folder and renamed over its final name (atomic on POSIX), and an
output folder is built as a hidden sibling and renamed into place when complete.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import gzip
import json
import math
import os
import shutil
import socket
import sys
import time
import uuid
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import yaml

from .errors import DatasetError, VfnbError

NIFTI_SUFFIX = ".nii.gz"
#: The file endings of a NIfTI file, longest first.
NIFTI_ENDINGS = (".nii.gz", ".nii")
#: How far (mm) two affines may differ and still describe one voxel grid (a CT and its label map).
AFFINE_TOLERANCE_MM = 1e-3


# ---------------------------------------------------------------- atomic writes
def _tmp_sibling(path: Path) -> Path:
    # keep the full suffix (.nii.gz, .pt) so libraries that look at it behave
    return path.with_name(f".tmp-{uuid.uuid4().hex[:8]}-{path.name}")


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it to ``path`` on success."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _tmp_sibling(path)
    try:
        try:
            yield tmp
        except OSError as exc:
            if exc.filename is None:  # a failed write() (full disk, `ulimit -f`) names no file: name ours
                raise OSError(exc.errno, exc.strerror or str(exc), str(path)) from None
            raise
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return Path(path)


def atomic_write_json(path: str | os.PathLike, obj: Any) -> Path:
    return atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=False, default=_json_default) + "\n")


def atomic_write_yaml(path: str | os.PathLike, obj: Any) -> Path:
    return atomic_write_text(path, yaml.safe_dump(obj, sort_keys=False, default_flow_style=False))


def _json_default(obj: Any) -> Any:
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"cannot write {type(obj).__name__} to JSON")


def atomic_torch_save(obj: Any, path: str | os.PathLike) -> Path:
    import torch

    with atomic_path(path) as tmp:
        try:
            torch.save(obj, tmp)
        except RuntimeError as exc:  # torch reports a full disk as "PytorchStreamWriter failed writing file"
            raise VfnbError(f"{path}: could not write the checkpoint ({str(exc).splitlines()[0][:200]}); "
                            "check free space and permissions") from None
    return Path(path)


# ---------------------------------------------------------------- CSV tables for spreadsheets
#: A text cell starting with one of these is a formula to a spreadsheet (``=HYPERLINK(...)``).
FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


def spreadsheet_text(value: Any) -> Any:
    """``value`` as a spreadsheet shows text: a leading apostrophe when it would start a formula.

    Only strings change; numbers stay numbers (a negative number is not text).
    """
    if isinstance(value, str) and value.startswith(FORMULA_START):
        return "'" + value
    return value


def _text_columns(table) -> list:
    from pandas.api.types import is_object_dtype, is_string_dtype

    return [c for c in table.columns if is_object_dtype(table[c].dtype) or is_string_dtype(table[c].dtype)]


def spreadsheet_safe(table):
    """A copy of DataFrame ``table`` whose text cells cannot run as spreadsheet formulas."""
    table = table.copy()
    for column in _text_columns(table):
        table[column] = table[column].map(spreadsheet_text)
    return table


def spreadsheet_unescape(table):
    """The inverse of :func:`spreadsheet_safe`, for tables vfnb reads back."""
    table = table.copy()
    for column in _text_columns(table):
        table[column] = table[column].map(
                lambda v: v[1:] if isinstance(v, str) and v.startswith("'") and v[1:].startswith(FORMULA_START) else v)
    return table


# ---------------------------------------------------------------- outputs never over inputs
def overlap(a: str | os.PathLike, b: str | os.PathLike) -> bool:
    """Whether paths ``a`` and ``b`` are one, or one lies inside the other (after resolving symlinks)."""
    ra, rb = Path(a).resolve(), Path(b).resolve()
    return ra == rb or ra in rb.parents or rb in ra.parents


def refuse_outputs_over_inputs(outputs: dict, inputs: dict, error: type[VfnbError] = VfnbError) -> None:
    """Refuse an output that is, contains or lies inside an input (``--overwrite`` or not).

    ``outputs`` / ``inputs``: what each path is called (``"--out"``, ``"dataset"``) ->
    the path (None: not given). Writing there would replace or mix into the user's data.
    """
    for out_name, out in outputs.items():
        for in_name, given in inputs.items():
            if out is not None and given is not None and overlap(out, given):
                raise error(f"{out}: {out_name} is, contains or lies inside the input {in_name} {given}; "
                            "expected an output outside every input (nothing of the inputs is ever written over)")


OUTPUT_MARKER = ".vfnb-output"  # written into every output folder vfnb builds; --overwrite needs it
# folders written before the marker existed: their manifests identify them as ours
LEGACY_MANIFESTS = ("provenance.json", "preprocess.json", "synth.json", "verse_import.json")
LOCK_SUFFIX = ".vfnb-lock"


def pid_alive(pid: int) -> bool:
    """Whether process ``pid`` exists (on this machine)."""
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError, ValueError):
        return pid > 0
    return True


def _lock_holder(lock: Path) -> dict | None:
    """``{"pid", "host", "since_utc"}`` written in ``lock`` (None when unreadable or still empty).

    A lock holds one line ``<pid> <host> <since>``; a lock of an older sweep (a JSON
    object with the same keys) is read too.
    """
    try:
        text = lock.read_text(encoding="utf-8").strip()
        if text.startswith("{"):
            data = json.loads(text)
            return {"pid": int(data["pid"]), "host": data.get("host"), "since_utc": data.get("since_utc")}
        fields = text.split()
        return {"pid": int(fields[0]), "host": fields[1] if len(fields) > 1 else None,
                "since_utc": fields[2] if len(fields) > 2 else None}
    except (OSError, ValueError, IndexError, KeyError, TypeError):
        return None


def _lock_owner(lock: Path) -> int | None:
    holder = _lock_holder(lock)
    return None if holder is None else holder["pid"]


LOCK_WRITE_GRACE_S = 10.0  # a lock file younger than this without a pid is being written, not stale


def _just_created(lock: Path) -> bool:
    try:
        return time.time() - lock.stat().st_mtime < LOCK_WRITE_GRACE_S
    except OSError:
        return False


def _held_elsewhere(holder: dict) -> bool:
    """The holder is alive, or runs on another machine sharing the folder (its pid cannot be checked here)."""
    if holder["pid"] == os.getpid():
        return False
    if holder["host"] not in (None, socket.gethostname()):
        return True
    return pid_alive(holder["pid"])


def _refusal(lock: Path, what: str, holder: dict | None, error: type[VfnbError]) -> VfnbError:
    """The error naming what is locked, the lock file and its holder (process, machine, since when)."""
    if holder is None:
        return error(f"{what}: another vfnb run is starting to write it now (lock {lock}); "
                     "wait for it to finish or choose another folder")
    where = "" if holder["host"] in (None, socket.gethostname()) else f" on {holder['host']}"
    since = f", since {holder['since_utc']}" if holder["since_utc"] else ""
    return error(f"{what}: another vfnb run (process {holder['pid']}{where}{since}) is writing it now "
                 f"(lock {lock}); wait for it to finish or choose another folder, or delete the lock file "
                 "if that process is gone")


def _lock_line() -> str:
    since = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
    return f"{os.getpid()} {socket.gethostname()} {since}\n"


def claim_lock(lock: str | os.PathLike, what: str, error: type[VfnbError] = VfnbError) -> Path:
    """Create ``lock`` with O_EXCL holding this process id, host and time; refuse when another holds it.

    A lock left by a process of this machine that no longer runs (killed) is taken
    over; one held from another machine (a shared folder) is not, as its process
    cannot be checked from here. ``what`` names the thing claimed in the message
    (e.g. the output folder); ``error``: the :class:`VfnbError` kind raised.
    """
    lock = Path(lock)
    lock.parent.mkdir(parents=True, exist_ok=True)
    for _ in range(3):
        try:
            fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            holder = _lock_holder(lock)
            if holder is None and _just_created(lock):
                # created with O_EXCL a moment ago, its owner's pid not yet written: a live claim, not a stale one
                raise _refusal(lock, what, None, error) from None
            if holder is not None and _held_elsewhere(holder):
                raise _refusal(lock, what, holder, error) from None
            # stale: its process died; move it aside atomically so only one taker wins
            with contextlib.suppress(FileNotFoundError):
                os.replace(lock, lock.with_name(f"{lock.name}.stale-{uuid.uuid4().hex[:8]}"))
                for stale in lock.parent.glob(f"{lock.name}.stale-*"):
                    stale.unlink(missing_ok=True)
            continue
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(_lock_line())
        return lock
    raise error(f"{what}: could not claim {lock} (another run keeps taking it)")


def release_lock(lock: Path | None) -> None:
    """Remove ``lock`` when this process holds it (a lock taken over by another is left alone)."""
    if lock is not None and _lock_owner(lock) == os.getpid():
        lock.unlink(missing_ok=True)


@contextlib.contextmanager
def held_lock(lock: str | os.PathLike, what: str, error: type[VfnbError] = VfnbError) -> Iterator[Path]:
    """:func:`claim_lock` for the duration of a ``with`` block, released at its end."""
    path = claim_lock(lock, what, error)
    try:
        yield path
    finally:
        release_lock(path)


def is_vfnb_output(path: Path) -> bool:
    """An empty folder, or one holding :data:`OUTPUT_MARKER` or a legacy manifest (see :func:`output_folder`)."""
    if not path.is_dir() or path.is_symlink():
        return False
    names = {p.name for p in path.iterdir()}
    return not names or OUTPUT_MARKER in names or any(m in names for m in LEGACY_MANIFESTS)


def _staging_prefix(path: Path) -> str:
    return f".tmp-{path.name}-"


def clean_stale_staging(path: Path) -> list[Path]:
    """Remove staging folders of ``path`` left by processes that no longer run; return them.

    Staging folders are named ``.tmp-<name>-<pid>-<random>``; one whose process is
    alive (a concurrent run) is left alone.
    """
    removed = []
    prefix = _staging_prefix(path)
    if not path.parent.is_dir():
        return removed
    for candidate in path.parent.glob(prefix + "*"):
        rest = candidate.name[len(prefix):].split("-")
        if not candidate.is_dir() or len(rest) != 2 or not rest[0].isdigit():
            continue
        if not pid_alive(int(rest[0])):
            shutil.rmtree(candidate, ignore_errors=True)
            removed.append(candidate)
    return removed


@contextlib.contextmanager
def output_folder(path: str | os.PathLike, overwrite: bool = False) -> Iterator[Path]:
    """Build an output folder atomically, claimed by this run alone.

    Refuses an existing ``path`` unless ``overwrite``, and refuses to overwrite a
    folder vfnb did not write (no :data:`OUTPUT_MARKER`, no legacy manifest, not
    empty). A lock file ``.<name>.vfnb-lock`` beside ``path`` (created with O_EXCL)
    refuses a second run into the same ``path`` while this one runs. Staging
    folders left by killed runs are removed (and said so on stderr). Yields a
    hidden staging folder ``.tmp-<name>-<pid>-<random>`` beside ``path`` (mode
    from the umask); on success the marker is written into it and it replaces
    ``path`` (the old one is removed only after the new one is complete). On error
    the staging folder is removed and ``path`` is untouched.
    """
    path = Path(path)
    if path.exists() and not overwrite:
        raise VfnbError(f"{path}: output folder already exists (choose another folder, or pass --overwrite)")
    _refuse_foreign(path, overwrite)
    path.parent.mkdir(parents=True, exist_ok=True)
    lock = claim_lock(path.with_name(f".{path.name}{LOCK_SUFFIX}"), f"{path}: output folder")
    staging = None
    try:
        for stale in clean_stale_staging(path):
            print(f"note: removed {stale}, the staging folder of an earlier run that did not finish",
                  file=sys.stderr)
        # checked again under the lock: a run that finished meanwhile must not be replaced silently
        if path.exists() and not overwrite:
            raise VfnbError(f"{path}: output folder already exists (another run wrote it while this one started)")
        _refuse_foreign(path, overwrite)
        staging = path.with_name(f"{_staging_prefix(path)}{os.getpid()}-{uuid.uuid4().hex[:8]}")
        staging.mkdir()  # plain mkdir: the umask applies (tempfile.mkdtemp forces 0700)
        yield staging
        atomic_write_json(staging / OUTPUT_MARKER, {"written_by": "vfnb"})
        if path.exists():
            old = path.with_name(f".old-{uuid.uuid4().hex[:8]}-{path.name}")
            os.replace(path, old)
            os.replace(staging, path)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(staging, path)
    finally:
        if staging is not None and staging.exists():
            shutil.rmtree(staging, ignore_errors=True)
        release_lock(lock)


def _refuse_foreign(path: Path, overwrite: bool) -> None:
    if overwrite and path.exists() and not is_vfnb_output(path):
        raise VfnbError(f"{path}: --overwrite refused: this {'folder' if path.is_dir() else 'path'} does not look "
                        f"like a vfnb output (no {OUTPUT_MARKER} marker or manifest such as "
                        f"{', '.join(LEGACY_MANIFESTS)}), so it may hold unrelated files; remove it yourself "
                        "if it is meant to go, or choose another folder")


# ---------------------------------------------------------------- safe reading
class _StrictLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` that refuses aliases and duplicate mapping keys.

    Aliases (``*name``) are refused outright: no file vfnb reads needs them, and
    nested aliases ("billion laughs") expand to gigabytes. A duplicate key would
    silently drop every earlier value (the last one wins in PyYAML).
    """

    def compose_node(self, parent, index):
        if self.check_event(yaml.AliasEvent):
            event = self.peek_event()
            raise yaml.constructor.ConstructorError(
                None, None, f"alias *{event.anchor} refused (YAML aliases are not accepted)", event.start_mark)
        return super().compose_node(parent, index)

    def construct_mapping(self, node, deep=False):
        seen = {}
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=True)
            with contextlib.suppress(TypeError):
                if key in seen:
                    raise yaml.constructor.ConstructorError(
                        None, None, f"duplicate key {key!r} (first at line {seen[key] + 1})", key_node.start_mark)
                seen[key] = key_node.start_mark.line
        return super().construct_mapping(node, deep=deep)


def parse_yaml(text: str, where: str, error: type[VfnbError] = DatasetError) -> Any:
    """Parse YAML ``text`` safely (no Python tags, no aliases, no duplicate keys); errors start with ``where``."""
    try:
        return yaml.load(text, Loader=_StrictLoader)  # noqa: S506 - _StrictLoader is a SafeLoader
    except yaml.constructor.ConstructorError as exc:
        at = f" at line {exc.problem_mark.line + 1}" if exc.problem_mark is not None else ""
        problem = exc.problem or ""
        if problem.startswith(("duplicate key", "alias")):
            raise error(f"{where}: {problem}{at}; expected each key once and no aliases") from None
        raise error(f"{where}: YAML carries a tag that safe loading refuses ({problem}); expected plain YAML") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        at = f" at line {mark.line + 1}" if mark is not None else ""
        raise error(f"{where}: not valid YAML{at}") from None


def load_yaml(path: str | os.PathLike) -> Any:
    """Read a YAML file with :func:`parse_yaml`; errors name the file."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise DatasetError(f"{path}: file not found") from None
    except IsADirectoryError:
        raise DatasetError(f"{path}: is a folder; expected a YAML file") from None
    except UnicodeDecodeError:
        raise DatasetError(f"{path}: not UTF-8 text (expected a YAML file)") from None
    return parse_yaml(text, str(path))


def safe_member(root: str | os.PathLike, name: Any, what: str = "file name") -> Path:
    """Return ``root / name`` for a bare file name; refuse anything that could leave ``root``.

    ``name`` must be a plain string with no path component: no ``/`` or ``\\``, not
    ``.``/``..``, not absolute, no NUL. Raises :class:`DatasetError` naming ``what``.
    """
    if not isinstance(name, str) or not name:
        raise DatasetError(f"{root}: {what} {name!r} is not a file name (expected a non-empty string)")
    if "/" in name or "\\" in name or "\x00" in name or name in (".", "..") or os.path.isabs(name):
        raise DatasetError(
            f"{root}: {what} {name!r} has a path component; expected a bare file name inside the dataset folder"
        )
    return Path(root) / name


NIFTI_SIZE_LIMIT_ENV = "VFNB_MAX_NIFTI_GB"
DEFAULT_NIFTI_SIZE_LIMIT_GB = 4.0  # voxel data of one NIfTI, decompressed; a 512^2 x 2000 float32 CT is 2 GB


def nifti_size_limit() -> int:
    """Largest voxel array (bytes) a NIfTI may claim: ``$VFNB_MAX_NIFTI_GB`` GB, default 4."""
    text = os.environ.get(NIFTI_SIZE_LIMIT_ENV, "")
    if not text:
        return int(DEFAULT_NIFTI_SIZE_LIMIT_GB * 2**30)
    try:
        limit = float(text)
    except ValueError:
        limit = float("nan")
    if not (math.isfinite(limit) and limit > 0):
        raise VfnbError(f"environment variable {NIFTI_SIZE_LIMIT_ENV}={text!r}; expected a positive number of GB")
    return int(limit * 2**30)


def not_a_regular_file(path: Path) -> str | None:
    """Why ``path`` cannot be read as a data file (missing, a folder, a device, a FIFO, a socket), or None."""
    import stat

    try:
        mode = path.stat().st_mode
    except FileNotFoundError:
        return "file not found"
    except OSError as exc:
        return f"cannot be read ({exc.strerror or exc})"
    if stat.S_ISREG(mode):
        return None
    kind = ("a folder" if stat.S_ISDIR(mode) else "a character device" if stat.S_ISCHR(mode)
            else "a block device" if stat.S_ISBLK(mode) else "a named pipe (FIFO)" if stat.S_ISFIFO(mode)
            else "a socket" if stat.S_ISSOCK(mode) else "not a plain file")
    return f"not a regular file ({kind}); expected a NIfTI file"


def _open_header(path: Path):
    """nibabel image with the header read and no voxels; refuses an array larger than the limit."""
    import nibabel as nib

    problem = not_a_regular_file(path)
    if problem:
        raise DatasetError(f"{path}: {problem}")
    try:
        img = nib.load(str(path))
        shape = tuple(int(s) for s in img.shape)
        nbytes = math.prod(shape) * img.header.get_data_dtype().itemsize
    except Exception as exc:  # nibabel raises many types for broken files
        raise DatasetError(f"{path}: cannot read NIfTI header ({type(exc).__name__}: {exc}); "
                           "expected a NIfTI file (is it corrupt or truncated?)") from None
    if nbytes > nifti_size_limit():
        raise DatasetError(f"{path}: header claims a {'x'.join(map(str, shape))} voxel array of "
                           f"{nbytes / 2**30:.1f} GB, over the limit of {nifti_size_limit() / 2**30:.1f} GB; "
                           f"expected a CT of plausible size (raise the limit with {NIFTI_SIZE_LIMIT_ENV}=<GB>)")
    return img


def nifti_geometry_problem(img) -> str | None:
    """Why a NIfTI's voxel -> world mapping cannot be trusted, or None.

    Refused: an affine that is not finite or not invertible (e.g. an all-zero sform),
    and a header with no geometry at all (qform and sform codes 0 and a zero or
    non-finite voxel size, where nibabel would silently assume 1 mm voxels).
    """
    header = img.header
    affine = np.asarray(img.affine, dtype=np.float64)
    codes = [int(header.get(f"{kind}_code", 0)) for kind in ("qform", "sform")]
    # nibabel's loader quietly sets zero pixdims to 1: read them as the file has them
    raw = _raw_header(img)
    zooms = [float(z) for z in (raw if raw is not None else header)["pixdim"][1:4]]
    if not any(codes) and not all(math.isfinite(z) and z > 0 for z in zooms):
        return (f"no geometry: qform_code and sform_code are 0 and the voxel size (pixdim) is {zooms}; "
                "expected voxel sizes in mm (pixdim > 0) or a qform/sform")
    if affine.shape != (4, 4) or not np.all(np.isfinite(affine)) or abs(np.linalg.det(affine[:3, :3])) < 1e-9:
        which = "sform" if codes[1] else "qform" if codes[0] else "pixdim"
        return (f"voxel -> world affine (from the {which}) is not an invertible finite matrix; "
                "expected a header with valid voxel spacing and orientation")
    return None


def _raw_header(img):
    """The header exactly as stored in ``img``'s file (no fixes applied), or None."""
    filename = img.get_filename()
    if not filename:
        return None
    try:
        opener = gzip.open if filename.endswith(".gz") else open
        with opener(filename, "rb") as f:
            return type(img.header).from_fileobj(f, check=False)
    except Exception:
        return None


TRAILING_BYTES_ALLOWED = 1 << 20  # data past the voxel array a NIfTI may carry (writers' padding), read and ignored


def _read_bounded(path: Path, expected: int) -> bytes:
    """The file's (decompressed) bytes, refusing more than ``expected`` + :data:`TRAILING_BYTES_ALLOWED`.

    A gzip stream is read in chunks and never beyond that bound, so a small file
    whose stream inflates to gigabytes (a decompression bomb) costs no more memory
    than the array its header declares. Reading to the end of an accepted stream
    makes gzip check the CRC and length stored in its trailer.
    """
    bound = expected + TRAILING_BYTES_ALLOWED
    opener = gzip.open if path.name.endswith(".gz") else open
    chunks, size = [], 0
    with opener(path, "rb") as f:
        while chunk := f.read(min(1 << 24, bound + 1 - size)):
            chunks.append(chunk)
            size += len(chunk)
            if size > bound:
                raise _extra_data(path, expected)
    return b"".join(chunks)


def _extra_data(path: Path, expected: int) -> DatasetError:
    return DatasetError(f"{path}: the file holds more than {TRAILING_BYTES_ALLOWED} bytes of data after the voxel "
                        f"array its header declares ({expected} bytes in all); expected a NIfTI file that ends "
                        "with its voxels (is it corrupt, or a decompression bomb?)")


def _declared_bytes(img) -> int:
    """Header + extensions + voxel array: the bytes a NIfTI file needs, from its header."""
    return int(img.header.get_data_offset()) + math.prod(img.shape) * img.header.get_data_dtype().itemsize


def link_outside(root: str | os.PathLike, path: str | os.PathLike) -> str | None:
    """A warning when ``path`` (inside dataset folder ``root``) is a symlink leading out of ``root``, else None.

    Such links are followed (data kept on another disk is common), but said so: the
    dataset is then not self-contained and its files may change under it.
    """
    path = Path(path)
    real_root, real = Path(root).resolve(), path.resolve()
    if real == real_root or real_root in real.parents:
        return None
    return f"{path}: symbolic link to {real}, outside the dataset folder {root}; it is followed"


def load_nifti(path: str | os.PathLike, *, dtype: Any = None):
    """Load a NIfTI file fully; returns ``(data, affine, header)``.

    Refuses, naming the file: a header whose voxel array exceeds the size limit
    (:func:`nifti_size_limit`; checked before anything is decompressed), a gzip
    stream that is truncated or fails its CRC, too few voxel bytes, more data than
    the header declares (read no further than that: :func:`_read_bounded`), an untrustworthy
    geometry (:func:`nifti_geometry_problem`) and NaN or infinite voxel values.
    """
    import nibabel as nib

    path = Path(path)
    header_img = _open_header(path)
    problem = nifti_geometry_problem(header_img)
    if problem:
        raise DatasetError(f"{path}: {problem}")
    try:
        raw = _read_bounded(path, _declared_bytes(header_img))
        try:
            img = nib.Nifti1Image.from_bytes(raw)
        except Exception:
            img = nib.Nifti2Image.from_bytes(raw)
        del raw
        data = np.asanyarray(img.dataobj)
    except MemoryError:
        raise DatasetError(f"{path}: not enough memory to read this NIfTI") from None
    except DatasetError:
        raise
    except Exception as exc:  # gzip, zlib, nibabel and numpy each raise their own types
        raise DatasetError(f"{path}: cannot read NIfTI ({type(exc).__name__}: {exc}); the file is corrupt "
                           "or truncated (expected a complete NIfTI file)") from None
    if data.dtype.kind in "fc":
        finite = np.isfinite(data)
        if not finite.all():
            bad = np.argwhere(~finite)
            raise DatasetError(f"{path}: {len(bad)} voxel(s) are NaN or infinite (first at voxel "
                               f"{tuple(int(i) for i in bad[0])}); expected finite values (HU for a CT)")
        del finite
    if dtype is not None:
        data = data.astype(dtype, copy=False)
    return data, np.asarray(img.affine, dtype=np.float64), img.header


def verify_nifti(path: str | os.PathLike) -> tuple[tuple[int, ...], np.ndarray, Any]:
    """Check a NIfTI file as :func:`load_nifti` would without keeping its voxels: ``(shape, affine, header)``.

    The gzip stream is read through in chunks (CRC checked, voxel bytes counted),
    so a large CT costs no memory. Finite values are checked for float data only,
    by loading it.
    """
    path = Path(path)
    img = _open_header(path)
    if img.header.get_data_dtype().kind in "fc" or float(img.header.get("scl_slope", 0) or 0) not in (0.0, 1.0):
        _, affine, header = load_nifti(path)
        return tuple(int(s) for s in img.shape), affine, header
    problem = nifti_geometry_problem(img)
    if problem:
        raise DatasetError(f"{path}: {problem}")
    expected = _declared_bytes(img)
    bound = expected + TRAILING_BYTES_ALLOWED
    try:
        opener = gzip.open if path.name.endswith(".gz") else open
        size = 0
        with opener(path, "rb") as f:
            while size <= bound and (chunk := f.read(1 << 22)):
                size += len(chunk)
    except Exception as exc:
        raise DatasetError(f"{path}: cannot read NIfTI ({type(exc).__name__}: {exc}); the file is corrupt "
                           "or truncated (expected a complete NIfTI file)") from None
    if size > bound:
        raise _extra_data(path, expected)
    if size < expected:
        raise DatasetError(f"{path}: cannot read NIfTI ({size} bytes of data, the header needs {expected}); "
                           "the file is truncated (expected a complete NIfTI file)")
    return tuple(int(s) for s in img.shape), np.asarray(img.affine, dtype=np.float64), img.header


def save_nifti(path: str | os.PathLike, data: np.ndarray, affine: np.ndarray) -> Path:
    """Write ``data`` with ``affine`` to ``path`` atomically (dtype kept as given)."""
    import nibabel as nib

    img = nib.Nifti1Image(np.asarray(data), np.asarray(affine, dtype=np.float64))
    img.header.set_data_dtype(np.asarray(data).dtype)
    img.set_qform(img.affine, code=1)
    img.set_sform(img.affine, code=1)
    with atomic_path(path) as tmp:
        nib.save(img, str(tmp))
    return Path(path)


def strip_nifti_suffix(name: str) -> str:
    for suffix in NIFTI_ENDINGS:
        if name.endswith(suffix):
            return name[: -len(suffix)]
    return name
