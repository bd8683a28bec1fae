"""Export, serving configuration, and the gRPC/REST clients against a TF Serving stand-in (tests/tfserving_stub/)
that runs the REAL exported SavedModel."""

import base64
import json
import subprocess
import sys

import grpc
import numpy as np
import pytest
import requests
import tensorflow as tf

from xray.clients import ServingError
from xray.clients.grpc import GrpcClient
from xray.clients.predict import LocalModel, predict_files
from xray.clients.rest import RestClient
from conftest import REPO, run_xray
from xray.serving import config as serving_config
from xray.serving import contract, export
from tfserving_stub import deployment_server
from xray.data import pixels, schema


@pytest.fixture(scope="module")
def server(model_base, tmp_path_factory):
    config_dir = tmp_path_factory.mktemp("serving-config")
    stub = deployment_server(str(model_base), labels={"stable": 1, "canary": 2}, config_dir=str(config_dir)).start()
    stub.core.wait_for_loads()  # the ports open once version 2 (the newest) is up; version 1 may still be loading
    yield stub
    stub.stop()


@pytest.fixture(scope="module")
def images(synth_dir):
    paths = sorted(synth_dir.glob("test/*/*.jpeg"))[:6]
    return [p.read_bytes() for p in paths]


# --- export ------------------------------------------------------------------------------------------


def test_versions_are_integer_directories_with_card_and_no_leftovers(model_base):
    # The versions, and the models.config the server reads at start (created by the first export, no label).
    assert sorted(p.name for p in model_base.iterdir()) == ["1", "2", "models.config"]
    config = serving_config.read_models_config(str(model_base / "models.config"))
    assert config.model_config_list.config[0].base_path == "/models/xray"
    assert serving_config.labels_of(config) == {} and \
        config.model_config_list.config[0].model_version_policy.latest.num_versions == 1
    card = json.loads((model_base / "1" / contract.MODEL_CARD).read_text())
    for key in ("config", "data_manifest_sha256", "metrics", "threshold", "code_version", "created", "ci95"):
        assert card[key] is not None, key
    assert card["version"] == 1 and 0 <= card["threshold"] <= 1
    assert [v["version"] for v in export.list_versions(str(model_base))] == [1, 2]


def test_signatures_as_saved_model_cli_shows_them(model_base):
    cli = REPO / ".venv/bin/saved_model_cli"
    command = [str(cli)] if cli.exists() else [sys.executable, "-m", "tensorflow.python.tools.saved_model_cli"]
    out = subprocess.run([*command, "show", "--dir", str(model_base / "1"), "--all"],
                         capture_output=True, text=True, check=True).stdout
    default = out.split("signature_def['serving_default']:")[1].split("signature_def[")[0]
    assert "inputs['image_bytes'] tensor_info:" in default and "dtype: DT_STRING" in default and "shape: (-1)" in default
    assert "outputs['probability'] tensor_info:" in default and "dtype: DT_FLOAT" in default
    assert "outputs['label'] tensor_info:" in default
    tensor = out.split("signature_def['predict_tensor']:")[1].split("signature_def[")[0]
    assert "inputs['image'] tensor_info:" in tensor and "shape: (-1, 32, 32, 3)" in tensor
    assert "signature_def['explain']" in out


def test_serving_default_decodes_like_the_training_reader(model_base, shards_dir):
    loaded = tf.saved_model.load(str(model_base / "1"))
    path = sorted(shards_dir.glob("test-*.tfrecord"))[0]
    raw = [schema.parse_example(r)["image_bytes"] for r in tf.data.TFRecordDataset(str(path)).take(3)]
    from_bytes = loaded.signatures["serving_default"](image_bytes=tf.stack(raw))["probability"].numpy()
    reader_images = tf.stack([pixels.preprocess_image(r, 32) for r in raw])
    from_tensor = loaded.signatures["predict_tensor"](image=reader_images)["probability"].numpy()
    np.testing.assert_allclose(from_bytes, from_tensor, rtol=0, atol=1e-6)


def test_warmup_file_is_prediction_logs_the_model_answers(model_base):
    from tensorflow_serving.apis import prediction_log_pb2

    loaded = tf.saved_model.load(str(model_base / "1"))
    logs = []
    for raw in tf.data.TFRecordDataset(str(model_base / "1" / contract.WARMUP_FILE)):
        log = prediction_log_pb2.PredictionLog()
        log.ParseFromString(raw.numpy())
        logs.append(log)
    assert 1 <= len(logs) <= 1000
    for log in logs:
        request = log.predict_log.request
        assert request.model_spec.name == contract.MODEL_NAME
        batch = tf.make_ndarray(request.inputs[contract.INPUT_BYTES])
        out = loaded.signatures[request.model_spec.signature_name](image_bytes=tf.constant(batch))
        assert out["probability"].shape == (len(batch),)


def test_crash_during_export_leaves_no_version_directory(trained_workdir, tmp_path, monkeypatch):
    def crash(*args, **kwargs):
        raise KeyboardInterrupt("killed while writing the warmup file")

    monkeypatch.setattr(export, "warmup_records", crash)
    with pytest.raises(KeyboardInterrupt):
        export.export(export.ExportRequest(str(trained_workdir), str(tmp_path)), log=lambda *_: None)
    assert list(tmp_path.iterdir()) == []


def test_gate_accepts_better_and_refuses_worse():
    def versions(auc):
        return [{"version": 3, "card": {"metrics": {"roc_auc": auc}}}]

    assert export.check_gate(0.90, [], 0.01)[0]
    assert export.check_gate(0.95, versions(0.90), 0.01)[0]
    assert export.check_gate(0.895, versions(0.90), 0.01)[0]  # within tolerance
    ok, message = export.check_gate(0.80, versions(0.90), 0.01)
    assert not ok and "version 3" in message and "0.9000" in message


def test_the_card_records_both_paths_and_the_gate_judges_the_serving_one(model_base, shards_dir):
    card = json.loads((model_base / "1" / contract.MODEL_CARD).read_text())
    serving = card["serving_path"]
    assert 0 <= serving["roc_auc"] <= 1 and 0 <= card["metrics"]["roc_auc"] <= 1
    manifest = json.loads((shards_dir / "manifest.json").read_text())
    assert serving["num_examples"] == sum(manifest["counts"]["test"].values())
    assert serving["images"].startswith("original files under")  # the synth folder is reachable here
    assert card["gate"]["judged_on"] == "serving_path.roc_auc"
    assert export.recorded_auc(card) == serving["roc_auc"]
    assert export.recorded_auc({"metrics": {"roc_auc": 0.8}}) == 0.8  # a card from before the check


@pytest.mark.parametrize("training, ci, serving, refused", [
    (0.95, [0.93, 0.97], 0.94, False),   # within 0.02
    (0.95, [0.93, 0.97], 0.90, True),    # below the tolerance and the interval: other pixels
    (0.75, [0.45, 0.95], 0.72, False),   # small test set: one swapped pair, inside the interval
    (0.75, [0.45, 0.95], 0.40, True),
])
def test_a_serving_auc_far_below_the_training_auc_is_refused(training, ci, serving, refused):
    reason = export.skew_refusal(training, ci, serving)
    assert (reason is not None) == refused
    if refused:
        assert "training and serving see different pixels" in reason


def test_export_refuses_a_worse_candidate_unless_forced(trained_workdir, tmp_path):
    better = tmp_path / "7" / "assets.extra"
    better.mkdir(parents=True)
    (better / "model.json").write_text(json.dumps({"metrics": {"roc_auc": 1.01}}))  # unbeatable
    with pytest.raises(export.GateRefused, match="refusing to push"):
        export.export(export.ExportRequest(str(trained_workdir), str(tmp_path)), log=lambda *_: None)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["7"]
    card = export.export(export.ExportRequest(str(trained_workdir), str(tmp_path), force=True), log=lambda *_: None)
    assert card["version"] == 8 and card["gate"]["forced"]


def test_export_cli_gate_exit_status_and_list(trained_workdir, model_base, tmp_path):
    result = run_xray("export", "--workdir", trained_workdir, "--model-base", model_base, "--version", 1, check=False)
    assert result.returncode == 2 and "version 1 already exists" in result.stderr
    listing = run_xray("export", "--model-base", model_base, "--list").stdout
    assert listing.splitlines()[0].split()[0] == "1" and "auc" in listing


# --- serving configuration ---------------------------------------------------------------------------


def test_config_files_parse_with_the_serving_protos(tmp_path):
    names = serving_config.write_all(str(tmp_path), "/models/xray", {"stable": 1, "canary": 2})
    assert names == ["batching.config", "models.config", "monitoring.config"]
    models = serving_config.read_models_config(str(tmp_path / "models.config"))
    (entry,) = models.model_config_list.config
    assert (entry.name, entry.base_path, entry.model_platform) == ("xray", "/models/xray", "tensorflow")
    assert list(entry.model_version_policy.specific.versions) == [1, 2]
    assert dict(entry.version_labels) == {"stable": 1, "canary": 2}
    batching = serving_config.parse_text("BatchingParameters", (tmp_path / "batching.config").read_text())
    assert batching.max_batch_size.value == contract.MAX_BATCH and batching.allowed_batch_sizes[-1] == contract.MAX_BATCH
    monitoring = serving_config.parse_text("MonitoringConfig", (tmp_path / "monitoring.config").read_text())
    assert monitoring.prometheus_config.enable and monitoring.prometheus_config.path.startswith("/monitoring")


def test_labels_point_only_at_existing_versions(tmp_path):
    from xray.serving import promote

    base = str(tmp_path)
    move = promote.move_label(base, "canary", 2, [], base_path="/models/xray", available={1, 2}, log=lambda _: None)
    assert move.labels == {"canary": 2}
    move = promote.move_label(base, "stable", 1, [], base_path="/models/xray", available={1, 2}, log=lambda _: None)
    assert move.labels == {"canary": 2, "stable": 1} and move.previous is None
    with pytest.raises(promote.PromoteError, match="version 5 does not exist"):
        promote.move_label(base, "stable", 5, [], base_path="/models/xray", available={1, 2}, log=lambda _: None)
    assert serving_config.read_labels(base) == {"canary": 2, "stable": 1}
    without = serving_config.models_config("/models/xray")
    assert without.model_config_list.config[0].model_version_policy.latest.num_versions == 1


# --- clients against the stand-in server ------------------------------------------------------------


def test_grpc_rest_and_in_process_agree(server, model_base, images):
    local = LocalModel(str(model_base / "2")).predict(images)
    with GrpcClient(f"127.0.0.1:{server.grpc_port}") as grpc_client:
        via_grpc = grpc_client.predict(images)
    via_rest = RestClient(f"http://127.0.0.1:{server.rest_port}").predict(images)
    for a, b, c in zip(local, via_grpc, via_rest):
        assert a["probability"] == pytest.approx(b["probability"], abs=1e-6) == pytest.approx(c["probability"], abs=1e-6)
        assert a["label"] == b["label"] == c["label"] and a["label"] in contract.CLASS_NAMES


def test_b64_round_trip_reaches_the_model_byte_for_byte(server, images):
    body = RestClient(f"http://127.0.0.1:{server.rest_port}").build_request(images[:1])
    encoded = body["instances"][0][contract.INPUT_BYTES]["b64"]
    assert base64.b64decode(encoded) == images[0]
    columnar = requests.post(f"http://127.0.0.1:{server.rest_port}/v1/models/xray:predict",
                             json={"inputs": {contract.INPUT_BYTES: [{"b64": encoded}]}}).json()
    row = requests.post(f"http://127.0.0.1:{server.rest_port}/v1/models/xray:predict", json=body).json()
    assert columnar["outputs"]["probability"][0] == pytest.approx(row["predictions"][0]["probability"])


def test_versions_and_labels_route_to_the_right_model(server, images):
    rest = f"http://127.0.0.1:{server.rest_port}"
    grpc_target = f"127.0.0.1:{server.grpc_port}"
    for version, label in ((1, "stable"), (2, "canary")):
        by_version = RestClient(rest, version=version).predict(images[:2])
        by_label = RestClient(rest, label=label).predict(images[:2])
        with GrpcClient(grpc_target, label=label) as client:
            by_grpc_label = client.predict(images[:2])
        assert by_version == by_label
        assert [r["probability"] for r in by_label] == pytest.approx([r["probability"] for r in by_grpc_label], abs=1e-6)
    status = RestClient(rest).status()
    assert [(s["version"], s["state"]) for s in status] == [(2, "AVAILABLE"), (1, "AVAILABLE")]  # newest first
    with GrpcClient(grpc_target) as client:
        assert client.status() == status
        metadata = client.metadata()
    assert metadata == RestClient(rest).metadata()
    assert metadata["name"] == "xray" and metadata["version"] == 2
    assert metadata["signatures"]["serving_default"]["inputs"][contract.INPUT_BYTES] == {"dtype": "DT_STRING", "shape": [-1]}


@pytest.mark.parametrize("body, expected", [
    (b"", "document is empty"),
    (json.dumps({"instances": [{contract.INPUT_BYTES: {"b64": base64.b64encode(b"not an image").decode()}}]}).encode(), ""),
    (json.dumps({"instances": [{contract.INPUT_BYTES: {"b64": "!!!not-base64!!!"}}]}).encode(), "base64"),
    (json.dumps({"instances": [{"pixels": {"b64": base64.b64encode(b"x").decode()}}]}).encode(), "does not have named input: pixels"),
    (json.dumps({"instances": [{contract.INPUT_BYTES: 3.5}]}).encode(), "is not of expected type: string"),
    (json.dumps({"instances": [1], "inputs": [1]}).encode(), "expecting only one of 'inputs' or 'instances'"),
])
def test_bad_rest_requests_get_400_and_the_server_stays_up(server, images, body, expected):
    url = f"http://127.0.0.1:{server.rest_port}/v1/models/xray:predict"
    response = requests.post(url, data=body)
    assert response.status_code == 400, response.text
    assert expected in response.json()["error"]
    assert RestClient(f"http://127.0.0.1:{server.rest_port}").predict(images[:1])[0]["label"] in contract.CLASS_NAMES


def test_truncated_jpeg_and_oversized_batch_are_invalid_argument(server, images):
    truncated = images[0][: len(images[0]) // 3]
    with GrpcClient(f"127.0.0.1:{server.grpc_port}") as client:
        with pytest.raises(ServingError) as info:
            client.predict([truncated])
        assert info.value.code == "INVALID_ARGUMENT"
        request = client.build_request(images[:1])
        request.inputs[contract.INPUT_BYTES].string_val.extend([images[0]] * contract.MAX_BATCH)
        request.inputs[contract.INPUT_BYTES].tensor_shape.dim[0].size = contract.MAX_BATCH + 1
        with pytest.raises(grpc.RpcError) as raw:  # sent as it is: the client itself refuses such a batch
            client.prediction.Predict(request, timeout=30)
        assert raw.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "batch size" in raw.value.details()
        assert client.predict(images[:1])  # still up
    with pytest.raises(ServingError, match="limit is 64"):
        RestClient("http://127.0.0.1:1").build_request([images[0]] * (contract.MAX_BATCH + 1))
    response = requests.post(f"http://127.0.0.1:{server.rest_port}/v1/models/xray:predict",
                             json={"instances": [{contract.INPUT_BYTES: {"b64": base64.b64encode(images[0]).decode()}}] * 65})
    assert response.status_code == 400


def test_unknown_model_or_version_is_not_found(server, images):
    with pytest.raises(ServingError) as info:
        RestClient(f"http://127.0.0.1:{server.rest_port}", model_name="nope").predict(images[:1])
    assert info.value.code == "NOT_FOUND"
    with GrpcClient(f"127.0.0.1:{server.grpc_port}", version=9) as client:
        with pytest.raises(ServingError) as info:
            client.predict(images[:1])
    assert info.value.code == "NOT_FOUND"


def test_server_down_is_one_clear_error_after_retries():
    with pytest.raises(ServingError) as info:
        RestClient("http://127.0.0.1:9", timeout=2).predict([b"\xff\xd8\xff"])
    assert info.value.code == "UNAVAILABLE" and "cannot reach TF Serving" in info.value.message
    with GrpcClient("127.0.0.1:9", timeout=2, retries=2, backoff=0.01) as client:
        with pytest.raises(ServingError) as info:
            client.predict([b"\xff\xd8\xff"])
    assert info.value.code == "UNAVAILABLE" and "after 3 attempt(s)" in info.value.message


def test_a_bad_file_in_a_batch_does_not_cost_the_others_their_answers(server, synth_dir, tmp_path):
    good = sorted(synth_dir.glob("test/*/*.jpeg"))[:3]
    fake_jpeg = tmp_path / "fake.jpeg"
    fake_jpeg.write_bytes(b"\xff\xd8\xff" + b"\x00" * 50)  # passes the magic check, fails decoding on the server
    text = tmp_path / "notes.jpeg"
    text.write_text("not an image")
    paths = [str(good[0]), str(fake_jpeg), str(good[1]), str(text), str(good[2])]
    rows = list(predict_files(RestClient(f"http://127.0.0.1:{server.rest_port}"), paths, batch_size=4))
    assert [r["path"] for r in rows] == paths
    assert ["error" in r for r in rows] == [False, True, False, True, False]
    assert "not a JPEG/PNG/BMP/GIF/TIFF/DICOM image" in rows[3]["error"]


def test_rest_client_does_not_import_tensorflow():
    code = "import xray.clients.rest, sys; assert 'tensorflow' not in sys.modules, 'tensorflow imported'"
    subprocess.run([sys.executable, "-c", code], cwd=REPO, check=True)


@pytest.mark.parametrize("flag", ["--grpc", "--rest", "--model"])
def test_xray_predict_cli(server, model_base, synth_dir, tmp_path, flag):
    target = {"--grpc": f"127.0.0.1:{server.grpc_port}", "--rest": f"http://127.0.0.1:{server.rest_port}",
              "--model": str(model_base)}[flag]
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"")
    result = run_xray("predict", synth_dir / "test" / "NORMAL", broken, flag, target, check=False)
    rows = [json.loads(line) for line in result.stdout.splitlines()]
    assert result.returncode == 1 and "1 of" in result.stderr
    assert rows[-1] == {"path": str(broken), "error": "empty file"}
    assert all(0 <= r["probability"] <= 1 and r["label"] in contract.CLASS_NAMES for r in rows[:-1])
    assert len(rows) - 1 == len(list((synth_dir / "test" / "NORMAL").glob("*.jpeg")))


def test_xray_predict_sends_batch_size_images_per_request_and_prints_a_table(server, synth_dir):
    """--batch-size N: N images per request, as a recording proxy in front of the stand-in's REST port sees them;
    --format table: a header and one row per file with its probability and label; a size out of 1-64 is one line."""
    import http.server
    import threading

    sizes = []
    upstream = f"http://127.0.0.1:{server.rest_port}"

    class Recorder(http.server.BaseHTTPRequestHandler):
        def _forward(self, method):
            body = self.rfile.read(int(self.headers.get("Content-Length") or 0)) or None
            if body:
                sizes.append(len(json.loads(body)["instances"]))
            answer = requests.request(method, upstream + self.path, data=body, timeout=60,
                                      headers={"Content-Type": "application/json"})
            self.send_response(answer.status_code)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(answer.content)))
            self.end_headers()
            self.wfile.write(answer.content)

        def do_GET(self):
            self._forward("GET")

        def do_POST(self):
            self._forward("POST")

        def log_message(self, *args):
            pass

    proxy = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Recorder)
    threading.Thread(target=proxy.serve_forever, daemon=True).start()
    try:
        films = sorted(synth_dir.glob("test/*/*.jpeg"))[:7]
        result = run_xray("predict", *films, "--rest", f"http://127.0.0.1:{proxy.server_address[1]}",
                          "--batch-size", 3, "--format", "table")
    finally:
        proxy.shutdown()
        proxy.server_close()
    assert sizes == [3, 3, 1]
    header, *rows = result.stdout.splitlines()
    assert header.split() == ["path", "probability", "label"] and len(rows) == 7
    for film, row in zip(films, rows):
        path, probability, label = row.split()
        assert path == str(film) and 0 <= float(probability) <= 1 and label in contract.CLASS_NAMES
    for size in (0, 65):
        refused = run_xray("predict", films[0], "--rest", upstream, "--batch-size", size, check=False)
        assert refused.returncode == 2 and "Traceback" not in refused.stderr
        assert f"--batch-size {size} must be between 1 and 64" in refused.stderr


def test_xray_predict_explain_writes_overlays(model_base, synth_dir, tmp_path):
    image = sorted(synth_dir.glob("test/PNEUMONIA/*.jpeg"))[0]
    run_xray("predict", image, "--model", model_base, "--explain", tmp_path / "cam", "--format", "table")
    (overlay,) = (tmp_path / "cam").iterdir()
    assert overlay.name == f"{image.stem}_gradcam.png" and overlay.read_bytes().startswith(b"\x89PNG")


def test_xray_predict_against_a_dead_server_is_one_line(synth_dir):
    image = sorted(synth_dir.glob("test/*/*.jpeg"))[0]
    for flag, target in (("--rest", "http://127.0.0.1:9"), ("--grpc", "127.0.0.1:9")):
        result = run_xray("predict", image, flag, target, "--timeout", 2, check=False)
        assert result.returncode == 2, result.stderr
        assert "UNAVAILABLE" in result.stderr and "cannot reach TF Serving" in result.stderr
        assert "Traceback" not in result.stderr
    result = run_xray("predict", "/nonexistent/*.jpeg", "--grpc", "127.0.0.1:9", check=False)
    assert result.returncode == 2 and "no image files found" in result.stderr


def test_make_serve_runs_tf_serving_with_the_deployments_flags():
    """The local server and the cluster's behave alike: the same tensorflow_model_server flags (ports and the
    gRPC channel arguments aside)."""
    from tfserving_stub import deployment_args

    dry_run = subprocess.run(["make", "-n", "serve"], cwd=REPO, capture_output=True, text=True, check=True).stdout
    docker = dry_run[dry_run.index("docker run"):].replace("\\\n", " ")
    flags = set(docker.split("tensorflow/serving")[1].split())
    wanted = {a for a in deployment_args() if not a.startswith(("--port", "--rest_api_port", "--grpc_channel_arguments"))}
    assert wanted <= flags, wanted - flags


def _negated(workdir, dest):
    """A copy of a run whose last layer is negated: every probability p becomes 1 - p, so its test AUC is exactly
    one minus the original's. With the original it makes a pair of real models, one better than the other."""
    import shutil

    from xray.trainer.config import Config
    from xray.trainer.model import OUTPUT_NAME, load_trained
    from xray.trainer.workdir import Workdir

    shutil.copytree(workdir, dest)
    paths = Workdir(str(dest))
    model = load_trained(Config.load(paths.config).model, paths.best_weights)
    layer = model.get_layer(OUTPUT_NAME)
    layer.set_weights([-w for w in layer.get_weights()])
    model.save_weights(paths.best_weights)
    return dest


def test_the_gate_judges_against_the_newest_version_and_the_cli_exits_3(trained_workdir, model_base, tmp_path):
    """Real versions on disk: v1 the worse model, v2 the better one (accepted over v1); the worse one again is
    refused with exit 3 because v2, the newest, is better (against v1, the oldest, it would pass)."""
    auc = json.loads((model_base / "1" / contract.MODEL_CARD).read_text())["serving_path"]["roc_auc"]
    gap = abs(2 * auc - 1)  # the pair's AUCs are auc and 1 - auc
    assert gap > 0.002, f"the fixture model's AUC {auc} is too close to 0.5 to make a better and a worse model"
    negated = _negated(trained_workdir, tmp_path / "negated")
    better, worse = (trained_workdir, negated) if auc > 0.5 else (negated, trained_workdir)
    base, tolerance = tmp_path / "models", f"{gap / 2:.6f}"

    def export_(workdir):
        return run_xray("export", "--workdir", workdir, "--model-base", base, "--tolerance", tolerance, check=False,
                        timeout=600)

    assert export_(worse).returncode == 0 and export_(better).returncode == 0
    refused = export_(worse)
    assert refused.returncode == 3 and "refusing to push" in refused.stderr and "version 2" in refused.stderr
    assert sorted(p.name for p in base.iterdir() if p.name.isdigit()) == ["1", "2"]


def test_the_skew_refusal_inside_export_with_the_serving_measurement_replaced(trained_workdir, tmp_path, monkeypatch):
    """Shortcut, named: export()'s own decision on a serving-path AUC far below the training path's, with the
    serving measurement replaced by a low number (no real skewed model is made here). The version is not
    written; --force writes it."""
    monkeypatch.setattr(export, "serving_path_metrics",
                        lambda *args, **kwargs: {"roc_auc": 0.0, "num_examples": 1, "images": "replaced"})
    monkeypatch.setattr(export.evaluate, "run", lambda *args, **kwargs: {"test": {
        "metrics": {"roc_auc": 0.9}, "ci95": {"roc_auc": [0.85, 0.95]}, "threshold": 0.5, "num_examples": 1},
        "threshold_method": "youden"})
    with pytest.raises(export.GateRefused, match="training and serving see different pixels"):
        export.export(export.ExportRequest(str(trained_workdir), str(tmp_path)), log=lambda *_: None)
    assert not [p for p in tmp_path.iterdir() if p.name.isdigit() or p.name.startswith(".tmp")]
    monkeypatch.setattr(export, "check_gate", lambda *args: (True, "no earlier version"))
    card = export.export(export.ExportRequest(str(trained_workdir), str(tmp_path), force=True), log=lambda *_: None)
    assert card["version"] == 1 and (tmp_path / "1" / "saved_model.pb").exists()
