"""The extraction pipeline (worker processes, the fast 8-bit reader, one forward for grid and layers)
gives exactly the features of the plain recipe: read_image, preprocess_image, `enc(x)` and
`enc.forward_intermediates(x)` in fp32, stored as fp16."""
import inspect

import numpy as np
import pytest
import torch

from cxr_study.core import STUDY_SEED
from cxr_study.data.prepare import build_image_cache, index_dataset
from cxr_study.data.readers import read_image
from cxr_study.data.preprocess import preprocess_image
from cxr_study.encoders.registry import Encoder, create_encoder, get_encoder_cfg, list_encoders
from cxr_study.features.cache import extract_features

BATCH = 3


@pytest.fixture(scope="module")
def prepared(tiny_raw, tmp_path_factory):
    "Seven images of the tiny benchmark through the PNG image cache, as `prepare` leaves them (index, root)."
    idx, _ = index_dataset("synthetic", tiny_raw)
    out = tmp_path_factory.mktemp("png-cache")
    cached, problems = build_image_cache(idx.iloc[:7], out, image_size=96)
    assert not problems and cached.image_path.str.endswith(".png").all()
    return cached, out


def reference(name, index, root, layers):
    "The features the plain way, batch by batch in the pipeline's order (image_id), fp32, then fp16."
    torch.manual_seed(STUDY_SEED)
    enc = create_encoder(name)
    rows = index.sort_values("image_id")
    x = torch.stack([preprocess_image(read_image(root/p), enc.cfg.preprocess) for p in rows.image_path])
    out = {k: [] for k in ["pooled", "grid", *layers]}
    with torch.no_grad():
        for b in x.split(BATCH):
            o = enc(b)
            inter = enc.forward_intermediates(b, layers) if layers else {}
            for k, t in [("pooled", o.pooled), ("grid", o.grid), *inter.items()]:
                out[k].append(t.float().numpy().astype(np.float16))
    return rows.image_id.tolist(), {k: np.concatenate(v) for k, v in out.items()}


@pytest.mark.parametrize("name,layers,n", [("resnet18", ["layer1", "layer4"], 7), ("vit-small-patch16-224", ["block2", "block9"], 4)])
def test_pipeline_equals_plain_recipe(prepared, tmp_path, name, layers, n):
    "Staged encoders with layers; resnet18 over two chunks (batches of 3, 1 and 3), the ViT on fewer images (it is slower)."
    index, root = prepared
    index = index.iloc[:n]
    ids, ref = reference(name, index, root, layers)
    f = extract_features(name, index, root, tmp_path, layers=layers, batch_size=BATCH, chunk_size=4, num_workers=2)
    assert f.image_ids == ids and f.meta["amp"] is False
    # bit for bit: the same fp32 arithmetic on the same batches, fp16 rounding in torch or numpy alike
    np.testing.assert_array_equal(np.asarray(f.pooled), ref["pooled"])
    for k in ["grid", *layers]: np.testing.assert_array_equal(np.asarray(f.grids[k]), ref[k], err_msg=k)


def test_workers_do_not_change_the_cache(prepared, tmp_path):
    index, root = prepared
    kw = dict(layers=["layer2"], batch_size=BATCH, chunk_size=4)
    f0 = extract_features("resnet18", index, root, tmp_path/"w0", num_workers=0, **kw)
    f2 = extract_features("resnet18", index, root, tmp_path/"w2", num_workers=2, **kw)
    assert f0.path.name == f2.path.name  # the same key: workers are not part of it
    assert sorted(p.name for p in f0.path.iterdir()) == sorted(p.name for p in f2.path.iterdir())
    for n in ["pooled", "grid", "layer2"]:
        assert (f0.path/f"{n}.npy").read_bytes() == (f2.path/f"{n}.npy").read_bytes(), n
    strip = lambda m: {k: v for k, v in m.items() if k != "seconds"}
    assert strip(f0.meta) == strip(f2.meta)


def test_dicom_index_reads_the_same_way(tiny_raw, tmp_path):
    "An index-only preparation points at DICOMs: the general reader, in workers, gives the plain recipe's features."
    idx, _ = index_dataset("synthetic", tiny_raw)
    index = idx.iloc[:4]
    ids, ref = reference("resnet18", index, tiny_raw, [])
    f = extract_features("resnet18", index, tiny_raw, tmp_path, batch_size=BATCH, num_workers=1)
    np.testing.assert_array_equal(np.asarray(f.grid), ref["grid"])


SMALL = list_encoders(tag="small")
REDUCED = [n for n in list_encoders() if n not in SMALL and "reduced" in inspect.signature(get_encoder_cfg(n).builder).parameters]


@pytest.mark.parametrize("name", SMALL + REDUCED)
def test_single_pass_equals_two_passes(name):
    """forward_with_intermediates against the base class's default (forward, then forward_intermediates), all
    layers; the study's encoders in their reduced variant."""
    torch.manual_seed(0)
    enc = create_encoder(name, **({"reduced": True} if name in REDUCED else {}))
    p = enc.cfg.preprocess
    x = torch.randn(2 if name in SMALL else 1, p.channels, p.size, p.size)
    layers = list(enc.cfg.layers)
    with torch.no_grad():
        out, inter = enc.forward_with_intermediates(x, layers)
        ref_out, ref_inter = Encoder.forward_with_intermediates(enc, x, layers)
        none_out, none_inter = enc.forward_with_intermediates(x, [])
    assert list(inter) == layers and none_inter == {}
    torch.testing.assert_close(out.pooled, ref_out.pooled, rtol=0, atol=0)
    torch.testing.assert_close(out.grid, ref_out.grid, rtol=0, atol=0)
    torch.testing.assert_close(none_out.grid, ref_out.grid, rtol=0, atol=0)
    for n in layers: torch.testing.assert_close(inter[n], ref_inter[n], rtol=0, atol=0, msg=n)
