"""A .pt2 file checked so that loading it cannot run code, as an in-memory archive to load.

torch.export.load (torch/export/pt2_archive/_package.py, torch/_export/serde/serialize.py)
runs code from a crafted file in several ways: it unpickles without restriction every weight or
constant marked `use_pickle`, every `custom_obj_*` / `opaque_obj_*` constant and the sample
inputs when they fail the safe path; it loads every model under models/; it passes the graph's
symbolic expressions to sympy.sympify (which evaluates them), turns `guards_code` into Python
functions, and calls whatever callable a node's target names. Which copy of a duplicated zip
member it reads is up to its C++ reader.

`checked_archive(path)` reads the zip itself, refuses anything but the members of one plain
model (one top folder, no duplicates, no `..` or absolute names, no unknown members, raw
tensors only, sample inputs that load with weights_only=True, aten operators without file or
message arguments, expressions over shape symbols only, no guard code), and returns a fresh
archive holding only the members it checked, written by torch's own archive writer, with the
sample inputs re-saved from their safely loaded value. torch.export.load then reads that copy,
never the file, so the loader sees exactly the bytes the check saw, whatever the file's name.
"""
import io
import json
import re
import zipfile
import zlib

import torch
from torch.export.pt2_archive._package import PT2ArchiveWriter

from errors import UserError, one_line
from utils.safe_files import open_regular

MODEL_JSON = "models/model.json"
SAMPLE_INPUTS = "data/sample_inputs/model.pt"
WEIGHTS_CONFIG = "data/weights/model_weights_config.json"
CONSTANTS_CONFIG = "data/constants/model_constants_config.json"
# records the archive writer adds by itself: checked, never copied
WRITER_RECORDS = ("byteorder", ".data/version", ".data/serialization_id")
FIXED_MEMBERS = {"archive_format", "archive_version", MODEL_JSON, SAMPLE_INPUTS, WEIGHTS_CONFIG,
                 CONSTANTS_CONFIG, *WRITER_RECORDS}
PAYLOAD_FOLDERS = {WEIGHTS_CONFIG: ("data/weights/", re.compile(r"weight_\d+")),
                   CONSTANTS_CONFIG: ("data/constants/", re.compile(r"tensor_\d+"))}
TENSOR_MEMBER = re.compile(r"data/(weights/weight|constants/tensor)_\d+")
MAX_TOTAL_BYTES = 1 << 30              # far above any slim network: refuses zip bombs
MAX_TEXT_BYTES = 64 << 20              # a JSON or text member, the sample inputs
CHUNK = 1 << 20                        # members are inflated this much at a time
MAX_ELEMENTS = 1 << 32                 # of one tensor in the program (a terabyte shape is not)
MAX_EXPRESSION = 2000                  # characters of one shape expression

# sympy names an exported shape expression may use; anything else could be evaluated as code
SYMPY_WORDS = {"Symbol", "Integer", "positive", "integer", "nonnegative", "True", "False",
               "Max", "Min", "FloorDiv", "CeilDiv", "Mod", "PythonMod", "CleanDiv"}
EXPRESSION_TOKEN = re.compile(r"\s+|'[a-z]\d+'|[a-z]\d+|[A-Za-z]+|\d+|[-+*/(),=]")
# a symbol's index and a number in an expression: small (sympy would build huge values)
SMALL_SYMBOL, SMALL_NUMBER = re.compile(r"'?[a-z]\d{1,6}'?"), re.compile(r"\d{1,12}")
NODE_TARGET = re.compile(r"torch\.ops\.aten\.[A-Za-z0-9_]+\.[A-Za-z0-9_]+")
PLAIN_TARGETS = {"_operator.getitem"}
# string arguments that only pick a numeric mode; aten ops with other string arguments
# (aten.save, aten.from_file, aten._print, aten.warn) read or write files or print
MODE_ARGUMENTS = {"approximate", "rounding_mode", "mode", "padding", "reduce", "interpolation",
                  "side", "indexing", "memory_format", "layout", "equation"}


def _refuse(path: str, problem: str):
    raise UserError(f"refusing to load {path}: {problem}; give a file written by --export_slim")


def _read_members(path: str) -> dict:
    """{name inside the single top folder: bytes}; every name and CRC checked."""
    try:
        with open_regular(path) as f, zipfile.ZipFile(f) as archive:
            infos = archive.infolist()
            _check_names(path, [info.filename for info in infos])
            if sum(info.file_size for info in infos) > MAX_TOTAL_BYTES:
                _refuse(path, f"it declares more than {MAX_TOTAL_BYTES >> 30} GiB unpacked")
            for info in infos:                  # refused by declared size before any inflating
                name = info.filename.split("/", 1)[1]
                if not TENSOR_MEMBER.fullmatch(name) and info.file_size > MAX_TEXT_BYTES:
                    _refuse(path, f"its member {name} declares {info.file_size} bytes, more "
                                  f"than such a member holds ({MAX_TEXT_BYTES >> 20} MiB)")
            return {info.filename.split("/", 1)[1]: _inflate(path, archive, info)
                    for info in infos}
    except (zipfile.BadZipFile, zlib.error, EOFError, OSError, ValueError,
            NotImplementedError) as error:
        raise UserError(f"{path} is not a torch.export (.pt2) file or is truncated ({one_line(error)}); "
                        "give a file written by --export_slim") from None


def _inflate(path: str, archive: zipfile.ZipFile, info: zipfile.ZipInfo) -> bytes:
    """A member's bytes, inflated CHUNK at a time and never beyond its declared size (a deflate
    bomb that declares less is refused after one chunk more, not after gigabytes)."""
    chunks, total = [], 0
    with archive.open(info) as member:
        while True:
            chunk = member.read(CHUNK)
            if not chunk:
                break
            total += len(chunk)
            if total > info.file_size:
                _refuse(path, f"its member {info.filename} unpacks to more than it declares")
            chunks.append(chunk)
    return b"".join(chunks)


def _check_names(path: str, names: list):
    seen = set()
    for name in names:
        parts = name.split("/")
        if name.startswith("/") or "\\" in name or "\0" in name or ".." in parts or "." in parts:
            _refuse(path, f"its member {name!r} points outside the archive's folder")
        if name in seen:
            _refuse(path, f"it holds two members named {name!r}")
        if len(parts) < 2 or not parts[0] or not parts[-1]:
            _refuse(path, f"its member {name!r} is not a file inside the archive's folder")
        seen.add(name)
    tops = sorted({name.split("/", 1)[0] for name in names})
    if len(tops) != 1:
        _refuse(path, f"it has {len(tops)} top-level folders ({', '.join(tops[:3])}), not one")


def _check_members(path: str, members: dict, metadata_member: str):
    for name in members:
        if name not in FIXED_MEMBERS and name != metadata_member and not TENSOR_MEMBER.fullmatch(name):
            what = "a second model" if name.startswith("models/") else "an unknown member"
            _refuse(path, f"it holds {what} ({name}) that loading would read")
    missing = sorted(FIXED_MEMBERS - set(members))
    if missing:
        _refuse(path, f"it lacks {missing[0]}")


def _payload_config(path: str, members: dict, config_name: str) -> set:
    """The tensor members `config_name` points at; each must be a raw tensor, never pickled."""
    folder, member_name = PAYLOAD_FOLDERS[config_name]
    try:
        config = json.loads(members[config_name])["config"]
        entries = list(config.items())
    except (ValueError, KeyError, TypeError, AttributeError, RecursionError):
        _refuse(path, f"its {config_name} is not a payload configuration")
    used = set()
    for key, entry in entries:
        path_name = entry.get("path_name") if isinstance(entry, dict) else None
        if not isinstance(path_name, str) or not member_name.fullmatch(path_name):
            _refuse(path, f"{folder}{path_name} (for {key}) is a pickled Python object whose "
                          f"loading could run code")
        if entry.get("use_pickle") is not False or not isinstance(entry.get("tensor_meta"), dict):
            _refuse(path, f"{folder}{path_name} holds Python objects besides tensors (it is "
                          f"marked as pickled), and unpickling it could run code")
        if folder + path_name not in members:
            _refuse(path, f"it lacks {folder}{path_name}")
        _check_tensor_meta(path, f"{folder}{path_name}", entry["tensor_meta"],
                           len(members[folder + path_name]))
        used.add(folder + path_name)
    return used


def _as_ints(path: str, member: str, values, what: str) -> list:
    if not isinstance(values, list) or not all(
            isinstance(v, dict) and set(v) == {"as_int"} and type(v["as_int"]) is int
            and 0 <= v["as_int"] < MAX_ELEMENTS for v in values):
        _refuse(path, f"the {what} of {member} are not plain non-negative integers")
    return [v["as_int"] for v in values]


def _check_tensor_meta(path: str, member: str, meta: dict, length: int):
    """A stored tensor's dtype, sizes, strides and offset must describe bytes inside its member
    (a terabyte shape over a few bytes is refused here, not met by the loader)."""
    from torch._export.serde.serialize import _SERIALIZE_TO_TORCH_DTYPE
    dtype = _SERIALIZE_TO_TORCH_DTYPE.get(meta.get("dtype")) if isinstance(meta.get("dtype"), int) \
        else None
    if dtype is None:
        _refuse(path, f"{member} has no known dtype")
    sizes = _as_ints(path, member, meta.get("sizes"), "sizes")
    strides = _as_ints(path, member, meta.get("strides"), "strides")
    offset = _as_ints(path, member, [meta.get("storage_offset", {"as_int": 0})], "offset")[0]
    if len(sizes) != len(strides):
        _refuse(path, f"{member} has {len(sizes)} sizes but {len(strides)} strides")
    elements = 1
    for size in sizes:
        elements *= size
        if elements > MAX_ELEMENTS:
            _refuse(path, f"{member} declares a shape of more than {MAX_ELEMENTS} elements")
    if elements:
        extent = offset + sum((size - 1) * stride for size, stride in zip(sizes, strides, strict=True)) + 1
        if extent * dtype.itemsize > length:
            _refuse(path, f"{member} declares a shape {sizes} larger than its {length} bytes")


def _check_shapes(path: str, program):
    """Every concrete size in the program's tensor metadata is bounded (no terabyte shape)."""
    for sizes in _strings_under(program, "sizes"):
        if not isinstance(sizes, list):
            continue
        elements = 1
        for size in sizes:
            value = size.get("as_int") if isinstance(size, dict) else None
            if value is None:
                continue
            if type(value) is not int or value < 0:
                _refuse(path, f"its {MODEL_JSON} holds a tensor size {str(value)[:20]}")
            elements *= value
            if elements > MAX_ELEMENTS:
                _refuse(path, f"its {MODEL_JSON} holds a tensor of more than {MAX_ELEMENTS} "
                              "elements, which no slim network has")


def _plain_tensors(value) -> bool:
    if isinstance(value, torch.Tensor):
        return type(value) is torch.Tensor
    if isinstance(value, (tuple, list)):
        return all(_plain_tensors(v) for v in value)
    if isinstance(value, dict):
        return all(isinstance(k, str) and _plain_tensors(v) for k, v in value.items())
    return value is None or isinstance(value, (bool, int, float, str))


def _resaved_sample_inputs(path: str, data: bytes) -> bytes:
    """The sample inputs loaded with weights_only=True, written again by torch.save."""
    try:
        value = torch.load(io.BytesIO(data), weights_only=True)
    except Exception:
        value = None
    if not isinstance(value, tuple) or not _plain_tensors(value):
        _refuse(path, f"{SAMPLE_INPUTS} holds Python objects besides tensors, and unpickling it "
                      f"could run code")
    out = io.BytesIO()
    torch.save(value, out)
    return out.getvalue()


def _strings_under(value, key: str):
    """Every value of `key` in a JSON tree."""
    if isinstance(value, dict):
        for k, v in value.items():
            if k == key:
                yield v
            yield from _strings_under(v, key)
    elif isinstance(value, list):
        for v in value:
            yield from _strings_under(v, key)


def _safe_expression(text) -> bool:
    """Only shape symbols, small numbers and arithmetic without powers, of bounded length:
    sympy evaluates what it parses (a power tower would never end)."""
    if not isinstance(text, str) or len(text) > MAX_EXPRESSION or "**" in text.replace(" ", ""):
        return False
    tokens = EXPRESSION_TOKEN.findall(text)
    if "".join(tokens) != text:
        return False
    return all((not t[:1].isalpha() or SMALL_SYMBOL.fullmatch(t) or t in SYMPY_WORDS)
               and (not t[:1].isdigit() or SMALL_NUMBER.fullmatch(t))
               and (not t.startswith("'") or SMALL_SYMBOL.fullmatch(t)) for t in tokens)


def _safe_target(target) -> bool:
    if target in PLAIN_TARGETS:
        return True
    if not isinstance(target, str) or not NODE_TARGET.fullmatch(target):
        return False
    _, _, _, packet, overload = target.split(".")
    op = getattr(getattr(torch.ops.aten, packet, None), overload, None)
    if not isinstance(op, torch._ops.OpOverload):
        return False
    return all(arg.name in MODE_ARGUMENTS for arg in op._schema.arguments
               if "str" in str(arg.type))


def _check_program(path: str, data: bytes):
    try:
        _check_program_tree(path, data)
    except RecursionError:
        _refuse(path, f"its {MODEL_JSON} is nested too deeply for an exported program")


def _check_program_tree(path: str, data: bytes):
    try:
        program = json.loads(data)
        guards = program["guards_code"]
        nodes = program["graph_module"]["graph"]["nodes"]
        targets = [node["target"] for node in nodes]
    except (ValueError, KeyError, TypeError):
        _refuse(path, f"its {MODEL_JSON} is not an exported program")
    if guards != []:
        _refuse(path, f"its {MODEL_JSON} holds guard code, which loading would run")
    bad = next((t for t in targets if not _safe_target(t)), None)
    if bad is not None or len(list(_strings_under(program, "target"))) != len(targets):
        _refuse(path, f"its {MODEL_JSON} calls {str(bad)[:60]!r}, not a plain aten operator")
    bad = next((e for e in _strings_under(program, "expr_str") if not _safe_expression(e)), None)
    if bad is not None:
        _refuse(path, f"its {MODEL_JSON} holds the shape expression {str(bad)[:60]!r}, which "
                      f"loading would evaluate as Python")
    _check_shapes(path, program)


def checked_archive(path: str, metadata_member: str) -> tuple:
    """(an in-memory .pt2 holding only the checked members of `path`, the text of its
    `metadata_member`); UserError naming the first problem. Nothing is unpickled but the
    sample inputs, with weights_only=True."""
    members = _read_members(path)
    _check_members(path, members, metadata_member)
    used = _payload_config(path, members, WEIGHTS_CONFIG) | _payload_config(path, members, CONSTANTS_CONFIG)
    unused = sorted(n for n in members if TENSOR_MEMBER.fullmatch(n) and n not in used)
    if unused:
        _refuse(path, f"it holds {unused[0]}, which no weight or constant names")
    _check_program(path, members[MODEL_JSON])
    try:
        metadata = members[metadata_member].decode("utf-8") if metadata_member in members else None
    except UnicodeDecodeError:
        _refuse(path, f"its {metadata_member} is not UTF-8 text")
    copied = dict(members, **{SAMPLE_INPUTS: _resaved_sample_inputs(path, members[SAMPLE_INPUTS])})
    buffer = io.BytesIO()
    with PT2ArchiveWriter(buffer) as writer:
        for name, data in copied.items():
            if name not in WRITER_RECORDS:
                writer.write_bytes(name, data)
    buffer.seek(0)
    return buffer, metadata
