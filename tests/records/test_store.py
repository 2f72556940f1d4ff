"""MapStore: maps written a slab of rows at a time come back exactly, the
pyramid levels are the block max and block mean of the full map, tiles are
slices, a capture writes one head's map of a 4k-token prompt to disk, and a
store that is unfinished, tampered with or linked out of its folder is refused
with one line."""

from __future__ import annotations

import json
import math
import os
import random

import numpy as np
import pytest
import torch

import headscope as hs
from headscope.errors import InputError, RecordExistsError, RecordFormatError
from headscope.records.store import MapStore, level_side, pyramid_levels


def reference_pyramid(full: np.ndarray, level: int, reduce: str) -> np.ndarray:
    """Block max / block mean of `full` over 2^level blocks (partial edge blocks
    reduced over the cells that exist), the slow obvious way."""
    n = full.shape[0]
    f = 2**level
    side = math.ceil(n / f)
    out = np.empty((side, side), dtype=np.float64)
    for i in range(side):
        for j in range(side):
            block = full[i * f : (i + 1) * f, j * f : (j + 1) * f].astype(np.float64)
            out[i, j] = block.max() if reduce == "max" else block.mean()
    return out


def random_map(n: int, seed: int = 0, causal: bool = True) -> np.ndarray:
    rng = np.random.default_rng(seed)
    scores = rng.normal(size=(n, n)) * 2
    if causal:
        scores[np.triu_indices(n, 1)] = -np.inf
    weights = np.exp(scores - scores.max(axis=1, keepdims=True))
    return (weights / weights.sum(axis=1, keepdims=True)).astype(np.float32)


def write(path, full: np.ndarray, slabs, *, chunk: int, heads=((0, 0),), top_k=None) -> MapStore:
    n = full.shape[0]
    store = MapStore.create(
        path, n_tokens=n, n_layers=2, n_heads=2, heads=heads, top_k=top_k, chunk=chunk
    )
    for layer, head in heads:
        writer = store.writer(layer, head)
        row = 0
        for height in slabs:
            if row >= n:
                break
            writer.write_rows(row, full[row : row + height])
            row += height
        if row < n:
            writer.write_rows(row, full[row:])
        writer.close()
    store.finish()
    return MapStore.open(path)


@pytest.mark.parametrize(
    ("n", "chunk", "slabs"),
    [(100, 16, [1, 7, 33, 2, 5]), (64, 8, [64]), (37, 4, [3] * 20), (1, 4, [1]), (16, 16, [5])],
)
def test_pyramid_levels_are_block_max_and_mean(tmp_path, n, chunk, slabs):
    full = random_map(n, seed=n)
    store = write(tmp_path / "s", full, slabs, chunk=chunk)
    assert store.levels == pyramid_levels(n, chunk)
    assert level_side(n, store.levels - 1) <= chunk
    np.testing.assert_array_equal(store.read(0, 0, 0, (0, n), (0, n)), full)
    for level in range(1, store.levels):
        side = store.side(level)
        for reduce in ("max", "mean"):
            got = store.read(0, 0, level, (0, side), (0, side), reduce)
            want = reference_pyramid(full, level, reduce)
            if reduce == "max":
                np.testing.assert_array_equal(got, want.astype(np.float32))
            else:
                np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-7)


def test_tiles_equal_slices_of_every_level(tmp_path):
    n = 150
    full = random_map(n, seed=3, causal=False)
    store = write(tmp_path / "s", full, [40, 40, 70], chunk=16)
    rng = random.Random(0)
    for level in range(store.levels):
        side = store.side(level)
        whole = {r: store.read(0, 0, level, (0, side), (0, side), r) for r in ("max", "mean")}
        for _ in range(12):
            row0, col0 = rng.randrange(side), rng.randrange(side)
            size = rng.randrange(1, 40)
            for reduce in ("max", "mean"):
                tile = store.tile(0, 0, level, row0, col0, size, reduce)
                expected = whole[reduce][row0 : row0 + size, col0 : col0 + size]
                np.testing.assert_array_equal(tile, expected)
                assert tile.dtype == np.float32 and tile.shape[0] <= size
    # level 0 is the map whichever reduction is asked for
    np.testing.assert_array_equal(store.tile(0, 0, 0, 5, 7, 9, "mean"), full[5:14, 7:16])
    assert store.level_for(150, 20) == 3 and store.level_for(10, 20) == 0
    assert store.level_for(10**6, 1) == store.levels - 1


def test_top_k_and_several_heads_round_trip(tmp_path):
    n = 40
    maps = {(0, 1): random_map(n, 1), (1, 0): random_map(n, 2)}
    store = MapStore.create(
        tmp_path / "s", n_tokens=n, n_layers=2, n_heads=2, heads=list(maps), top_k=3, chunk=16
    )
    for (layer, head), full in maps.items():
        writer = store.writer(layer, head)
        writer.write_rows(0, torch.from_numpy(full))  # tensors are taken too
        writer.close()
    keys = torch.randint(-1, n, (2, n, 3))
    weights = torch.rand(2, n, 3)
    for layer in range(2):
        store.write_topk(layer, keys + layer, weights * (layer + 1))
    store.finish()
    opened = MapStore.open(tmp_path / "s")
    assert opened.heads == ((0, 1), (1, 0)) and opened.top_k == 3
    for (layer, head), full in maps.items():
        np.testing.assert_array_equal(opened.read(layer, head, 0, (0, n), (0, n)), full)
    got_keys, got_weights = opened.topk(1, 1, (4, 9))
    np.testing.assert_array_equal(got_keys, (keys[1] + 1).numpy()[4:9])
    np.testing.assert_allclose(got_weights, (weights[1] * 2).numpy()[4:9])
    with pytest.raises(InputError, match="holds no map of head 0.0"):
        opened.tile(0, 0, 0, 0, 0, 4)
    with pytest.raises(InputError, match="level 9 is out of range"):
        opened.tile(0, 1, 9, 0, 0, 4)
    with pytest.raises(InputError, match="reduce must be"):
        opened.tile(0, 1, 1, 0, 0, 4, "median")
    with pytest.raises(InputError, match="outside"):
        opened.tile(0, 1, 0, 40, 0, 4)


def test_writer_checks_order_and_completeness(tmp_path):
    store = MapStore.create(tmp_path / "s", n_tokens=8, n_layers=1, n_heads=1, heads=[(0, 0)])
    writer = store.writer(0, 0)
    with pytest.raises(InputError, match="in order"):
        writer.write_rows(2, np.zeros((2, 8)))
    with pytest.raises(InputError, match=r"\[rows, 8\]"):
        writer.write_rows(0, np.zeros((2, 7)))
    writer.write_rows(0, np.zeros((3, 8)))
    with pytest.raises(InputError, match="got 3 of its 8 rows"):
        writer.close()
    with pytest.raises(InputError, match="out of range"):
        MapStore.create(tmp_path / "t", n_tokens=8, n_layers=1, n_heads=1, heads=[(0, 1)])


def test_create_refuses_to_overwrite_unless_asked(tmp_path):
    full = random_map(8)
    write(tmp_path / "s", full, [8], chunk=4)
    with pytest.raises(RecordExistsError, match="not empty"):
        MapStore.create(tmp_path / "s", n_tokens=8, n_layers=2, n_heads=2)
    MapStore.create(tmp_path / "s", n_tokens=8, n_layers=2, n_heads=2, overwrite=True)
    other = tmp_path / "other"
    other.mkdir()
    (other / "notes.txt").write_text("mine")
    with pytest.raises(RecordExistsError, match="something other than a map store"):
        MapStore.create(other, n_tokens=8, n_layers=2, n_heads=2, overwrite=True)
    assert (other / "notes.txt").read_text() == "mine"


def _edit_json(path, change) -> None:
    meta = json.loads(path.read_text())
    change(meta)
    path.write_text(json.dumps(meta))


def one_line(error: pytest.ExceptionInfo) -> str:
    text = str(error.value)
    assert "\n" not in text
    return text


def test_open_refuses_bad_stores_with_one_line(tmp_path):
    full = random_map(20)

    def fresh(name: str):
        path = tmp_path / name
        write(path, full, [20], chunk=8)
        return path

    cases = []
    path = fresh("unfinished")
    _edit_json(path / "zarr.json", lambda m: m["attributes"].update(complete=False))
    cases.append((path, "unfinished map store"))
    path = fresh("schema")
    _edit_json(path / "zarr.json", lambda m: m["attributes"].update(schema="something.else"))
    cases.append((path, "expected 'headscope.map_store'"))
    path = fresh("version")
    _edit_json(path / "zarr.json", lambda m: m["attributes"].update(schema_version=99))
    cases.append((path, "schema version 99"))
    path = fresh("levels")
    _edit_json(path / "zarr.json", lambda m: m["attributes"].update(levels=7))
    cases.append((path, "levels do not fit"))
    path = fresh("heads")
    _edit_json(path / "zarr.json", lambda m: m["attributes"].update(heads=[[0, 9]]))
    cases.append((path, "'heads' must list"))
    path = fresh("pickle")
    _edit_json(
        path / "heads/L0H0/0/zarr.json",
        lambda m: m.update(codecs=[{"name": "numcodecs.pickle", "configuration": {}}]),
    )
    cases.append((path, "codecs"))
    path = fresh("shape")
    _edit_json(path / "heads/L0H0/max/1/zarr.json", lambda m: m.update(shape=[11, 11]))
    cases.append((path, "has shape"))
    path = fresh("dtype")
    _edit_json(path / "heads/L0H0/0/zarr.json", lambda m: m.update(data_type="float64"))
    cases.append((path, "holds 'float64'"))
    path = fresh("garbage")
    (path / "heads/L0H0/0/zarr.json").write_bytes(b"\x80\x04not json")
    cases.append((path, "not valid JSON"))
    path = fresh("missing")
    os.remove(path / "heads/L0H0/mean/1/zarr.json")
    cases.append((path, "missing"))
    path = fresh("link")
    chunk = next(
        p for p in (path / "heads/L0H0/0").rglob("*") if p.is_file() and p.name != "zarr.json"
    )
    secret = tmp_path / "secret.bin"
    secret.write_bytes(b"secret")
    chunk.unlink()
    chunk.symlink_to(secret)
    cases.append((path, "symbolic link"))
    not_a_folder = tmp_path / "file"
    not_a_folder.write_text("x")
    cases.append((not_a_folder, "not a folder"))
    for path, message in cases:
        with pytest.raises(RecordFormatError) as error:
            MapStore.open(path)
        assert message in one_line(error), (path.name, str(error.value))


def test_a_corrupt_chunk_is_one_line_at_read_time(tmp_path):
    path = tmp_path / "s"
    write(path, random_map(20), [20], chunk=8)
    chunk = next(
        p for p in (path / "heads/L0H0/0").rglob("*") if p.is_file() and p.name != "zarr.json"
    )
    chunk.write_bytes(b"not zstd at all")
    store = MapStore.open(path)
    with pytest.raises(RecordFormatError) as error:
        store.read(0, 0, 0, (0, 20), (0, 20))
    assert "cannot be read" in one_line(error)


# -- a capture writes to the store ---------------------------------------------------------------


@pytest.fixture(scope="module")
def long_model(tmp_path_factory):
    from tiny_models import VOCAB, tiny_tokenizer
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    config = GPT2Config(
        n_layer=2,
        n_head=4,
        n_embd=32,
        vocab_size=VOCAB,
        n_positions=4096,
        initializer_range=0.2,
        bos_token_id=1,
        eos_token_id=1,
    )
    directory = tmp_path_factory.mktemp("long-gpt2")
    GPT2LMHeadModel(config).eval().save_pretrained(directory)
    tiny_tokenizer().save_pretrained(directory)
    return hs.load_model(directory)


def long_text(n_words: int, seed: int = 0) -> str:
    rng = random.Random(seed)
    return " ".join(f"t{rng.randrange(3, 100)}" for _ in range(n_words))


def test_a_4k_token_capture_writes_one_heads_map_to_the_store(long_model, tmp_path):
    batch = long_model.tokenize(long_text(4095))
    n = batch.ids.shape[1]
    assert n == 4096
    layers = []
    stats = hs.capture(
        long_model,
        batch,
        mode="stats",
        heads=[(1, 2)],
        top_k=4,
        store=tmp_path / "maps",
        progress=lambda done, total: layers.append((done, total)),
    )
    assert stats.maps is None and layers == [(1, 2), (2, 2)]
    store = MapStore.open(tmp_path / "maps")
    assert store.heads == ((1, 2),) and store.n_tokens == n and store.top_k == 4
    assert store.meta["model_name"] == long_model.spec.name
    assert store.levels == pyramid_levels(n, 256) == 5
    reference = hs.capture(long_model, batch, heads=[(1, 2)]).map(1, 2).numpy()
    np.testing.assert_array_equal(store.read(1, 2, 0, (0, n), (0, n)), reference)
    top = store.levels - 1
    side = store.side(top)
    blocks = reference.reshape(side, 2**top, side, 2**top)
    np.testing.assert_array_equal(store.read(1, 2, top, (0, side), (0, side)), blocks.max((1, 3)))
    np.testing.assert_allclose(
        store.read(1, 2, top, (0, side), (0, side), "mean"), blocks.mean((1, 3)), atol=1e-8
    )
    keys, weights = store.topk(0, 3)
    np.testing.assert_array_equal(keys, stats.topk_keys[0, 3].numpy())
    np.testing.assert_array_equal(weights, stats.topk_weights[0, 3].numpy())
    with pytest.raises(RecordExistsError):
        hs.capture(long_model, "t3 t4", mode="stats", store=tmp_path / "maps")


def test_capture_store_arguments_are_checked(long_model, tmp_path):
    with pytest.raises(InputError, match="use mode='stats'"):
        hs.capture(long_model, "t3 t4 t5", heads=[(0, 0)], store=tmp_path / "a")
    with pytest.raises(InputError, match="one prompt"):
        hs.capture(long_model, ["t3 t4", "t5 t6"], mode="stats", store=tmp_path / "b")
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()
