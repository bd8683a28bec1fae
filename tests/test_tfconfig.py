import json

import pytest

from xray.trainer import tfconfig
from xray.trainer.tfconfig import TFConfigError


def test_single_worker_without_any_identity():
    spec = tfconfig.resolve({})
    assert (spec.num_workers, spec.task_index, spec.source, spec.is_chief) == (1, 0, "single", True)


def test_explicit_tf_config_wins():
    tf_config = {"cluster": {"worker": ["a:1", "b:2", "c:3"]}, "task": {"type": "worker", "index": 2}}
    spec = tfconfig.resolve({"TF_CONFIG": json.dumps(tf_config), "JOB_COMPLETION_INDEX": "0"})
    assert (spec.num_workers, spec.task_index, spec.source, spec.is_chief) == (3, 2, "TF_CONFIG", False)
    assert spec.tf_config == tf_config


def test_tf_config_with_explicit_chief():
    tf_config = {"cluster": {"chief": ["c:1"], "worker": ["w:1"]}, "task": {"type": "worker", "index": 0}}
    spec = tfconfig.resolve({"TF_CONFIG": json.dumps(tf_config)})
    assert spec.num_workers == 2 and not spec.is_chief


def test_indexed_job_identity_builds_the_tf_config_a_pod_needs():
    env = {"JOB_COMPLETION_INDEX": "1", "XRAY_NUM_WORKERS": "3", "XRAY_JOB_NAME": "xray-train",
           "XRAY_SERVICE_NAME": "xray-train-workers", "XRAY_WORKER_PORT": "2222"}
    spec = tfconfig.resolve(env)
    assert spec.source == "indexed-job" and spec.task_index == 1 and not spec.is_chief
    assert spec.tf_config == {
        "cluster": {"worker": [f"xray-train-{i}.xray-train-workers:2222" for i in range(3)]},
        "task": {"type": "worker", "index": 1},
    }
    assert tfconfig.resolve({**env, "JOB_COMPLETION_INDEX": "0"}).is_chief


@pytest.mark.parametrize("env, message", [
    ({"TF_CONFIG": "{not json"}, "TF_CONFIG is not valid"),
    ({"TF_CONFIG": json.dumps({"cluster": {"worker": ["a:1"]}, "task": {"type": "worker", "index": 4}})}, "not in its cluster"),
    ({"JOB_COMPLETION_INDEX": "0"}, "XRAY_NUM_WORKERS"),
    ({"JOB_COMPLETION_INDEX": "5", "XRAY_NUM_WORKERS": "2", "XRAY_JOB_NAME": "j", "XRAY_SERVICE_NAME": "s"}, "outside 0..1"),
    ({"JOB_COMPLETION_INDEX": "0", "XRAY_NUM_WORKERS": "2", "XRAY_SERVICE_NAME": "s"}, "XRAY_JOB_NAME"),
])
def test_impossible_cluster_is_a_clear_error(env, message):
    with pytest.raises(TFConfigError, match=message):
        tfconfig.resolve(env)
