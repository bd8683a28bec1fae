"""The TF Serving configuration files (serving/config.py), as text TF Serving reads, checked against the rules of
its protos. In-process and fast: `make mutate` runs them against each mutant. The files on a running server:
test_promote.py and test_tfserving_conformance.py."""

import uuid

import pytest
from google.protobuf import text_format

from xray.serving import config as serving_config


def _text(message) -> str:
    return text_format.MessageToString(message)


def test_without_labels_the_latest_version_is_served():
    assert _text(serving_config.models_config("/models/xray")) == (
        'model_config_list {\n  config {\n    name: "xray"\n    base_path: "/models/xray"\n'
        '    model_platform: "tensorflow"\n    model_version_policy {\n      latest {\n        num_versions: 1\n'
        '      }\n    }\n  }\n}\n')


def test_labels_serve_exactly_the_labelled_and_staged_versions():
    config = serving_config.models_config("/m", {"stable": 1, "canary": 2}, name="chest", staged={3})
    (model,) = config.model_config_list.config
    assert (model.name, model.base_path, model.model_platform) == ("chest", "/m", "tensorflow")
    assert list(model.model_version_policy.specific.versions) == [1, 2, 3]
    assert dict(model.version_labels) == {"stable": 1, "canary": 2}
    assert not model.model_version_policy.HasField("latest")
    assert serving_config.labels_of(config, "chest") == {"stable": 1, "canary": 2}
    assert serving_config.staged_of(config, "chest") == {3}
    assert serving_config.labels_of(config) == {} and serving_config.staged_of(config) == set()  # another model
    # Two labels on one version: the version once.
    same = serving_config.models_config("/m", {"stable": 2, "canary": 2})
    assert list(same.model_config_list.config[0].model_version_policy.specific.versions) == [2]
    # A version staged before any label: served alone, no label.
    staged = serving_config.models_config("/m", staged={5})
    assert list(staged.model_config_list.config[0].model_version_policy.specific.versions) == [5]
    assert serving_config.staged_of(staged) == {5} and serving_config.labels_of(staged) == {}


def test_an_unknown_label_is_refused_with_the_allowed_ones():
    with pytest.raises(ValueError) as caught:
        serving_config.models_config("/m", {"beta": 1, "stable": 1})
    assert str(caught.value) == "unknown version label(s) ['beta']; use stable, canary"


def test_labels_are_read_back_from_the_file_under_the_model_base(tmp_path):
    assert serving_config.read_labels(str(tmp_path)) == {}  # no file yet
    assert serving_config.config_path(str(tmp_path) + "/") == f"{tmp_path}/models.config"
    assert serving_config.config_path("gs://b/modelX/") == "gs://b/modelX/models.config"
    serving_config.write_text_proto(serving_config.models_config("/m", {"stable": 4}), serving_config.config_path(
        str(tmp_path)))
    assert serving_config.read_labels(str(tmp_path)) == {"stable": 4}
    parsed = serving_config.read_models_config(f"{tmp_path}/models.config")
    assert parsed == serving_config.models_config("/m", {"stable": 4})


def test_the_batching_file_follows_tf_servings_rules():
    """session_bundle_config.proto: allowed_batch_sizes increasing, the last equal to max_batch_size."""
    for largest in (64, 16, 8, 1):
        params = serving_config.batching_config(max_batch_size=largest)
        sizes = list(params.allowed_batch_sizes)
        assert sizes == sorted(set(sizes)) and sizes[-1] == largest, sizes
    text = _text(serving_config.batching_config())
    assert text == ("max_batch_size {\n  value: 64\n}\nbatch_timeout_micros {\n  value: 2000\n}\n"
                    "max_enqueued_batches {\n  value: 100\n}\nnum_batch_threads {\n  value: 4\n}\n"
                    "allowed_batch_sizes: 1\nallowed_batch_sizes: 4\nallowed_batch_sizes: 16\nallowed_batch_sizes: 64\n")
    assert serving_config.parse_text("BatchingParameters", text) == serving_config.batching_config()


def test_the_local_schema_has_tf_servings_field_names_and_numbers():
    """The wheel ships neither BatchingParameters nor MonitoringConfig; ours must match session_bundle_config.proto
    and monitoring_config.proto, name for name and number for number."""
    fields = {kind: {f.name: f.number for f in serving_config.schema()[kind].DESCRIPTOR.fields}
              for kind in ("BatchingParameters", "MonitoringConfig")}
    assert fields["BatchingParameters"] == {"max_batch_size": 1, "batch_timeout_micros": 2, "max_enqueued_batches": 3,
                                            "num_batch_threads": 4, "thread_pool_name": 5, "allowed_batch_sizes": 6,
                                            "pad_variable_length_inputs": 7}
    assert fields["MonitoringConfig"] == {"prometheus_config": 1}
    prometheus = serving_config.schema()["MonitoringConfig"].DESCRIPTOR.fields_by_name["prometheus_config"].message_type
    assert {f.name: f.number for f in prometheus.fields} == {"enable": 1, "path": 2}
    # Text from TF Serving's own documentation parses.
    parsed = serving_config.parse_text("BatchingParameters", "max_batch_size { value: 128 }\n"
                                       "batch_timeout_micros { value: 0 }\nmax_enqueued_batches { value: 1000000 }\n"
                                       "num_batch_threads { value: 8 }\nthread_pool_name { value: 'x' }\n"
                                       "pad_variable_length_inputs: true\n")
    assert parsed.max_batch_size.value == 128 and parsed.thread_pool_name.value == "x"
    assert parsed.pad_variable_length_inputs is True


def test_monitoring_turns_prometheus_on_at_its_path():
    assert _text(serving_config.monitoring_config()) == (
        'prometheus_config {\n  enable: true\n  path: "/monitoring/prometheus/metrics"\n}\n')


def test_write_all_writes_the_three_files_for_the_servers_path(tmp_path):
    import tensorflow as tf

    out = tmp_path / "cfg"
    assert serving_config.write_all(str(out) + "/", "/models/xray", {"stable": 1}) == [
        "batching.config", "models.config", "monitoring.config"]
    # A trailing slash on a bucket-style path (TensorFlow's ram:// file system keeps "a//b" apart from "a/b").
    folder = f"ram://{uuid.uuid4().hex}X"  # ram:// lives as long as the process: a name of this run's own
    serving_config.write_all(folder + "/", "/models/xray")
    assert sorted(tf.io.gfile.listdir(folder)) == ["batching.config", "models.config", "monitoring.config"]
    assert serving_config.read_labels(str(out)) == {"stable": 1}
    models = serving_config.read_models_config(str(out / "models.config"))
    assert models.model_config_list.config[0].base_path == "/models/xray"
    assert (out / "batching.config").read_text() == _text(serving_config.batching_config())
    assert (out / "monitoring.config").read_text() == _text(serving_config.monitoring_config())



def test_a_bucket_model_base_is_served_from_where_it_is(tmp_path):
    """models.config written by the first export: for a bucket (TF Serving reads gs:// itself) the model's base path is
    the bucket's folder; for a folder on the volume, /models/xray, where the Deployment and make serve mount it.
    file:// stands in for gs:// here: the same tf.io.gfile calls, on a URI."""
    from xray.serving import export

    bucket, volume = tmp_path / "bucket" / "models", tmp_path / "volume" / "models"
    for folder, base, served in ((bucket, f"file://{bucket}", f"file://{bucket}"), (volume, str(volume), "/models/xray")):
        folder.mkdir(parents=True)
        export.ensure_models_config(base)
        text = (folder / "models.config").read_text()
        assert f'base_path: "{served}"' in text, text
