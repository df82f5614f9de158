"""Hypothesis strategies for hostile inputs, and the writers that put them on disk.

Each strategy draws a *recipe* (plain data: what to change) and a writer turns it into files in
a fresh folder, so a failing example prints a readable recipe. The families:

- `npz_recipe`: a valid 30-clip, 3-class npz with one array replaced (object, complex, strings,
  datetime, 0-d, 3-d, zero-width, empty, NaN/inf, labels 10**12 / -5 / 0.5 / 1e300 / uint64 max,
  2-D or duplicate clip ids, short class names), a key dropped, or its bytes changed (truncated,
  a byte flipped, a member header claiming a huge shape, a .npy given as npz:, compressed).
- `npy_recipe`: a query file for jobs.query, mutated the same way.
- `csv_recipe`: a VEGAS clip folder whose labels.csv has rows without fields, non-UTF-8 bytes,
  huge or negative labels, no header.
- `manifest_recipe` / `parquet_recipe`: a 300-row shard set with its `_manifest.json` edited
  (keys dropped, wrong types, 10**12 rows, `../` shard names, non-UTF-8, no shards) or a Parquet
  file truncated or flipped.
- `result_recipe`: a crossval result JSON with values replaced by arbitrary JSON.
- `nasty_text` / `option_value`: CLI values: negative, huge, empty, unicode, `#`, spaces, YAML.
"""

from __future__ import annotations

import io
import json
import zipfile
from pathlib import Path

import numpy as np
from hypothesis import strategies as st

N = 30

NASTY = ["", " ", "-1", "-0", "0", "1", "2", "10**12", "1000000000000", "1e309", "nan", "inf",
         "-inf", "0x10", "1_000", "3.5", "#", "a #b", "out #1", "[", "]", "{", "{a: 1}", "[1, 2",
         "a: [", "!!python/object/apply:os.system ['true']", "&a [*a]", "'", '"', "\\", "\x00",
         "é", "日本", "\U0001f600", "../x", "/", "s3://", "s3://b/../x", "~", "$HOME", "%s",
         "null", "~/x", "true", "yes", "a,b", ",", ",,", " , ", "\n", "x\ny", "\t", "-",
         "--smoke"]
nasty_text = st.one_of(st.sampled_from(NASTY),
                       st.text(st.characters(codec="utf-8", exclude_categories=("Cs",)),
                               max_size=12))
option_value = st.one_of(nasty_text, st.integers(-10**13, 10**13).map(str))


def base_arrays() -> dict:
    rng = np.random.default_rng(1)
    return {"audio": rng.normal(size=(N, 4)), "visual": rng.normal(size=(N, 6)),
            "labels": np.arange(N) % 3, "clip_ids": np.array([f"c{i}" for i in range(N)])}


def _replacement(key: str, kind: str):
    rng = np.random.default_rng(2)
    table = {
        "object": lambda: np.array([[1, 2], [3]], dtype=object),
        "complex": lambda: np.ones((N, 4), complex),
        "strings": lambda: np.array([["a"] * 4] * N),
        "datetime": lambda: np.zeros((N, 4), "datetime64[s]"),
        "scalar": lambda: np.array(3.0),
        "3d": lambda: np.zeros((N, 2, 2)),
        "zero-width": lambda: np.zeros((N, 0)),
        "empty": lambda: np.zeros((0, 4)),
        "nan": lambda: np.where(rng.random((N, 4)) < 0.1, np.nan, 1.0),
        "inf": lambda: np.full((N, 4), -np.inf),
        "huge-float": lambda: np.full((N, 4), 1e300),
        "few-rows": lambda: np.ones((N - 7, 4)),
        "labels-1e12": lambda: np.r_[np.arange(N - 1) % 3, 10**12],
        "labels-all-1e12": lambda: np.arange(N) % 3 * 10**12,
        "labels-negative": lambda: np.r_[np.arange(N - 1) % 3, -5],
        "labels-half": lambda: np.arange(N) % 3 + 0.5,
        "labels-1e300": lambda: np.full(N, 1e300),
        "labels-uint64": lambda: np.r_[np.arange(N - 1, dtype=np.uint64) % 3, np.uint64(2**64 - 1)],
        "labels-one-class": lambda: np.zeros(N, int),
        "labels-bool": lambda: np.arange(N) % 2 == 0,
        "ids-2d": lambda: np.array([[f"c{i}"] * 2 for i in range(N)]),
        "ids-duplicate": lambda: np.array(["same"] * N),
        "ids-numeric": lambda: np.arange(N) * 1.5,
        "names-short": lambda: np.array(["a"]),
        "names-2d": lambda: np.array([["a", "b"], ["c", "d"]]),
        "names-empty": lambda: np.array([], str),
    }
    return table[kind]()


REPLACE_KINDS = ["object", "complex", "strings", "datetime", "scalar", "3d", "zero-width",
                 "empty", "nan", "inf", "huge-float", "few-rows"]
LABEL_KINDS = ["labels-1e12", "labels-all-1e12", "labels-negative", "labels-half",
               "labels-1e300", "labels-uint64", "labels-one-class", "labels-bool", "object",
               "scalar", "strings", "empty", "complex"]
ID_KINDS = ["ids-2d", "ids-duplicate", "ids-numeric", "object", "scalar"]
NAME_KINDS = ["names-short", "names-2d", "names-empty", "object", "scalar"]

array_change = st.one_of(
    st.tuples(st.sampled_from(["audio", "visual"]), st.sampled_from(REPLACE_KINDS)),
    st.tuples(st.just("labels"), st.sampled_from(LABEL_KINDS)),
    st.tuples(st.just("clip_ids"), st.sampled_from(ID_KINDS)),
    st.tuples(st.just("class_names"), st.sampled_from(NAME_KINDS)),
    st.tuples(st.just("drop"), st.sampled_from(["audio", "visual", "labels", "clip_ids"])),
)
byte_change = st.one_of(
    st.tuples(st.just("truncate"), st.floats(0, 1)),
    st.tuples(st.just("flip"), st.floats(0, 1), st.integers(1, 255)),
    st.tuples(st.just("header-lie"), st.sampled_from(["audio", "visual", "labels"]),
              st.sampled_from([10**12, 2**40, 31, 0, 2**62])),
    st.tuples(st.just("npy-as-npz")),
    st.tuples(st.just("compressed")),
    st.tuples(st.just("empty-file")),
    st.tuples(st.just("not-zip"), st.binary(max_size=64)),
)
npz_recipe = st.tuples(st.lists(array_change, max_size=2), st.none() | byte_change)


def _npy_bytes(arr: np.ndarray, shape=None) -> bytes:
    """`arr` as .npy bytes; `shape` replaces the header's shape (the data stays `arr`'s)."""
    f = io.BytesIO()
    if shape is None:
        np.save(f, arr, allow_pickle=True)
    else:
        np.lib.format.write_array_header_1_0(f, {"descr": np.lib.format.dtype_to_descr(arr.dtype),
                                                 "fortran_order": False, "shape": shape})
        f.write(arr.tobytes())
    return f.getvalue()


def _zip(path: Path, arrays: dict, lie: tuple | None = None, deflate=False) -> None:
    method = zipfile.ZIP_DEFLATED if deflate else zipfile.ZIP_STORED
    with zipfile.ZipFile(path, "w", method) as z:
        for key, arr in arrays.items():
            shape = None
            if lie and lie[0] == key:
                shape = (lie[1],) + tuple(arr.shape[1:])
            z.writestr(f"{key}.npy", _npy_bytes(arr, shape))


def _bytes_edit(path: Path, change: tuple) -> None:
    data = path.read_bytes()
    if change[0] == "truncate":
        path.write_bytes(data[: int(change[1] * len(data))])
    elif change[0] == "flip" and data:
        i = min(int(change[1] * len(data)), len(data) - 1)
        path.write_bytes(data[:i] + bytes([data[i] ^ change[2]]) + data[i + 1:])
    elif change[0] == "empty-file":
        path.write_bytes(b"")
    elif change[0] == "not-zip":
        path.write_bytes(change[1])


def write_npz(folder: Path, recipe) -> Path:
    """The npz of `recipe` in `folder`; returns its path."""
    changes, byte = recipe
    arrays = base_arrays()
    for key, kind in changes:
        if key == "drop":
            arrays.pop(kind, None)
        else:
            arrays[key] = _replacement(key, kind)
    path = folder / "data #1 é.npz"
    if byte and byte[0] == "npy-as-npz":
        path.write_bytes(_npy_bytes(arrays.get("audio", np.ones((3, 3)))))
        return path
    _zip(path, arrays, lie=byte[1:] if byte and byte[0] == "header-lie" else None,
         deflate=bool(byte) and byte[0] == "compressed")
    if byte:
        _bytes_edit(path, byte)
    return path


npy_recipe = st.tuples(
    st.sampled_from(["ok", "object", "complex", "strings", "scalar", "3d", "zero-width", "empty",
                     "nan", "inf", "huge-float", "npz", "header-lie", "bool", "int8"]),
    st.none() | st.tuples(st.just("truncate"), st.floats(0, 1))
    | st.tuples(st.just("flip"), st.floats(0, 1), st.integers(1, 255)),
)


def write_npy(folder: Path, recipe) -> Path:
    kind, byte = recipe
    path = folder / "queries #1.npy"
    rng = np.random.default_rng(3)
    ok = rng.normal(size=(2, 5)).astype(np.float32)
    if kind == "npz":
        _zip(path, {"audio": ok})
    elif kind == "header-lie":
        path.write_bytes(_npy_bytes(ok, (10**12, 5)))
    else:
        arr = {"ok": ok, "bool": ok > 0, "int8": ok.astype(np.int8)}.get(kind)
        path.write_bytes(_npy_bytes(arr if arr is not None else _replacement("audio", kind)))
    if byte:
        _bytes_edit(path, byte)
    return path


csv_row = st.one_of(
    st.tuples(st.sampled_from(["vid0", "vid1", "vid2", "vid3", "", "../x", "vid0,extra"]),
              st.sampled_from(["0", "1", "-5", "10**12", "1000000000000", "", "cat", " 1 ",
                               "1.5", "\x00", "é"])).map(lambda r: ",".join(r)),
    st.sampled_from(["vid1", "", ",", ",,,,", "\"unclosed", "vid2,1,2,3"]),
    nasty_text,
)
csv_recipe = st.tuples(
    st.sampled_from(["clip_id,label", "label,clip_id", "clip_id", "", "id,class",
                     "\ufeffclip_id,label"]),
    st.lists(csv_row, max_size=6),
    st.sampled_from(["utf-8", "latin-1", "garbage"]),
)


def write_clip_dir(folder: Path, recipe) -> Path:
    """A VEGAS clip folder of 4 clips (vid0..vid3) whose labels.csv is the recipe's."""
    header, rows, encoding = recipe
    root = folder / "clips"
    (root / "audio").mkdir(parents=True)
    (root / "visual").mkdir()
    rng = np.random.default_rng(0)
    for i in range(4):
        np.save(root / "audio" / f"vid{i}.npy", rng.normal(size=(3, 8)))
        np.save(root / "visual" / f"vid{i}.npy", rng.normal(size=(2, 16)))
    text = "\n".join([header, "vid0,0", "vid1,1", *rows, "vid2,0", "vid3,1"]) + "\n"
    data = text.encode("utf-8", "surrogatepass") if encoding == "utf-8" else \
        text.encode("latin-1", "replace") if encoding == "latin-1" else b"\xff\xfe\x00" + \
        text.encode("utf-16")
    (root / "labels.csv").write_bytes(data)
    return root


json_value = st.recursive(
    st.none() | st.booleans() | st.integers(-10**15, 10**15)
    | st.floats(allow_nan=True, allow_infinity=True) | nasty_text,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(nasty_text, inner, max_size=3),
    max_leaves=8)

MANIFEST_KEYS = ["schema_version", "rows", "shards", "num_shards", "folds", "fold_seed",
                 "class_names", "num_classes", "audio_dim", "visual_dim", "source", "columns"]
manifest_change = st.one_of(
    st.tuples(st.just("set"), st.sampled_from(MANIFEST_KEYS), json_value),
    st.tuples(st.just("set"), st.sampled_from(["rows", "audio_dim", "visual_dim", "folds",
                                               "num_classes", "num_shards"]),
              st.sampled_from([10**12, -1, 0, 2**63, 1.5, "3"])),
    st.tuples(st.just("shard-rows"), st.sampled_from([10**12, -1, 0, 99, "x", None])),
    st.tuples(st.just("shard-name"), st.sampled_from(["../other/part-00000.parquet",
                                                       "/etc/passwd", "", "x/../../y",
                                                       "part-99999.parquet", "s3://b/k"])),
    st.tuples(st.just("drop"), st.sampled_from(MANIFEST_KEYS)),
    st.tuples(st.just("bytes"), st.sampled_from([b"", b"\xff\xfe{", b"[]", b"null", b"{"])),
)
manifest_recipe = st.lists(manifest_change, min_size=1, max_size=2)


def edit_manifest(root: Path, recipe) -> None:
    path = root / "_manifest.json"
    doc = json.loads(path.read_text())
    for change in recipe:
        if change[0] == "bytes":
            path.write_bytes(change[1])
            return
        if change[0] == "set":
            doc[change[1]] = change[2]
        elif change[0] == "drop":
            doc.pop(change[1], None)
        elif change[0] == "shard-rows" and isinstance(doc.get("shards"), list) and doc["shards"]:
            doc["shards"][0]["rows"] = change[1]
        elif change[0] == "shard-name" and isinstance(doc.get("shards"), list) and doc["shards"]:
            first = doc["shards"][0]
            if isinstance(first, dict):
                first["file"] = change[1]
            else:
                doc["shards"][0] = change[1]
    path.write_text(json.dumps(doc))


parquet_recipe = st.one_of(st.tuples(st.just("truncate"), st.floats(0, 1)),
                           st.tuples(st.just("flip"), st.floats(0, 1), st.integers(1, 255)),
                           st.tuples(st.just("empty-file")))


def edit_parquet(root: Path, recipe) -> None:
    _bytes_edit(sorted(root.glob("part-*.parquet"))[-1], recipe)


result_field = st.sampled_from(["a2v_map", "v2a_map", "a2v_map_folds", "v2a_map_folds",
                                "mrr1_a2v", "fit_seconds", "params", "pr_a2v", "pr_v2a"])
result_recipe = st.tuples(
    st.lists(st.tuples(result_field, json_value), max_size=3),
    st.lists(st.tuples(st.sampled_from(["methods", "dim", "data", "folds", "seed"]),
                       json_value), max_size=2),
    st.sampled_from(["none", "truncate", "latin-1", "dollar-name", "many-methods"]),
)


def base_result() -> dict:
    rec = np.linspace(0, 1, 11).tolist()
    method = {"a2v_map": 0.5, "v2a_map": 0.4, "a2v_map_folds": [0.5, 0.5],
              "v2a_map_folds": [0.4, 0.4], "mrr1_a2v": 0.6, "mrr1_v2a": 0.5, "fit_seconds": 0.1,
              "params": {"dim": 9}, "pr_a2v": {"recall": rec, "precision": rec[::-1]},
              "pr_v2a": {"recall": rec, "precision": rec[::-1]}}
    return {"data": "d", "folds": 2, "seed": 0, "dim": 9, "methods": {"cca": method}}


def write_result(folder: Path, recipe) -> Path:
    method_changes, top_changes, how = recipe
    doc = base_result()
    for key, value in method_changes:
        doc["methods"]["cca"][key] = value
    for key, value in top_changes:
        doc[key] = value
    if how == "dollar-name" and isinstance(doc.get("methods"), dict):
        doc["methods"]["$x^{2}$ | a\nb"] = doc["methods"].get("cca")
    if how == "many-methods" and isinstance(doc.get("methods"), dict):
        doc["methods"].update({f"m{i}": {"a2v_map": 0.1, "v2a_map": 0.2} for i in range(300)})
    path = folder / "cv #1.json"
    text = json.dumps(doc)
    data = text.encode("utf-8", "surrogatepass")
    if how == "truncate":
        data = data[: len(data) // 2]
    elif how == "latin-1":
        data = b"\xe9" + data
    path.write_bytes(data)
    return path


yaml_doc = st.one_of(
    st.sampled_from(["", "[1, 2]", "folds: [", "folds: 3\nfolds: 4", "1: 2", "null", "~",
                     "folds: !!python/object/apply:os.system ['true']", "a: &x [*x]",
                     "settings: 3", "settings:\n  cca: [1]", "methods: cca", "methods: [cca, 7]",
                     "seed: -1", "folds: 1000000000000", "data: ''", "json: /", "\t- x",
                     "settings:\n  cca:\n    dim: -4", "{{{{{{{{{{{{{{{{{{{{"]),
    json_value.map(lambda v: json.dumps(v)),
)
config_recipe = st.tuples(yaml_doc, st.sampled_from(["utf-8", "latin-1-prefix", "folder"]))


def write_config(folder: Path, recipe) -> Path:
    text, how = recipe
    path = folder / "preset #1.yaml"
    if how == "folder":
        path.mkdir()
    else:
        data = text.encode("utf-8", "surrogatepass")
        path.write_bytes(b"\xe9\xff" + data if how == "latin-1-prefix" else data)
    return path
