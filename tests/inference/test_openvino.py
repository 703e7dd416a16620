"""The OpenVINO backend on real bundles: same file, same decisions as ONNX Runtime, cached compilation,
and refusal of bundles whose gate did not cover OpenVINO."""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

import numpy as np
import pytest

from edge.config import ModelConfig
from edge.errors import BackendUnavailable
from edge.inference.backends import build_backend
from edge.inference.bundle import load_bundle
from edge.inference.loaded_model import assemble
from edge.runtime.metrics import Metrics
from edge.runtime.pipeline import build_pipeline
from tests.support import ROOT
from tests.support.bundles import write_bundle

ov = pytest.importorskip("openvino", reason="OpenVINO is not installed (pip install 'medge[openvino]')")
BUNDLES = ROOT / "models/bundles"
LOG = logging.getLogger("test")


def _copy(tmp_path: Path, name: str) -> Path:
    dst = tmp_path / name
    shutil.copytree(BUNDLES / name, dst, ignore=shutil.ignore_patterns("engines"))
    return dst


def _cfg(root: Path, *providers: str) -> ModelConfig:
    return ModelConfig(name="m", bundle=root, providers=providers, warmup_runs=1, require_signature=False)


@pytest.mark.parametrize("name", ["cxr-opacity", "us-free-fluid"])
def test_openvino_runs_the_bundles_own_int8_file_with_the_gates_decisions(tmp_path, name):
    root = _copy(tmp_path, name)
    b = load_bundle(root)
    assert "openvino" in b.manifest.runtimes  # the export gate passed on it
    ovb = build_backend(b, _cfg(root, "openvino"), LOG)
    ort = build_backend(b, _cfg(root, "cpu"), LOG)
    assert (ovb.name, ovb.provider) == ("openvino", "openvino") and ovb.model_path == b.model_path(None, "openvino")
    # its own file when the export found one that passes its gate there (everything int8), hashed like the rest
    assert b.variant().runtime_files.get("openvino", b.variant().file) == ovb.model_path.name
    lm = assemble(b, _cfg(root, "openvino"), False, LOG)
    assert lm.ref.sha256 == b.manifest.files[ovb.model_path.name]  # findings name the file that ran
    lm.close()
    x = np.random.default_rng(0).normal(0, 1, [int(d) for d in b.manifest.input.shape]).astype(np.float32)
    a, o = ort.run(x), ovb.run(x)
    expl = b.manifest.explanation.get("output")  # the classifier's class-activation map, by its ONNX name
    assert set(a) == set(o) == {t.name for t in b.manifest.outputs} | ({expl} if expl else set())
    if expl:
        assert np.corrcoef(a[expl].ravel(), o[expl].ravel())[0, 1] > 0.9
    out = b.manifest.outputs[0].name
    prob = lambda v: 1 / (1 + np.exp(-v))  # noqa: E731 (both reference bundles end in logits + sigmoid)
    assert np.mean((prob(a[out]) >= 0.5) == (prob(o[out]) >= 0.5)) > 0.99
    again = ovb.run(x)[out]
    assert np.array_equal(again, o[out])  # outputs are copies, not the request's reused buffer
    cache = b.engines_dir / f"openvino-{ov.__version__.split('-')[0]}-CPU"
    assert cache.is_dir() and any(cache.iterdir())  # compiled blob cached per OpenVINO version and device
    ovb.close()
    ort.close()


def test_a_bundle_not_gated_on_openvino_is_not_run_on_it(tmp_path, caplog):
    b = load_bundle(write_bundle(tmp_path / "old"))
    assert b.manifest.runtimes == ("onnxruntime",)
    with caplog.at_level(logging.WARNING):
        be = build_backend(b, _cfg(b.root, "openvino", "cpu"), LOG)
    assert be.name == "onnxruntime"
    assert any("was not accuracy-gated on openvino" in r.getMessage() for r in caplog.records)
    with pytest.raises(BackendUnavailable, match="no usable inference provider"):
        build_backend(b, _cfg(b.root, "openvino"), LOG)


def test_openvino_gpu_is_skipped_with_the_reason_and_the_cpu_plugin_serves(tmp_path, caplog):
    root = _copy(tmp_path, "cxr-opacity")
    if any(d.startswith("GPU") for d in ov.Core().available_devices):
        pytest.skip("this machine has an Intel GPU")
    with caplog.at_level(logging.WARNING):
        be = build_backend(load_bundle(root), _cfg(root, "openvino-gpu", "openvino"), LOG)
    assert be.provider == "openvino"
    assert any("openvino-gpu: bundle cxr-opacity 1.0.0 was not accuracy-gated on openvino-gpu" in r.getMessage()
               for r in caplog.records)


def test_the_pipeline_on_openvino_finds_what_it_finds_on_onnxruntime(tmp_path):
    """The demo cine through the free-fluid bundle: one urgent episode on both runtimes."""
    from edge.commands.replay import MemorySink
    from edge.config import SourceConfig
    from edge.sources import SourceContext
    from edge.sources.replay import ReplaySource

    root = _copy(tmp_path, "us-free-fluid")
    found = {}
    for providers in (("cpu",), ("openvino",)):
        lm = assemble(load_bundle(root), _cfg(root, *providers), False, LOG)
        sink = MemorySink()
        src = ReplaySource(SourceConfig(name="cine", kind="replay", model="m", path=ROOT / "models/samples/us_cine.dcm",
                                        realtime=False), SourceContext(tmp_path))
        assert build_pipeline(src, lm, "cart", None, sink, Metrics()).start().join(60)
        found[providers[0]] = [(f.label, f.priority, f.frame_range) for f in sink.found.values()]
        lm.close()
    assert found["openvino"] and [x[:2] for x in found["openvino"]] == [x[:2] for x in found["cpu"]]
    (a,), (b,) = found["cpu"], found["openvino"]
    assert abs(a[2][0] - b[2][0]) <= 1 and abs(a[2][1] - b[2][1]) <= 1  # the same episode, give or take a frame


def test_sources_sharing_one_openvino_backend_get_their_own_outputs(tmp_path):
    """Two pipelines on one model share its backend: each frame's outputs must be that frame's."""
    import threading

    root = _copy(tmp_path, "cxr-opacity")
    b = load_bundle(root)
    be = build_backend(b, _cfg(root, "openvino"), LOG)
    shape = [int(d) for d in b.manifest.input.shape]
    xs = [np.full(shape, v, np.float32) for v in (-1.5, 1.5)]
    want = [be.run(x)[b.manifest.outputs[0].name].copy() for x in xs]
    wrong = []

    def worker(k: int) -> None:
        for _ in range(200):
            got = be.run(xs[k])[b.manifest.outputs[0].name]
            if not np.array_equal(got, want[k]):
                wrong.append(k)

    threads = [threading.Thread(target=worker, args=(k,)) for k in (0, 1)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not np.array_equal(want[0], want[1]) and wrong == []


def test_the_gpu_plugin_needs_its_own_gate(tmp_path, caplog):
    root = _copy(tmp_path, "cxr-opacity")
    b = load_bundle(root)
    assert "openvino-gpu" not in b.manifest.runtimes  # export gates the CPU plugin only
    with caplog.at_level(logging.WARNING):
        be = build_backend(b, _cfg(root, "openvino-gpu", "cpu"), LOG)
    assert be.name == "onnxruntime"
    assert any("not accuracy-gated on openvino-gpu" in r.getMessage() or "no OpenVINO GPU device" in r.getMessage()
               for r in caplog.records)


def test_openvinos_own_file_has_8bit_weights_but_7bit_in_the_first_layer_and_no_tail_round_trip():
    """NNCF's overflow rule (7-bit where the wide input is read) and its float tail, checked in the file."""
    import onnx
    from onnx import numpy_helper

    b = load_bundle(BUNDLES / "us-free-fluid")
    recipe = b.manifest.raw["variants"]["int8"]["runtime_recipes"]["openvino"]
    m = onnx.load(str(b.model_path("int8", "openvino")))
    inits = {i.name: numpy_helper.to_array(i) for i in m.graph.initializer}
    producer = {o: n for n in m.graph.node for o in n.output}
    convs = [n for n in m.graph.node if n.op_type == "Conv"]
    wmax = {n.name: int(np.abs(inits[producer[n.input[1]].input[0]].astype(np.int32)).max()) for n in convs}
    first = recipe["seven_bit_weight_nodes"]
    assert first and all(wmax[n] <= 64 for n in first)
    assert max(v for k, v in wmax.items() if k not in first) > 64  # 8-bit elsewhere
    out = m.graph.output[0].name
    assert producer[producer[out].input[0]].op_type == "Conv"  # logits straight from the head conv (via Identity)


def test_two_pipelines_sharing_one_openvino_backend_keep_every_frames_own_outputs_in_order(tmp_path):
    """The infer stage submits a queued frame before it collects the one in flight (two requests): with two
    sources on one backend neither may wait on the other's request, and no frame may get another's
    outputs or arrive out of order."""
    from edge.commands.replay import MemorySink
    from edge.frames import Frame
    from edge.imaging.dicom import decode_file
    from tests.support.sources import ListSource

    root = _copy(tmp_path, "us-free-fluid")
    lm = assemble(load_bundle(root), _cfg(root, "openvino"), False, LOG)
    assert callable(getattr(lm.backend, "start", None))
    cine = decode_file(ROOT / "models/samples/us_cine.dcm")

    def frames(order):
        return [Frame(pixels=cine[i].pixels, modality="US", source="s", index=k, region=cine[i].region,
                      spacing_mm=cine[i].spacing_mm) for k, i in enumerate(order)]

    orders = {"a": list(range(60)), "b": list(range(59, -1, -1))}
    want = {}
    for name, order in orders.items():  # one frame at a time, run synchronously
        want[name] = []
        for f in frames(order):
            x, geom = lm.preprocessor.apply(f)
            want[name].append((f.index, lm.task.peak_scores(lm.backend.run(x), geom, f)))
    assert want["a"][0][1] != want["a"][30][1]  # frames differ, so a swap would show
    got: dict[str, list] = {name: [] for name in orders}
    pipes = [build_pipeline(ListSource(frames(order), name=name), lm, "cart", None, MemorySink(), Metrics(),
                            on_scores=lambda f, s, name=name: got[name].append((f.index, s)))
             for name, order in orders.items()]
    for p in pipes:
        p.start()
    assert all(p.join(60) for p in pipes) and not any(p.failure for p in pipes)
    assert got == want  # in order, none lost, each frame's own outputs
    lm.close()
