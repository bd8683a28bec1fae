"""TF Serving configuration files, generated and parsed with the tensorflow-serving-api protos.

- ``models.config``   ModelServerConfig: base path, version policy, ``stable``/``canary`` labels
- ``batching.config`` BatchingParameters for --enable_batching
- ``monitoring.config`` MonitoringConfig: Prometheus metrics on the REST port

With labels the version policy serves exactly the labelled versions (plus any "staged" version being
loaded before a label moves to it); without labels or staged versions it serves the latest one.
xray/serving/promote.py moves labels on running servers.

Moving a label on running servers is xray/serving/promote.py's job (stage, wait for AVAILABLE, move).
"""

from __future__ import annotations

import functools

import tensorflow as tf
from google.protobuf import text_format
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory
from tensorflow_serving.config import model_server_config_pb2

from xray.serving import contract
from xray.data.atomic import write_atomic

PROMETHEUS_PATH = "/monitoring/prometheus/metrics"


def models_config(base_path: str, labels: dict[str, int] | None = None, name: str = contract.MODEL_NAME,
                  staged: set[int] | frozenset = frozenset()):
    labels = dict(labels or {})
    unknown = set(labels) - set(contract.VERSION_LABELS)
    if unknown:
        raise ValueError(f"unknown version label(s) {sorted(unknown)}; use {', '.join(contract.VERSION_LABELS)}")
    config = model_server_config_pb2.ModelServerConfig()
    model = config.model_config_list.config.add(name=name, base_path=base_path, model_platform="tensorflow")
    if labels or staged:
        model.model_version_policy.specific.versions.extend(sorted(set(labels.values()) | set(staged)))
        for label, version in sorted(labels.items()):
            model.version_labels[label] = version
    else:
        model.model_version_policy.latest.num_versions = 1
    return config


def read_models_config(path: str):
    config = model_server_config_pb2.ModelServerConfig()
    with tf.io.gfile.GFile(path) as f:
        text_format.Parse(f.read(), config)
    return config


def labels_of(config, name: str = contract.MODEL_NAME) -> dict[str, int]:
    for model in config.model_config_list.config:
        if model.name == name:
            return dict(model.version_labels)
    return {}


def staged_of(config, name: str = contract.MODEL_NAME) -> set[int]:
    """Versions in a specific policy that no label names yet (loading before a label moves to them)."""
    for model in config.model_config_list.config:
        if model.name == name:
            return set(model.model_version_policy.specific.versions) - set(model.version_labels.values())
    return set()


def config_path(model_base: str) -> str:
    """``<model_base>/models.config``: the file TF Serving reads at start and xray promote keeps in step."""
    return f"{model_base.rstrip('/')}/models.config"


def read_labels(model_base: str) -> dict[str, int]:
    """The labels in ``<model_base>/models.config``, or {} when there is no such file."""
    path = config_path(model_base)
    return labels_of(read_models_config(path)) if tf.io.gfile.exists(path) else {}


def write_text_proto(message, path: str) -> None:
    write_atomic(path, text_format.MessageToString(message))


@functools.cache
def schema() -> dict:
    """BatchingParameters and MonitoringConfig, which the tensorflow-serving-api wheel does not ship: their
    message classes by name, built on first use.

    Declared here with the field names of TF Serving's session_bundle_config.proto and
    monitoring_config.proto, so the files are generated from, and tests parse them with, a schema
    instead of string templates. Text format depends on names and types only.
    """
    pool = descriptor_pool.DescriptorPool()
    from google.protobuf import wrappers_pb2

    pool.AddSerializedFile(wrappers_pb2.DESCRIPTOR.serialized_pb)
    proto = descriptor_pb2.FileDescriptorProto(name="xray_serving_config.proto", package="tensorflow.serving",
                                               dependency=["google/protobuf/wrappers.proto"], syntax="proto3")
    F = descriptor_pb2.FieldDescriptorProto
    batching = proto.message_type.add(name="BatchingParameters")
    for number, name in enumerate(["max_batch_size", "batch_timeout_micros", "max_enqueued_batches", "num_batch_threads"], 1):
        batching.field.add(name=name, number=number, type=F.TYPE_MESSAGE, label=F.LABEL_OPTIONAL,
                           type_name=".google.protobuf.Int64Value")
    batching.field.add(name="thread_pool_name", number=5, type=F.TYPE_MESSAGE, label=F.LABEL_OPTIONAL,
                       type_name=".google.protobuf.StringValue")
    batching.field.add(name="allowed_batch_sizes", number=6, type=F.TYPE_INT64, label=F.LABEL_REPEATED)
    batching.field.add(name="pad_variable_length_inputs", number=7, type=F.TYPE_BOOL, label=F.LABEL_OPTIONAL)
    prometheus = proto.message_type.add(name="PrometheusConfig")
    prometheus.field.add(name="enable", number=1, type=F.TYPE_BOOL, label=F.LABEL_OPTIONAL)
    prometheus.field.add(name="path", number=2, type=F.TYPE_STRING, label=F.LABEL_OPTIONAL)
    monitoring = proto.message_type.add(name="MonitoringConfig")
    monitoring.field.add(name="prometheus_config", number=1, type=F.TYPE_MESSAGE, label=F.LABEL_OPTIONAL,
                         type_name=".tensorflow.serving.PrometheusConfig")
    pool.Add(proto)
    return {name: message_factory.GetMessageClass(pool.FindMessageTypeByName(f"tensorflow.serving.{name}"))
            for name in ("BatchingParameters", "MonitoringConfig")}


def parse_text(kind: str, text: str):
    """Parses a batching.config ("BatchingParameters") or monitoring.config ("MonitoringConfig") text."""
    message = schema()[kind]()
    text_format.Parse(text, message)
    return message


def batching_config(max_batch_size: int = contract.MAX_BATCH, timeout_micros: int = 2000, num_batch_threads: int = 4):
    params = schema()["BatchingParameters"]()
    params.max_batch_size.value = max_batch_size
    params.batch_timeout_micros.value = timeout_micros
    params.num_batch_threads.value = num_batch_threads
    params.max_enqueued_batches.value = 100
    # Pad to a few fixed sizes so the graph is traced for them once (the warmup file covers 1, 4, 16). TF Serving
    # wants them increasing, the last one max_batch_size (session_bundle_config.proto).
    params.allowed_batch_sizes.extend([size for size in (1, 4, 16) if size < max_batch_size] + [max_batch_size])
    params.pad_variable_length_inputs = False
    return params


def monitoring_config():
    config = schema()["MonitoringConfig"]()
    config.prometheus_config.enable = True
    config.prometheus_config.path = PROMETHEUS_PATH
    return config


def write_all(out_dir: str, base_path: str, labels: dict[str, int] | None = None) -> list[str]:
    """Writes the three files for a server whose model lives at ``base_path`` (as the server sees it)."""
    tf.io.gfile.makedirs(out_dir)
    files = {
        "models.config": models_config(base_path, labels),
        "batching.config": batching_config(),
        "monitoring.config": monitoring_config(),
    }
    for name, message in files.items():
        write_text_proto(message, f"{out_dir.rstrip('/')}/{name}")
    return sorted(files)
